-- Cache hit ratios of heap and index blocks (shared buffers only: the OS page cache is not
-- visible to PostgreSQL), since the statistics were last reset.

-- name: summary fields
SELECT round((sum(heap_blks_hit) / nullif(sum(heap_blks_hit) + sum(heap_blks_read), 0))::numeric, 4)::float8
           AS heap_hit_ratio,
       round((sum(idx_blks_hit) / nullif(sum(idx_blks_hit) + sum(idx_blks_read), 0))::numeric, 4)::float8
           AS index_hit_ratio,
       coalesce(sum(heap_blks_hit), 0)::bigint AS heap_blocks_hit,
       coalesce(sum(heap_blks_read), 0)::bigint AS heap_blocks_read,
       coalesce(sum(idx_blks_hit), 0)::bigint AS index_blocks_hit,
       coalesce(sum(idx_blks_read), 0)::bigint AS index_blocks_read,
       (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()) AS stats_reset
FROM pg_statio_user_tables;

-- name: tables
SELECT schemaname AS schema, relname AS "table", heap_blks_read AS heap_read,
       round((heap_blks_hit::numeric / nullif(heap_blks_hit + heap_blks_read, 0)), 4)::float8
           AS heap_hit_ratio,
       coalesce(idx_blks_read, 0) AS index_read,
       round((idx_blks_hit::numeric / nullif(idx_blks_hit + idx_blks_read, 0)), 4)::float8
           AS index_hit_ratio
FROM pg_statio_user_tables
WHERE heap_blks_read + coalesce(idx_blks_read, 0) > 0
ORDER BY heap_blks_read + coalesce(idx_blks_read, 0) DESC, 1, 2
LIMIT 10;
