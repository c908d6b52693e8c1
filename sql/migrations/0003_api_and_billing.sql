-- API keys, their usage, and billing.

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id   varchar(100) NOT NULL,
    key_hash      text NOT NULL CONSTRAINT api_keys_key_hash_key UNIQUE,
    key_prefix    varchar(20) NOT NULL,
    name          varchar(200),
    tier          varchar(50) DEFAULT 'free'
                  CONSTRAINT api_keys_tier_check
                  CHECK (tier IN ('free', 'developer', 'pro', 'enterprise')),
    rate_limit    integer DEFAULT 60,
    monthly_quota integer DEFAULT 1000,
    enabled       boolean DEFAULT true,
    expires_at    timestamptz,
    created_at    timestamptz DEFAULT now(),
    last_used_at  timestamptz
);

CREATE INDEX idx_api_keys_customer_id ON api_keys (customer_id);
CREATE INDEX idx_api_keys_enabled ON api_keys (enabled);
CREATE INDEX idx_api_keys_expires_at ON api_keys (expires_at);
CREATE INDEX idx_api_keys_created_at ON api_keys (created_at);

-- ON DELETE SET NULL: usage rows are billing history and outlive a deleted key.
CREATE TABLE api_usage_events (
    id               bigserial PRIMARY KEY,
    api_key_id       uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    customer_id      varchar(100) NOT NULL,
    endpoint         varchar(200) NOT NULL,
    method           varchar(10) NOT NULL,
    status_code      integer NOT NULL,
    response_time_ms integer,
    tokens_used      integer DEFAULT 0,
    cost_usd         numeric(10, 6) DEFAULT 0,
    created_at       timestamptz DEFAULT now()
);

CREATE INDEX idx_api_usage_api_key_id ON api_usage_events (api_key_id);
CREATE INDEX idx_api_usage_customer_id ON api_usage_events (customer_id);
CREATE INDEX idx_api_usage_created_at ON api_usage_events (created_at DESC);

CREATE TABLE billing_events (
    id                bigserial PRIMARY KEY,
    customer_id       varchar(100) NOT NULL,
    event_type        varchar(50) NOT NULL
                      CONSTRAINT billing_events_event_type_check
                      CHECK (event_type IN ('api_usage', 'subscription', 'overage', 'credit')),
    amount_usd        numeric(10, 2) NOT NULL,
    currency          varchar(3) DEFAULT 'USD',
    description       text,
    metadata          jsonb,
    stripe_invoice_id varchar(100),
    created_at        timestamptz DEFAULT now()
);

CREATE INDEX idx_billing_events_customer_id ON billing_events (customer_id);
CREATE INDEX idx_billing_events_event_type ON billing_events (event_type);
CREATE INDEX idx_billing_events_created_at ON billing_events (created_at);
