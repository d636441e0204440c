-- Revocation must reach open WebSocket connections within seconds, on every server process.
-- Membership and document changes are announced with NOTIFY; each process LISTENs and
-- re-checks the connections concerned (collab_server/revocation.py).

CREATE OR REPLACE FUNCTION notify_membership_change()
RETURNS TRIGGER AS $$
BEGIN
    PERFORM pg_notify(
        'collab_access',
        json_build_object(
            'workspace_id', COALESCE(NEW.workspace_id, OLD.workspace_id),
            'user_id', COALESCE(NEW.user_id, OLD.user_id)
        )::text
    );
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_notify_membership_change
    AFTER INSERT OR UPDATE OF role, is_active OR DELETE ON workspace_members
    FOR EACH ROW
    EXECUTE FUNCTION notify_membership_change();

CREATE OR REPLACE FUNCTION notify_document_access_change()
RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.deleted IS DISTINCT FROM OLD.deleted
       OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id THEN
        PERFORM pg_notify(
            'collab_access',
            json_build_object('document_id', COALESCE(NEW.id, OLD.id))::text
        );
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_notify_document_access_change
    AFTER UPDATE OF deleted, workspace_id OR DELETE ON documents
    FOR EACH ROW
    EXECUTE FUNCTION notify_document_access_change();

CREATE OR REPLACE FUNCTION notify_workspace_access_change()
RETURNS TRIGGER AS $$
BEGIN
    IF NEW.deleted_at IS DISTINCT FROM OLD.deleted_at THEN
        PERFORM pg_notify('collab_access', json_build_object('workspace_id', NEW.id)::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_notify_workspace_access_change
    AFTER UPDATE OF deleted_at ON workspaces
    FOR EACH ROW
    EXECUTE FUNCTION notify_workspace_access_change();
