-- Sessions: connections by state against max_connections, long-running statements, sessions
-- idle in a transaction, and sessions waiting for a lock. aegisctl's own session is left out.

-- name: summary fields
SELECT count(*) FILTER (WHERE backend_type = 'client backend') AS client_connections,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       round(100.0 * count(*) FILTER (WHERE backend_type = 'client backend')
             / current_setting('max_connections')::int, 1)::float8 AS used_pct,
       count(*) FILTER (WHERE state = 'active' AND backend_type = 'client backend') AS active,
       count(*) FILTER (WHERE state LIKE 'idle in transaction%%') AS idle_in_transaction,
       count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting_on_locks,
       count(*) FILTER (WHERE query = '<insufficient privilege>') AS hidden_sessions
FROM pg_stat_activity;

-- name: by_state
SELECT coalesce(state, CASE WHEN query = '<insufficient privilege>' THEN '(hidden)'
                            ELSE '(background)' END) AS state,
       backend_type, count(*) AS sessions
FROM pg_stat_activity
GROUP BY 1, 2
ORDER BY 3 DESC, 1, 2;

-- name: long_running
SELECT pid, usename AS "user", datname AS database, application_name AS application,
       round(extract(epoch FROM now() - query_start)::numeric, 1)::float8 AS running_seconds,
       wait_event_type, wait_event, query
FROM pg_stat_activity
WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND now() - query_start >= make_interval(secs => %(long_seconds)s)
ORDER BY query_start
LIMIT 50;

-- name: idle_in_transaction
SELECT pid, usename AS "user", datname AS database, application_name AS application, state,
       round(extract(epoch FROM now() - xact_start)::numeric, 1)::float8 AS transaction_seconds,
       round(extract(epoch FROM now() - state_change)::numeric, 1)::float8 AS idle_seconds,
       query AS last_query
FROM pg_stat_activity
WHERE state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()
ORDER BY xact_start
LIMIT 50;

-- name: waiting
SELECT pid, usename AS "user", datname AS database,
       round(extract(epoch FROM now() - coalesce(
           (SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted),
           state_change))::numeric, 1)::float8 AS waiting_seconds,
       wait_event_type, wait_event, pg_blocking_pids(pid) AS blocked_by, query
FROM pg_stat_activity a
WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()
ORDER BY waiting_seconds DESC
LIMIT 50;
