-- ==============================================================================
-- 004_http_api.sql -- what the HTTP API (collab_server/api/) needs from the schema.
-- ==============================================================================

-- The changes feed pages by (txid, cursor), not by cursor alone, and only hands out rows
-- whose transaction is older than every transaction still in progress
-- (txid < pg_snapshot_xmin(pg_current_snapshot())).  A row that becomes visible later
-- always has a txid at or above the xmin the reader saw, so it sorts after every
-- position already handed out: nothing is skipped, nothing repeated.  (Ordering by the
-- BIGSERIAL cursor is not enough: it is allocated at insert, and a transaction that got
-- its xid early -- compaction locks the row first -- can commit a higher cursor while a
-- younger transaction still holds a lower one.)
CREATE INDEX IF NOT EXISTS idx_sync_log_workspace_txid ON sync_log (workspace_id, txid, cursor);
-- Long-poll wake-ups: "which workspaces have rows that settled since the last tick".
CREATE INDEX IF NOT EXISTS idx_sync_log_txid ON sync_log (txid);

-- User-scoped reads of the feed and of versions go through row-level security like
-- documents and comments do.  ENABLE without FORCE: the owning role (migrations, the
-- server's internal work, the SECURITY DEFINER triggers that write these tables) is not
-- affected; collab_user sessions see only their workspaces' rows.
ALTER TABLE sync_log ENABLE ROW LEVEL SECURITY;

-- Members read their workspaces' feed; nobody but the triggers writes it.
CREATE POLICY sync_log_member_read_policy ON sync_log
    FOR SELECT
    USING (workspace_id IN (SELECT app_user_workspace_ids()));

CREATE POLICY sync_log_service_policy ON sync_log
    FOR ALL TO collab_service USING (true) WITH CHECK (true);

ALTER TABLE document_versions ENABLE ROW LEVEL SECURITY;

-- Same access as the documents they belong to (as for comments).
CREATE POLICY document_versions_access_policy ON document_versions
    FOR ALL
    USING (
        document_id IN (
            SELECT d.id FROM documents d
            WHERE d.workspace_id IN (SELECT app_user_workspace_ids())
        )
    )
    WITH CHECK (
        document_id IN (
            SELECT d.id FROM documents d
            WHERE d.workspace_id IN (SELECT app_user_workspace_ids())
        )
    );

CREATE POLICY document_versions_service_policy ON document_versions
    FOR ALL TO collab_service USING (true) WITH CHECK (true);
