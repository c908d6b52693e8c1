-- Keyword search's fallback for short or misspelt queries: pg_trgm word similarity
-- (`query <% text`) on the searched text of each memory table, served by these GIN indexes.
-- (Full-text search uses the GIN indexes on summary_tsv / content_tsv from 0002.)

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE INDEX idx_episodic_summary_trgm ON episodic_memory USING gin (summary gin_trgm_ops);
CREATE INDEX idx_semantic_content_trgm ON semantic_memory USING gin (content gin_trgm_ops);
