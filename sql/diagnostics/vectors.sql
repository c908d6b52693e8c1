-- Every vector, halfvec and sparsevec column of every schema, with the indexes that cover it
-- (expression indexes such as (embedding::halfvec(3072)) included: they depend on the column).
-- Row counts, missing/zero/duplicate embeddings and recall are computed per column by aegisctl.

-- name: columns
SELECT n.nspname AS schema, c.relname AS "table", a.attname AS "column", t.typname AS type,
       CASE WHEN a.atttypmod > 0 THEN a.atttypmod END AS dimensions,
       c.oid::bigint AS table_oid, greatest(c.reltuples, 0)::bigint AS rows_estimate,
       pg_table_size(c.oid) AS table_bytes,
       coalesce(s.n_live_tup, 0) AS live_tuples, coalesce(s.n_dead_tup, 0) AS dead_tuples,
       round((s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0)), 4)::float8 AS dead_ratio,
       coalesce(s.seq_scan, 0) AS table_seq_scans, coalesce(s.idx_scan, 0) AS table_index_scans,
       c.relispartition AS partition
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE t.typname IN ('vector', 'halfvec', 'sparsevec')
  AND t.typnamespace = (SELECT extnamespace FROM pg_extension WHERE extname = 'vector')
  AND c.relkind IN ('r', 'm') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3;

-- name: indexes
SELECT DISTINCT ON (i.indexrelid, d.refobjsubid)
       n.nspname AS schema, t.relname AS "table", a.attname AS "column",
       ic.relname AS index, am.amname AS method,
       pg_get_indexdef(i.indexrelid, 1, true) AS key,
       i.indexprs IS NOT NULL AS expression,
       (SELECT opc.opcname FROM pg_opclass opc WHERE opc.oid = i.indclass[0]) AS opclass,
       format_type(coalesce(ka.atttypid, a.atttypid), coalesce(ka.atttypmod, a.atttypmod)) AS key_type,
       ic.reloptions::text[] AS options,
       pg_relation_size(i.indexrelid) AS size_bytes,
       i.indisvalid AS valid, coalesce(st.idx_scan, 0) AS scans
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = ic.relam
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid
                AND d.refobjsubid > 0
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
JOIN pg_type ty ON ty.oid = a.atttypid
LEFT JOIN pg_attribute ka ON ka.attrelid = i.indexrelid AND ka.attnum = 1
LEFT JOIN pg_stat_user_indexes st ON st.indexrelid = i.indexrelid
WHERE ty.typname IN ('vector', 'halfvec', 'sparsevec')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY i.indexrelid, d.refobjsubid;

-- The per-column and per-index statements below are templates: aegisctl fills in the table,
-- column and index key from the catalog queries above (as identifiers, or the server's own
-- deparsed index expression and type name).

-- name: counts
-- Duplicates compare a hash of the binary form (a sort of the vectors themselves spills to disk).
SELECT count(*) AS rows, count(*) FILTER (WHERE {col} IS NULL) AS missing,
       count(*) FILTER (WHERE {norm}({col}) = 0) AS zero,
       count({col}) - count(DISTINCT md5({send}({col}))) AS duplicates
FROM {source};

-- name: recall_sample
SELECT ({key})::text FROM {table} WHERE ({key}) IS NOT NULL ORDER BY random() LIMIT %s;

-- name: nearest
SELECT ctid::text FROM {table} ORDER BY ({key}) {op} %s::{type} LIMIT {k};
