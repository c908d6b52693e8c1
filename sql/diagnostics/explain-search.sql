-- A nearest-neighbour query as the memory search runs it, for EXPLAIN (ANALYZE, BUFFERS).
-- Templates: aegisctl fills in the table, the ANN index's key expression, its operator and the
-- key's type from the catalog (see vectors.sql), and binds a stored embedding as the query.

-- name: sample_vector
SELECT ({key})::text FROM {table} WHERE ({key}) IS NOT NULL LIMIT 1;

-- name: search
SELECT * FROM {table} ORDER BY ({key}) {op} %s::{type} LIMIT {limit};
