-- A text is stored once per kind, enforced by the database: a unique index on each memory
-- table's content_hash (md5 of the text). Imports insert with ON CONFLICT (content_hash)
-- DO NOTHING, so two imports of one file running at the same time cannot duplicate a memory.
--
-- Duplicates stored before this migration are resolved without losing anything: in each table
-- the lowest id of a content hash is kept; every other copy is archived as a whole row (JSON,
-- embedding included) in aegis_memory_duplicates with the id it duplicated, references to it
-- are pointed at the kept row (decision_outcomes.decision_id and episodic related_memories),
-- and it is deleted. Review the archive (SELECT * FROM aegis_memory_duplicates) and drop or
-- empty it when done; on a database without duplicates it stays empty.
-- The index is built inside the migration's transaction: writes to the memory tables wait
-- for it (seconds for a few hundred thousand rows).

CREATE TABLE aegis_memory_duplicates (
    kind         text NOT NULL CHECK (kind IN ('episodic', 'semantic')),
    id           integer NOT NULL,
    kept_id      integer NOT NULL,
    content_hash text NOT NULL,
    row_data     jsonb NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);

LOCK TABLE episodic_memory, semantic_memory IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO aegis_memory_duplicates (kind, id, kept_id, content_hash, row_data)
SELECT 'episodic', m.id, k.kept_id, m.content_hash, to_jsonb(m) - 'summary_tsv'
FROM episodic_memory AS m
JOIN (SELECT content_hash, min(id) AS kept_id FROM episodic_memory
      GROUP BY content_hash HAVING count(*) > 1) AS k
  ON k.content_hash = m.content_hash AND m.id <> k.kept_id;

INSERT INTO aegis_memory_duplicates (kind, id, kept_id, content_hash, row_data)
SELECT 'semantic', m.id, k.kept_id, m.content_hash, to_jsonb(m) - 'content_tsv'
FROM semantic_memory AS m
JOIN (SELECT content_hash, min(id) AS kept_id FROM semantic_memory
      GROUP BY content_hash HAVING count(*) > 1) AS k
  ON k.content_hash = m.content_hash AND m.id <> k.kept_id;

UPDATE decision_outcomes AS d SET decision_id = a.kept_id
FROM aegis_memory_duplicates AS a
WHERE a.kind = 'episodic' AND d.decision_id = a.id;

UPDATE episodic_memory AS e
SET related_memories = ARRAY(
    SELECT coalesce(a.kept_id, r.v)
    FROM unnest(e.related_memories) WITH ORDINALITY AS r(v, o)
    LEFT JOIN aegis_memory_duplicates AS a ON a.kind = 'episodic' AND a.id = r.v
    ORDER BY r.o)
WHERE e.related_memories && ARRAY(SELECT id FROM aegis_memory_duplicates
                                  WHERE kind = 'episodic');

DELETE FROM episodic_memory AS m USING aegis_memory_duplicates AS a
WHERE a.kind = 'episodic' AND a.id = m.id;

DELETE FROM semantic_memory AS m USING aegis_memory_duplicates AS a
WHERE a.kind = 'semantic' AND a.id = m.id;

DROP INDEX idx_episodic_content_hash;
CREATE UNIQUE INDEX idx_episodic_content_hash ON episodic_memory (content_hash);

DROP INDEX idx_semantic_content_hash;
CREATE UNIQUE INDEX idx_semantic_content_hash ON semantic_memory (content_hash);
