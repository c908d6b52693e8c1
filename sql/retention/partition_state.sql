-- cleanup run: everything it needs to know about one partitioned table, in one round trip.
-- %(parent)s: the table's oid; %(mark)s: the comment prefix of partitions a run detached.
SELECT
  (SELECT coalesce(json_agg(json_build_array(c.oid, n.nspname, c.relname, c.relkind,
                                             pg_get_expr(c.relpartbound, c.oid),
                                             i.inhdetachpending, c.reltuples)
                            ORDER BY c.relname), '[]')
     FROM pg_inherits i
     JOIN pg_class c ON c.oid = i.inhrelid
     JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.inhparent = %(parent)s) AS partitions,
  -- Detached by an interrupted run, not dropped: marked by their comment, in no table now.
  (SELECT coalesce(json_agg(json_build_array(c.oid, n.nspname, c.relname, c.relkind,
                                             d.description)
                            ORDER BY c.relname), '[]')
     FROM pg_description d
     JOIN pg_class c ON c.oid = d.objoid
     JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0
      AND left(d.description, length(%(mark)s)) = %(mark)s
      AND c.relkind IN ('r', 'p')
      AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)) AS orphans,
  -- A foreign key points at the table: rows are deleted (its ON DELETE runs), never dropped.
  EXISTS (SELECT 1 FROM pg_constraint
           WHERE contype = 'f' AND confrelid = %(parent)s) AS referenced,
  -- DETACH ... CONCURRENTLY is refused while a DEFAULT partition exists.
  coalesce((SELECT partdefid <> 0 FROM pg_partitioned_table
             WHERE partrelid = %(parent)s), false) AS has_default,
  (SELECT coalesce(json_agg(json_build_array(c.oid, n.nspname, c.relname, c.relkind)
                            ORDER BY c.relname), '[]')
     FROM pg_partition_tree(%(parent)s) t
     JOIN pg_class c ON c.oid = t.relid
     JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE t.isleaf) AS leaves
