-- The embedding recipe (aegisctl/memory/recipe.py): what text of a memory is embedded and
-- full-text indexed, recorded with each embedding so `memory reembed --stale` finds rows
-- embedded with an older recipe.
--
-- embedding_recipe: the recipe version aegisctl embedded the row with. Existing rows read as 1
-- (the text column alone): ADD COLUMN with a constant default is a catalog change, not a table
-- rewrite, and dropping the default afterwards leaves existing rows at 1 while new rows start
-- NULL until aegisctl embeds them (NULL on a row with an embedding: a vector made outside
-- aegisctl, recipe unknown).
ALTER TABLE semantic_memory ADD COLUMN embedding_recipe smallint DEFAULT 1;
ALTER TABLE semantic_memory ALTER COLUMN embedding_recipe DROP DEFAULT;
ALTER TABLE episodic_memory ADD COLUMN embedding_recipe smallint DEFAULT 1;
ALTER TABLE episodic_memory ALTER COLUMN embedding_recipe DROP DEFAULT;

-- Episodic full-text search also indexes what the recipe embeds: the event type and the
-- decision (weight B) beside the summary (weight A). A generated column's expression cannot be
-- changed in place before PostgreSQL 17, so the column and its GIN index are rebuilt (this
-- rewrites episodic_memory once). semantic_memory.content_tsv already indexes concept (A) and
-- content (B).
DROP INDEX IF EXISTS idx_episodic_summary_tsv;
ALTER TABLE episodic_memory DROP COLUMN summary_tsv;
ALTER TABLE episodic_memory ADD COLUMN summary_tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, summary), 'A')
    || setweight(to_tsvector('english'::regconfig,
                             coalesce(event_type, '') || ' ' || coalesce(decision, '')), 'B')
) STORED;
CREATE INDEX idx_episodic_summary_tsv ON episodic_memory USING gin (summary_tsv);
