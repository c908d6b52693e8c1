-- Index usage since the statistics were reset, and the indexes worth a look: never scanned
-- (unused), covered by another index on the same table (duplicate), and invalid (a failed
-- CREATE INDEX CONCURRENTLY: maintained on every write, used by no query).
-- Scan counts are per server: an index unused here may serve queries on a replica.

-- name: usage
SELECT s.schemaname AS schema, s.relname AS "table", s.indexrelname AS index,
       s.idx_scan AS scans, pg_relation_size(s.indexrelid) AS size_bytes,
       am.amname AS method, i.indisunique AS "unique"
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_class c ON c.oid = s.indexrelid
JOIN pg_am am ON am.oid = c.relam
ORDER BY pg_relation_size(s.indexrelid) DESC, 1, 2, 3
LIMIT %(limit)s;

-- name: unused
SELECT s.schemaname AS schema, s.relname AS "table", s.indexrelname AS index,
       pg_relation_size(s.indexrelid) AS size_bytes, s.idx_scan AS scans,
       t.seq_scan AS table_seq_scans, pg_get_indexdef(s.indexrelid) AS definition
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_stat_user_tables t ON t.relid = s.relid
WHERE s.idx_scan = 0 AND i.indisvalid AND NOT i.indisunique AND NOT i.indisprimary
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = s.indexrelid)
ORDER BY pg_relation_size(s.indexrelid) DESC, 1, 2, 3;

-- name: duplicate
WITH idx AS (
    SELECT i.indexrelid, i.indrelid, i.indkey::text AS keys, i.indclass::text AS classes,
           coalesce(pg_get_expr(i.indexprs, i.indrelid), '') AS exprs,
           coalesce(pg_get_expr(i.indpred, i.indrelid), '') AS pred,
           i.indisunique, i.indisprimary, c.relam, am.amname, n.nspname, c.relname
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_am am ON am.oid = c.relam
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%%'
)
SELECT a.nspname AS schema, a.indrelid::regclass::text AS "table", a.relname AS index,
       b.relname AS covered_by, pg_relation_size(a.indexrelid) AS size_bytes,
       pg_get_indexdef(a.indexrelid) AS definition, pg_get_indexdef(b.indexrelid) AS covering_definition
FROM idx a
JOIN idx b ON b.indrelid = a.indrelid AND b.indexrelid <> a.indexrelid AND b.relam = a.relam
          AND b.exprs = a.exprs AND b.pred = a.pred
WHERE NOT a.indisprimary
  AND (
        -- a strict leading prefix of a btree index: b answers every query a does
        (a.amname = 'btree' AND NOT a.indisunique AND a.keys <> b.keys
         AND (b.keys || ' ') LIKE (a.keys || ' %%') AND (b.classes || ' ') LIKE (a.classes || ' %%'))
        -- the same index twice: report the one to drop (keep the primary key, then unique)
     OR (a.keys = b.keys AND a.classes = b.classes
         AND (b.indisprimary OR (b.indisunique AND NOT a.indisunique)
              OR (b.indisunique = a.indisunique AND a.indexrelid > b.indexrelid)))
      )
ORDER BY 1, 2, 3, 4;

-- name: invalid
SELECT n.nspname AS schema, i.indrelid::regclass::text AS "table", c.relname AS index,
       pg_relation_size(i.indexrelid) AS size_bytes, i.indisvalid AS valid, i.indisready AS ready,
       pg_get_indexdef(i.indexrelid) AS definition, i.indexrelid::bigint AS oid
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT (i.indisvalid AND i.indisready)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3;
