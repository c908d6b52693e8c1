-- cleanup: a policy's table as the catalog describes it, in one round trip.
-- %(schema)s, %(table)s: the policy's table; %(column)s: its age column.
WITH t AS (
  SELECT c.oid, n.nspname, c.relname, c.relkind, pg_total_relation_size(c.oid) AS size,
         greatest(c.reltuples, 0)::bigint AS reltuples
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p'))
SELECT t.oid, t.nspname, t.relname, t.relkind, t.size, t.reltuples,
  (SELECT coalesce(json_object_agg(attname, format_type(atttypid, atttypmod)), '{}')
     FROM pg_attribute
    WHERE attrelid = t.oid AND attnum > 0 AND NOT attisdropped) AS columns,
  -- A valid btree index whose first key is the age column: batches walk it.
  EXISTS (SELECT 1 FROM pg_index i
            JOIN pg_class ic ON ic.oid = i.indexrelid
            JOIN pg_am am ON am.oid = ic.relam
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
           WHERE i.indrelid = t.oid AND a.attname = %(column)s AND am.amname = 'btree'
             AND i.indisvalid AND i.indpred IS NULL) AS indexed,
  (SELECT coalesce(json_agg(json_build_array(ic.oid, n.nspname, ic.relname)
                            ORDER BY ic.relname), '[]')
     FROM pg_index i
     JOIN pg_class ic ON ic.oid = i.indexrelid
     JOIN pg_namespace n ON n.oid = ic.relnamespace
     JOIN pg_am am ON am.oid = ic.relam
    WHERE i.indrelid = t.oid AND am.amname = 'hnsw' AND i.indisvalid) AS hnsw,
  (SELECT json_build_array(pt.partstrat, pt.partnatts, a.attname)
     FROM pg_partitioned_table pt
     LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = t.oid) AS partition_key
  FROM t
