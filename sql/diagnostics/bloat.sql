-- Bloat estimated from the planner's statistics (pg_class, pg_stats), the way check_postgres
-- and pghero do: the pages the live rows would need at the table's fillfactor, against the
-- pages the relation has. No table is read. A table never analyzed has no pg_stats rows
-- (stats_missing): its bloat cannot be estimated that way.

-- name: tables
WITH rels AS (
    -- The size on disk, not relpages: a table never vacuumed nor analyzed has relpages 0.
    SELECT c.oid, n.nspname, c.relname,
           pg_relation_size(c.oid) / current_setting('block_size')::bigint AS pages, c.reltuples,
           coalesce((SELECT substring(o FROM 'fillfactor=([0-9]+)')::int
                     FROM unnest(c.reloptions) o WHERE o LIKE 'fillfactor=%%'), 100) AS fillfactor,
           (SELECT count(*) FROM pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
      AND pg_relation_size(c.oid) >= %(min_bytes)s
), sized AS (
    SELECT r.*, w.data_width IS NULL OR r.reltuples < 0 AS stats_missing,
           -- A heap tuple: its 23-byte header (and null bitmap) and its data, each aligned to
           -- 8 bytes, plus a 4-byte line pointer.
           (ceil((23 + CASE WHEN w.has_nulls THEN ceil(r.columns / 8.0) ELSE 0 END) / 8) * 8
            + ceil(coalesce(w.data_width, 0) / 8) * 8 + 4) AS tuple_bytes
    FROM rels r
    -- Only the tables of some size read their statistics (pg_stats is a costly view).
    LEFT JOIN LATERAL (
        SELECT sum((1 - s.null_frac) * s.avg_width) AS data_width,
               bool_or(s.null_frac > 0) AS has_nulls
        FROM pg_stats s
        WHERE s.schemaname = r.nspname AND s.tablename = r.relname AND NOT s.inherited
    ) w ON true
)
SELECT oid::bigint AS oid, nspname AS schema, relname AS table, fillfactor, stats_missing,
       pages * current_setting('block_size')::bigint AS bytes,
       CASE WHEN stats_missing THEN NULL ELSE greatest(0, pages - ceil(
           greatest(reltuples, 0) * tuple_bytes
           / ((current_setting('block_size')::int - 24) * fillfactor / 100.0)))::bigint
           * current_setting('block_size')::bigint END AS wasted_bytes
FROM sized
ORDER BY wasted_bytes DESC NULLS LAST, bytes DESC;

-- name: indexes
-- B-tree indexes on plain columns: 8-byte index tuple header, the key columns' average widths
-- aligned to 8, a 4-byte line pointer; leaf pages filled to the index's fillfactor (90).
WITH big AS (
    SELECT i.indexrelid, i.indrelid, i.indisunique, i.indisprimary, i.indkey,
           pg_relation_size(i.indexrelid) AS bytes
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
    JOIN pg_namespace n ON n.oid = ic.relnamespace
    WHERE i.indexprs IS NULL AND i.indpred IS NULL AND i.indisvalid
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
      AND pg_relation_size(i.indexrelid) >= %(min_bytes)s
), widths AS (
    SELECT b.indexrelid, sum(s.avg_width) AS data_width, bool_or(s.null_frac > 0) AS has_nulls,
           count(s.avg_width) = count(*) AS complete
    FROM big b
    CROSS JOIN LATERAL unnest(b.indkey::int2[]) AS k(attnum)
    JOIN pg_class t ON t.oid = b.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
    JOIN pg_attribute a ON a.attrelid = b.indrelid AND a.attnum = k.attnum
    LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = t.relname
                        AND s.attname = a.attname AND NOT s.inherited
    GROUP BY b.indexrelid
)
SELECT ic.oid::bigint AS oid, n.nspname AS schema, ic.relname AS index, t.relname AS table,
       b.indisunique AS is_unique, b.indisprimary AS is_primary,
       NOT w.complete OR ic.reltuples < 0 AS stats_missing,
       b.bytes,
       CASE WHEN NOT w.complete OR ic.reltuples < 0 THEN NULL ELSE greatest(0,
           b.bytes / current_setting('block_size')::bigint - 1
           - ceil(greatest(ic.reltuples, 0)
                  * (8 + CASE WHEN w.has_nulls THEN 8 ELSE 0 END + ceil(w.data_width / 8) * 8 + 4)
                  / ((current_setting('block_size')::int - 24 - 16)
                     * coalesce((SELECT substring(o FROM 'fillfactor=([0-9]+)')::int
                                 FROM unnest(ic.reloptions) o WHERE o LIKE 'fillfactor=%%'), 90)
                     / 100.0)))::bigint * current_setting('block_size')::bigint END AS wasted_bytes
FROM big b
JOIN widths w ON w.indexrelid = b.indexrelid
JOIN pg_class ic ON ic.oid = b.indexrelid
JOIN pg_class t ON t.oid = b.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
ORDER BY wasted_bytes DESC NULLS LAST, bytes DESC;
