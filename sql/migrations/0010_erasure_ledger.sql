-- The erasure ledger: one row per memory `aegisctl memory forget` deleted. It records which row
-- went (kind, id, and the SHA-256 of its text: never the text itself), when, why and by whom,
-- so that every restore of an older backup can delete the row again (aegisctl copies the
-- ledger beside the backups and to the remote store, where it outlives this database).
--
-- A forget writes its ledger rows in the same transaction as the DELETE: a restored database
-- holds exactly the ledger rows of the erasures its backup already contains, and a restore
-- replays the ones it lacks. Only the owner (aegisctl) writes it; the app and read-only roles
-- get no grant.

CREATE TABLE aegis_erasures (
    erasure_id     uuid NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('episodic', 'semantic')),
    memory_id      integer NOT NULL,
    content_sha256 text NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    erased_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason         text NOT NULL,
    os_user        text NOT NULL,
    db_user        text NOT NULL DEFAULT current_user,
    batch          integer NOT NULL,
    PRIMARY KEY (erasure_id, kind, memory_id)
);

CREATE INDEX idx_erasures_erased_at ON aegis_erasures (erased_at);
