-- Collaboration storage: the write-ahead log of Yjs updates, and what compaction needs.

-- Every update a room applies lands here within the group-commit window; compaction merges
-- rows into documents.yjs_state and deletes exactly the rows it merged, in one transaction.
-- seq is allocated at insert, not at commit, so readers never infer "merged up to" from
-- seq alone: the rows still present for a document are, by construction, the unmerged ones.
CREATE TABLE document_updates (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id    UUID NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    payload        BYTEA NOT NULL,
    user_id        UUID REFERENCES users(id) ON DELETE SET NULL,
    device_id      VARCHAR(255),
    client_version VARCHAR(50),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX idx_document_updates_document ON document_updates(document_id, seq);

COMMENT ON TABLE document_updates IS
    'Write-ahead log of Yjs v1 updates not yet merged into documents.yjs_state';

-- When the last version snapshot was taken, so continuous editing snapshots at most every N minutes.
ALTER TABLE documents ADD COLUMN IF NOT EXISTS last_version_at TIMESTAMPTZ;
