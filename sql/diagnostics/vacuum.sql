-- Dead tuples and the last (auto)vacuum/analyze per table, and the transaction-ID age that
-- leads to wraparound (PostgreSQL stops assigning XIDs at about 2^31 = 2147483648).

-- name: tables
SELECT schemaname AS schema, relname AS "table", n_live_tup AS live_tuples,
       n_dead_tup AS dead_tuples,
       round((n_dead_tup::numeric / nullif(n_live_tup + n_dead_tup, 0)), 4)::float8 AS dead_ratio,
       last_autovacuum, last_vacuum, last_autoanalyze, last_analyze,
       autovacuum_count AS autovacuums, vacuum_count AS vacuums,
       n_mod_since_analyze AS modified_since_analyze
FROM pg_stat_user_tables
ORDER BY n_dead_tup DESC, 1, 2
LIMIT %(limit)s;

-- name: wraparound
SELECT datname AS database, age(datfrozenxid) AS xid_age,
       round(100.0 * age(datfrozenxid) / 2147483648, 2)::float8 AS wraparound_pct,
       mxid_age(datminmxid) AS multixact_age,
       current_setting('autovacuum_freeze_max_age')::bigint AS autovacuum_freeze_max_age
FROM pg_database
WHERE datallowconn
ORDER BY age(datfrozenxid) DESC;

-- name: oldest_tables
SELECT n.nspname AS schema, c.relname AS "table", age(c.relfrozenxid) AS xid_age,
       pg_total_relation_size(c.oid) AS total_bytes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 't') AND c.relfrozenxid <> '0'::xid
ORDER BY age(c.relfrozenxid) DESC, 1, 2
LIMIT 10;
