-- Sessions, container metrics, infrastructure anomaly alerts, workflows.

CREATE TABLE claude_sessions (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id varchar(100) NOT NULL CONSTRAINT claude_sessions_session_id_key UNIQUE,
    user_id    varchar(100),
    command    text,
    status     varchar(20) DEFAULT 'running',
    started_at timestamptz DEFAULT now(),
    ended_at   timestamptz,
    metadata   jsonb
);

CREATE INDEX idx_claude_sessions_status ON claude_sessions (status);
CREATE INDEX idx_claude_sessions_started_at ON claude_sessions (started_at);
CREATE INDEX idx_claude_sessions_ended_at ON claude_sessions (ended_at);

CREATE TABLE container_metrics (
    id             bigserial PRIMARY KEY,
    container_name varchar(100) NOT NULL,
    cpu_percent    double precision,
    mem_usage_mb   double precision,
    mem_percent    double precision,
    net_io_mb      double precision,
    block_io_mb    double precision,
    "timestamp"    timestamptz DEFAULT now()
);

CREATE INDEX idx_container_metrics_name_timestamp
    ON container_metrics (container_name, "timestamp" DESC);
-- Retention deletes by age across all containers: the composite index above cannot serve that.
CREATE INDEX idx_container_metrics_timestamp ON container_metrics ("timestamp");

-- The seed gives no columns: one row per detected anomaly, from detection to resolution.
CREATE TABLE infra_anomaly_alerts (
    id              bigserial PRIMARY KEY,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    source          varchar(100) NOT NULL,           -- host or container that misbehaved
    metric          varchar(100) NOT NULL,           -- cpu_percent, mem_usage_mb, disk_used_pct...
    anomaly_type    varchar(50) NOT NULL,            -- spike, drop, leak, saturation, flatline...
    severity        varchar(20) NOT NULL DEFAULT 'warning'
                    CONSTRAINT infra_anomaly_alerts_severity_check
                    CHECK (severity IN ('info', 'warning', 'critical')),
    status          varchar(20) NOT NULL DEFAULT 'open'
                    CONSTRAINT infra_anomaly_alerts_status_check
                    CHECK (status IN ('open', 'acknowledged', 'resolved')),
    observed_value  double precision,
    expected_value  double precision,
    threshold       double precision,
    score           double precision,                -- detector's anomaly score
    message         text,
    details         jsonb,
    acknowledged_at timestamptz,
    resolved_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idx_infra_alerts_detected_at ON infra_anomaly_alerts (detected_at DESC);
CREATE INDEX idx_infra_alerts_source_detected_at
    ON infra_anomaly_alerts (source, detected_at DESC);
CREATE INDEX idx_infra_alerts_severity ON infra_anomaly_alerts (severity);
CREATE INDEX idx_infra_alerts_open ON infra_anomaly_alerts (detected_at DESC)
    WHERE status <> 'resolved';
CREATE INDEX idx_infra_alerts_resolved_at ON infra_anomaly_alerts (resolved_at);

CREATE TRIGGER trg_infra_anomaly_alerts_updated_at
    BEFORE UPDATE ON infra_anomaly_alerts
    FOR EACH ROW EXECUTE FUNCTION aegis_set_updated_at();

CREATE TABLE workflows (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       varchar(100) NOT NULL,
    graph      jsonb NOT NULL,
    status     varchar(20) DEFAULT 'active',
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);

CREATE INDEX idx_workflows_name ON workflows (name);
CREATE INDEX idx_workflows_status ON workflows (status);
CREATE INDEX idx_workflows_updated_at ON workflows (updated_at);

CREATE TRIGGER trg_workflows_updated_at
    BEFORE UPDATE ON workflows
    FOR EACH ROW EXECUTE FUNCTION aegis_set_updated_at();

-- ON DELETE CASCADE: executions have no meaning without their workflow.
CREATE TABLE workflow_executions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_id  uuid REFERENCES workflows (id) ON DELETE CASCADE,
    context      jsonb NOT NULL,
    current_node varchar(100),
    status       varchar(20) DEFAULT 'running'
                 CONSTRAINT workflow_executions_status_check
                 CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
    error        text,
    started_at   timestamptz DEFAULT now(),
    completed_at timestamptz
);

CREATE INDEX idx_workflow_executions_workflow_id ON workflow_executions (workflow_id);
CREATE INDEX idx_workflow_executions_status ON workflow_executions (status);
CREATE INDEX idx_workflow_executions_started_at ON workflow_executions (started_at);
CREATE INDEX idx_workflow_executions_completed_at ON workflow_executions (completed_at);
