-- maint status: per user table, what vacuum/analyze know, its size, and what a bloat estimate
-- needs (row width from pg_stats, fillfactor, pages).
SELECT n.nspname AS schema,
       c.relname AS "table",
       c.relkind,
       COALESCE(s.n_live_tup, 0) AS live_rows,
       COALESCE(s.n_dead_tup, 0) AS dead_rows,
       COALESCE(s.n_mod_since_analyze, 0) AS modified_since_analyze,
       s.last_vacuum,
       s.last_autovacuum,
       s.last_analyze,
       s.last_autoanalyze,
       pg_table_size(c.oid) AS table_bytes,
       pg_indexes_size(c.oid) AS index_bytes,
       c.relpages,
       c.reltuples,
       (SELECT sum(st.avg_width) FROM pg_stats st
         WHERE st.schemaname = n.nspname AND st.tablename = c.relname) AS row_width,
       COALESCE((SELECT substring(o FROM 'fillfactor=(\d+)')::int
                   FROM unnest(c.reloptions) o WHERE o LIKE 'fillfactor=%'), 100) AS fillfactor,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid AND NOT i.indisvalid)
           AS invalid_indexes,
       (SELECT count(*) FROM pg_index i
          JOIN pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_am am ON am.oid = ic.relam
         WHERE i.indrelid = c.oid AND am.amname = 'hnsw') AS hnsw_indexes,
       current_setting('block_size')::int AS block_size,
       -- Why autovacuum does not run on this table, if it never does: the table's own
       -- autovacuum_enabled=false, or autovacuum off for the whole server.
       CASE WHEN EXISTS (SELECT 1 FROM unnest(c.reloptions) o
                          WHERE lower(o) IN ('autovacuum_enabled=false', 'autovacuum_enabled=off',
                                             'autovacuum_enabled=0', 'autovacuum_enabled=no',
                                             'autovacuum_enabled=f', 'autovacuum_enabled=n'))
            THEN 'table'
            WHEN current_setting('autovacuum') = 'off' THEN 'server'
       END AS autovacuum_disabled
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE c.relkind IN ('r', 'm')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
   AND n.nspname NOT LIKE 'pg\_temp%'
 ORDER BY pg_table_size(c.oid) DESC, n.nspname, c.relname
