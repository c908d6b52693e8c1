-- The agent's memory: episodic events, semantic knowledge, and decisions with their outcomes.
-- Generated columns give keyword search (summary_tsv, content_tsv) and import deduplication
-- (content_hash = md5 of the text) without any application code keeping them in step.

CREATE TABLE episodic_memory (
    id                 serial PRIMARY KEY,
    "timestamp"        timestamptz DEFAULT now(),
    event_type         varchar(100) NOT NULL,
    summary            text NOT NULL,
    details            jsonb,
    context            jsonb,
    importance         memory_importance DEFAULT 'medium',
    embedding          vector({{embedding_dim}}),
    tags               text[],
    related_memories   integer[],
    created_at         timestamptz DEFAULT now(),
    decision           text,
    metadata           jsonb,
    graphiti_synced_at timestamptz,
    summary_tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, summary)) STORED,
    content_hash       text GENERATED ALWAYS AS (md5(summary)) STORED
);

CREATE INDEX idx_episodic_embedding ON episodic_memory USING hnsw ({{embedding_hnsw_key}});
CREATE INDEX idx_episodic_timestamp ON episodic_memory ("timestamp" DESC);
CREATE INDEX idx_episodic_created_at ON episodic_memory (created_at);
CREATE INDEX idx_episodic_event_type ON episodic_memory (event_type);
CREATE INDEX idx_episodic_importance ON episodic_memory (importance);
CREATE INDEX idx_episodic_tags ON episodic_memory USING gin (tags);
CREATE INDEX idx_episodic_summary_tsv ON episodic_memory USING gin (summary_tsv);
CREATE INDEX idx_episodic_content_hash ON episodic_memory (content_hash);

CREATE TABLE semantic_memory (
    id           serial PRIMARY KEY,
    concept      varchar(200) NOT NULL,
    content      text NOT NULL,
    category     varchar(100),
    source       varchar(200),
    confidence   double precision DEFAULT 1.0,
    metadata     jsonb,
    tags         text[],
    embedding    vector({{embedding_dim}}),
    created_at   timestamptz DEFAULT now(),
    updated_at   timestamptz DEFAULT now(),
    content_tsv  tsvector GENERATED ALWAYS AS (
                     setweight(to_tsvector('english'::regconfig, concept), 'A')
                     || setweight(to_tsvector('english'::regconfig, content), 'B')) STORED,
    content_hash text GENERATED ALWAYS AS (md5(content)) STORED
);

CREATE INDEX idx_semantic_embedding ON semantic_memory USING hnsw ({{embedding_hnsw_key}});
CREATE INDEX idx_semantic_concept ON semantic_memory (concept);
CREATE INDEX idx_semantic_category ON semantic_memory (category);
CREATE INDEX idx_semantic_updated_at ON semantic_memory (updated_at DESC);
CREATE INDEX idx_semantic_created_at ON semantic_memory (created_at);
CREATE INDEX idx_semantic_tags ON semantic_memory USING gin (tags);
CREATE INDEX idx_semantic_content_tsv ON semantic_memory USING gin (content_tsv);
CREATE INDEX idx_semantic_content_hash ON semantic_memory (content_hash);

CREATE TRIGGER trg_semantic_memory_updated_at
    BEFORE UPDATE ON semantic_memory
    FOR EACH ROW EXECUTE FUNCTION aegis_set_updated_at();

-- ON DELETE SET NULL: retention may expire an episodic event; the decision record outlives it.
CREATE TABLE decision_outcomes (
    id              serial PRIMARY KEY,
    decision_id     integer REFERENCES episodic_memory (id) ON DELETE SET NULL,
    task_context    text NOT NULL,
    alternatives    jsonb NOT NULL,
    chosen_option   text NOT NULL,
    reasoning       text NOT NULL,
    outcome_status  varchar(20) DEFAULT 'pending'
                    CONSTRAINT decision_outcomes_outcome_status_check
                    CHECK (outcome_status IN ('pending', 'success', 'partial', 'failure')),
    outcome_details jsonb,
    lessons_learned text,
    user_feedback   varchar(20)
                    CONSTRAINT decision_outcomes_user_feedback_check
                    CHECK (user_feedback IN ('positive', 'negative', 'neutral')),
    created_at      timestamptz DEFAULT now(),
    resolved_at     timestamptz
);

CREATE INDEX idx_decision_outcomes_decision_id ON decision_outcomes (decision_id);
CREATE INDEX idx_decision_outcomes_status ON decision_outcomes (outcome_status);
CREATE INDEX idx_decision_outcomes_created_at ON decision_outcomes (created_at);
CREATE INDEX idx_decision_outcomes_resolved_at ON decision_outcomes (resolved_at);
