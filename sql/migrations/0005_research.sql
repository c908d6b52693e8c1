-- Deep research jobs and competitor monitoring.

CREATE TABLE deep_briefing_jobs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    query        text NOT NULL,
    status       varchar(20) DEFAULT 'pending',
    result       jsonb,
    provider     varchar(50)
                 CONSTRAINT deep_briefing_jobs_provider_check
                 CHECK (provider IN ('gemini', 'perplexity', 'claude')),
    cost_usd     numeric(10, 4),
    created_at   timestamptz DEFAULT now(),
    completed_at timestamptz
);

CREATE INDEX idx_deep_briefing_jobs_status ON deep_briefing_jobs (status);
CREATE INDEX idx_deep_briefing_jobs_created_at ON deep_briefing_jobs (created_at);
CREATE INDEX idx_deep_briefing_jobs_completed_at ON deep_briefing_jobs (completed_at);

CREATE TABLE competitors (
    id              serial PRIMARY KEY,
    name            varchar(200) NOT NULL,
    domain          varchar(200) NOT NULL,
    category        varchar(100),
    last_checked_at timestamptz,
    enabled         boolean DEFAULT true,
    created_at      timestamptz DEFAULT now()
);

CREATE INDEX idx_competitors_domain ON competitors (domain);

-- ON DELETE CASCADE: a competitor's pages and their change history go with it.
CREATE TABLE competitor_pages (
    id              serial PRIMARY KEY,
    competitor_id   integer REFERENCES competitors (id) ON DELETE CASCADE,
    url             text NOT NULL,
    page_type       varchar(50)
                    CONSTRAINT competitor_pages_page_type_check
                    CHECK (page_type IN ('pricing', 'features', 'homepage', 'docs', 'blog')),
    content_hash    varchar(64),
    screenshot_url  text,
    last_checked_at timestamptz,
    created_at      timestamptz DEFAULT now()
);

CREATE INDEX idx_competitor_pages_competitor_id ON competitor_pages (competitor_id);
CREATE INDEX idx_competitor_pages_last_checked_at ON competitor_pages (last_checked_at);

CREATE TABLE competitor_changes (
    id          serial PRIMARY KEY,
    page_id     integer REFERENCES competitor_pages (id) ON DELETE CASCADE,
    change_type varchar(50),
    old_value   text,
    new_value   text,
    diff        text,
    detected_at timestamptz DEFAULT now()
);

CREATE INDEX idx_competitor_changes_page_id ON competitor_changes (page_id);
CREATE INDEX idx_competitor_changes_detected_at ON competitor_changes (detected_at);
