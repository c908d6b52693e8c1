-- Blocking chains: every session waiting on a lock, the session(s) it waits for, how long,
-- and what both are running. `root` marks a blocker that is not itself waiting: the one to
-- look at (or cancel) first.

-- name: blocking
SELECT w.pid AS blocked_pid, w.usename AS blocked_user,
       round(extract(epoch FROM now() - coalesce(
           (SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = w.pid AND NOT l.granted),
           w.state_change))::numeric, 1)::float8 AS waiting_seconds,
       (SELECT l.mode || ' on ' || coalesce(l.relation::regclass::text, l.locktype)
          FROM pg_locks l WHERE l.pid = w.pid AND NOT l.granted LIMIT 1) AS wants,
       b.pid AS blocking_pid, b.usename AS blocking_user, b.state AS blocking_state,
       round(extract(epoch FROM now() - b.xact_start)::numeric, 1)::float8
           AS blocking_transaction_seconds,
       cardinality(pg_blocking_pids(b.pid)) = 0 AS root,
       w.query AS blocked_query, b.query AS blocking_query
FROM pg_stat_activity w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
JOIN pg_stat_activity b ON b.pid = blocker.pid
ORDER BY waiting_seconds DESC, w.pid, b.pid
LIMIT 200;
