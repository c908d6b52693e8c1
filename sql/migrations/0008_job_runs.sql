-- Job history: one row per run of a scheduled job (aegisctl jobs run, the systemd timers and the
-- built-in scheduler all write here), read by `aegisctl jobs history` and by `check`'s
-- "last successful run" freshness checks. The id is made by the runner, so runs recorded in
-- the local fallback file while the database was down are copied in later without duplicates.

CREATE TABLE aegis_job_runs (
    id          uuid PRIMARY KEY,
    job         text NOT NULL,
    target      text NOT NULL,
    trigger     text NOT NULL CHECK (trigger IN ('timer', 'scheduler', 'cron', 'manual')),
    command     text NOT NULL,
    host        text NOT NULL,
    pid         integer,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    status      text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted',
                                                'timeout', 'skipped', 'abandoned')),
    exit_code   integer,
    summary     jsonb,
    error       text
);

-- Last success / last run of one job (freshness, history --job), newest first.
CREATE INDEX idx_job_runs_job_started ON aegis_job_runs (job, target, started_at DESC);
CREATE INDEX idx_job_runs_started ON aegis_job_runs (started_at DESC);
