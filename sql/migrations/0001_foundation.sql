-- Shared building blocks of the Aegis schema: the importance enum and the trigger function that
-- keeps updated_at current.
--
-- Template placeholders (substituted by aegisctl when applying; the checksum covers this text):
--   {{embedding_dim}}        the embedding dimension chosen at `aegisctl schema init`
--   {{embedding_hnsw_key}}   the HNSW index key: `embedding vector_cosine_ops`, or for
--                            dimensions above 2000 `(embedding::halfvec(N)) halfvec_cosine_ops`

CREATE TYPE memory_importance AS ENUM ('low', 'medium', 'high', 'critical');

CREATE FUNCTION aegis_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
