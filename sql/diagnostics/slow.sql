-- The top statements of this database from pg_stat_statements, by mean and by total execution
-- time. {pgss} is the view, schema-qualified where the extension lives.

-- name: by_mean
SELECT s.queryid, r.rolname AS "user", s.calls,
       round(s.mean_exec_time::numeric, 2)::float8 AS mean_ms,
       round(s.max_exec_time::numeric, 2)::float8 AS max_ms,
       round(s.total_exec_time::numeric, 1)::float8 AS total_ms,
       s.rows, s.query
FROM {pgss} s
LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.mean_exec_time DESC
LIMIT %(limit)s;

-- name: by_total
SELECT s.queryid, r.rolname AS "user", s.calls,
       round(s.total_exec_time::numeric, 1)::float8 AS total_ms,
       round((100 * s.total_exec_time / nullif(sum(s.total_exec_time) OVER (), 0))::numeric, 1)::float8
           AS total_pct,
       round(s.mean_exec_time::numeric, 2)::float8 AS mean_ms,
       s.rows, s.query
FROM {pgss} s
LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.total_exec_time DESC
LIMIT %(limit)s;
