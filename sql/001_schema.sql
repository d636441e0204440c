-- ==============================================================================
-- 001_schema.sql -- base schema for collab-server
--
-- Derived from the draft "MD Creator" schema (seed document, sections 3.2 and
-- 3.4).  Every fix relative to the draft is listed in sql/README.md.
--
-- Runs on PostgreSQL 13 .. 18 with core features only (no uuid-ossp, no
-- pgcrypto).  It is applied by the migration runner as ONE multi-statement
-- string inside ONE transaction, so it contains no BEGIN/COMMIT, no psql
-- meta-commands and no CREATE INDEX CONCURRENTLY.
-- ==============================================================================

-- ==============================================================================
-- EXTENSIONS
-- ==============================================================================

-- Trigram index support for fuzzy title search (required; trusted since PG13).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Query statistics: optional.  Created only when the server ships it, and never
-- fatal (e.g. insufficient privilege).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pg_stat_statements not installed: %', SQLERRM;
        END;
    END IF;
END
$$;

-- ==============================================================================
-- ROLES (cluster-wide, therefore created idempotently)
--
--   collab_service  internal server work (compaction, feeds, maintenance);
--                   RLS policies grant it everything.
--   collab_user     user-scoped queries: SET LOCAL ROLE collab_user plus
--                   set_config('app.current_user_id', uid, true).  Subject to RLS.
-- ==============================================================================
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['collab_service', 'collab_user'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another migration run in this cluster
            END;
        END IF;
        BEGIN
            EXECUTE format('GRANT %I TO %I', r, current_user);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'could not grant % to %: %', r, current_user, SQLERRM;
        END;
    END LOOP;
END
$$;

-- ==============================================================================
-- CUSTOM TYPES
-- ==============================================================================

CREATE TYPE workspace_role AS ENUM ('owner', 'admin', 'editor', 'commenter', 'viewer');
CREATE TYPE document_type AS ENUM ('markdown', 'mindmap', 'presentation', 'mixed');
CREATE TYPE sync_operation AS ENUM ('create', 'update', 'delete');
CREATE TYPE invitation_status AS ENUM ('pending', 'accepted', 'declined', 'expired');
CREATE TYPE ai_provider AS ENUM ('openai', 'anthropic', 'cohere', 'local');
CREATE TYPE metric_type AS ENUM ('api_request', 'ai_token', 'storage', 'bandwidth');

-- ==============================================================================
-- HELPER FUNCTIONS
-- ==============================================================================

-- Hex SHA-256 of a text value (UTF-8 bytes).  convert_to() is only STABLE in
-- the catalog, so it cannot be used directly in a generated column; its result
-- depends only on the (fixed) database encoding, so IMMUTABLE is truthful here.
CREATE OR REPLACE FUNCTION sha256_hex(p_text text)
RETURNS text
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_text, 'UTF8')), 'hex')
$$;

-- Reads a transaction-local setting holding a uuid.  Unset, empty (a custom
-- setting reverts to '' after the transaction that set it) or malformed -> NULL.
CREATE OR REPLACE FUNCTION app_setting_uuid(p_name text)
RETURNS uuid
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v text := NULLIF(current_setting(p_name, true), '');
BEGIN
    IF v IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN v::uuid;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN NULL;
END;
$$;

-- ==============================================================================
-- USERS TABLE
-- ==============================================================================
CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),

    -- Authentication (Cognito integration)
    cognito_sub VARCHAR(255) UNIQUE NOT NULL,
    email VARCHAR(255) UNIQUE NOT NULL,
    email_verified BOOLEAN DEFAULT FALSE,

    -- Profile
    display_name VARCHAR(255),
    avatar_url TEXT,
    bio TEXT,

    -- Settings (preferences, theme, editor config)
    settings JSONB DEFAULT '{
        "theme": "system",
        "editor_mode": "wysiwyg",
        "ai_enabled": true,
        "notifications_enabled": true,
        "language": "en"
    }'::jsonb,

    -- Feature flags
    features JSONB DEFAULT '{
        "collaboration": true,
        "ai_proxy": false,
        "advanced_permissions": false
    }'::jsonb,

    -- Subscription & billing
    subscription_tier VARCHAR(50) DEFAULT 'free', -- free, pro, team, enterprise
    subscription_status VARCHAR(50) DEFAULT 'active',
    subscription_expires_at TIMESTAMPTZ,

    -- Timestamps
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    last_seen_at TIMESTAMPTZ DEFAULT NOW(),

    -- Soft delete
    deleted_at TIMESTAMPTZ,

    -- Constraints
    CONSTRAINT email_format CHECK (email ~* '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$')
);

COMMENT ON TABLE users IS 'Accounts (identity from Cognito).  Soft delete via deleted_at; a hard delete '
    'cascades to owned workspaces/memberships/keys and nulls authorship references elsewhere.';

-- Indexes
CREATE INDEX idx_users_email ON users(email) WHERE deleted_at IS NULL;
CREATE INDEX idx_users_cognito_sub ON users(cognito_sub);
CREATE INDEX idx_users_last_seen ON users(last_seen_at DESC);
CREATE INDEX idx_users_subscription ON users(subscription_tier, subscription_status);

-- ==============================================================================
-- WORKSPACES TABLE
-- ==============================================================================
CREATE TABLE workspaces (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),

    -- Ownership
    owner_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,

    -- Basic info
    name VARCHAR(255) NOT NULL,
    slug VARCHAR(100) UNIQUE, -- URL-friendly identifier
    description TEXT,
    icon VARCHAR(50), -- Emoji or icon ID
    color VARCHAR(20), -- Hex color

    -- Type
    is_personal BOOLEAN DEFAULT TRUE,
    is_team BOOLEAN DEFAULT FALSE,

    -- Settings
    settings JSONB DEFAULT '{
        "default_permissions": "editor",
        "require_invitation": true,
        "allow_guest_access": false,
        "ai_enabled": true
    }'::jsonb,

    -- Limits
    storage_used_bytes BIGINT DEFAULT 0,
    storage_limit_bytes BIGINT DEFAULT 1073741824, -- 1GB
    member_limit INTEGER DEFAULT 10,

    -- Timestamps
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    archived_at TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ,

    -- Constraints
    CONSTRAINT name_not_empty CHECK (length(trim(name)) > 0)
);

COMMENT ON TABLE workspaces IS 'Container of documents and members.  storage_used_bytes is maintained by '
    'the attachments trigger (update_workspace_storage).';

-- Indexes
CREATE INDEX idx_workspaces_owner ON workspaces(owner_id) WHERE deleted_at IS NULL;
CREATE INDEX idx_workspaces_slug ON workspaces(slug) WHERE deleted_at IS NULL;
CREATE INDEX idx_workspaces_updated ON workspaces(updated_at DESC);
CREATE INDEX idx_workspaces_team ON workspaces(is_team) WHERE is_team = TRUE AND deleted_at IS NULL;

-- ==============================================================================
-- WORKSPACE_MEMBERS TABLE
-- ==============================================================================
CREATE TABLE workspace_members (
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,

    -- Role
    role workspace_role NOT NULL DEFAULT 'viewer',

    -- Fine-grained permissions
    permissions JSONB DEFAULT '{
        "can_create_documents": true,
        "can_edit_documents": true,
        "can_delete_documents": false,
        "can_comment": true,
        "can_invite_members": false,
        "can_manage_workspace": false
    }'::jsonb,

    -- Invitation metadata
    invited_by UUID REFERENCES users(id) ON DELETE SET NULL,
    invitation_accepted_at TIMESTAMPTZ,

    -- Status (NOT NULL: a NULL would silently count as neither active nor inactive)
    is_active BOOLEAN NOT NULL DEFAULT TRUE,

    -- Timestamps
    joined_at TIMESTAMPTZ DEFAULT NOW(),
    last_accessed_at TIMESTAMPTZ,

    -- Primary key
    PRIMARY KEY (workspace_id, user_id)
);

COMMENT ON TABLE workspace_members IS 'Membership of users in workspaces; only is_active rows grant access '
    '(see the RLS policies and app_user_workspace_ids()).';

-- Indexes
CREATE INDEX idx_workspace_members_user ON workspace_members(user_id);
CREATE INDEX idx_workspace_members_role ON workspace_members(workspace_id, role);
CREATE INDEX idx_workspace_members_active ON workspace_members(workspace_id, is_active) WHERE is_active = TRUE;

-- ==============================================================================
-- DOCUMENTS TABLE
-- ==============================================================================
CREATE TABLE documents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),

    -- Workspace relationship
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,

    -- Document identity
    title VARCHAR(500) NOT NULL,
    type document_type DEFAULT 'markdown',

    -- Content
    content TEXT NOT NULL DEFAULT '',

    -- Content hash for ETag and conflict detection (hex SHA-256 of the UTF-8 bytes)
    content_hash VARCHAR(64) GENERATED ALWAYS AS (sha256_hex(content)) STORED,

    -- Metadata
    metadata JSONB DEFAULT '{
        "tags": [],
        "category": null,
        "priority": "normal",
        "status": "draft"
    }'::jsonb,

    -- Settings
    settings JSONB DEFAULT '{
        "editor_mode": "wysiwyg",
        "ai_enabled": true,
        "auto_save": true,
        "collaboration_enabled": true
    }'::jsonb,

    -- Collaboration state (Yjs CRDT)
    yjs_state BYTEA, -- Binary Yjs document state (update encoding)
    yjs_clock BIGINT DEFAULT 0, -- Logical clock for ordering

    -- Access tracking
    view_count INTEGER DEFAULT 0,
    last_viewed_at TIMESTAMPTZ,
    last_edited_at TIMESTAMPTZ,

    -- Ownership (SET NULL so that deleting a user is possible)
    created_by UUID REFERENCES users(id) ON DELETE SET NULL,
    updated_by UUID REFERENCES users(id) ON DELETE SET NULL,

    -- Timestamps
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),

    -- Soft delete (tombstone for sync)
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at TIMESTAMPTZ,
    deleted_by UUID REFERENCES users(id) ON DELETE SET NULL,

    -- Full-text search (tags are a jsonb array: index its string elements)
    search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') ||
        setweight(to_tsvector('english'::regconfig, coalesce(content, '')), 'B') ||
        setweight(jsonb_to_tsvector('english'::regconfig, coalesce(metadata->'tags', '[]'::jsonb),
                                    '["string"]'::jsonb), 'C')
    ) STORED,

    -- Constraints
    CONSTRAINT title_not_empty CHECK (length(trim(title)) > 0)
);

COMMENT ON TABLE documents IS 'Collaborative documents.  yjs_state is the durable Yjs state, content its '
    'plain-text/markdown rendering.  Every change a syncing client cares about is logged to sync_log by '
    'log_document_change().';
COMMENT ON COLUMN documents.deleted IS 'Soft-delete tombstone; flipping it to true is logged as a sync '
    '''delete''.';

-- Indexes
CREATE INDEX idx_documents_workspace ON documents(workspace_id, deleted) WHERE deleted = FALSE;
CREATE INDEX idx_documents_workspace_updated ON documents(workspace_id, updated_at DESC) WHERE deleted = FALSE;
CREATE INDEX idx_documents_created_by ON documents(created_by);
CREATE INDEX idx_documents_updated_by ON documents(updated_by);
CREATE INDEX idx_documents_content_hash ON documents(content_hash);
CREATE INDEX idx_documents_search ON documents USING GIN(search_vector);
CREATE INDEX idx_documents_type ON documents(workspace_id, type) WHERE deleted = FALSE;
CREATE INDEX idx_documents_metadata ON documents USING GIN(metadata);

-- Fuzzy search support
CREATE INDEX idx_documents_title_trgm ON documents USING GIN(title gin_trgm_ops);

-- Names of the columns that differ between two versions of a document row.
-- Derived columns (content_hash, search_vector) and updated_at are never
-- reported.  NOTE: a migration that adds a column to documents must also
-- replace this function (tests/sql checks that every column is covered).
CREATE OR REPLACE FUNCTION document_changed_columns(o documents, n documents)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT COALESCE(array_agg(c.name ORDER BY c.ord), '{}'::text[])
    FROM (VALUES
        (1,  'id',             o.id             IS DISTINCT FROM n.id),
        (2,  'workspace_id',   o.workspace_id   IS DISTINCT FROM n.workspace_id),
        (3,  'title',          o.title          IS DISTINCT FROM n.title),
        (4,  'type',           o.type           IS DISTINCT FROM n.type),
        (5,  'content',        o.content        IS DISTINCT FROM n.content),
        (6,  'metadata',       o.metadata       IS DISTINCT FROM n.metadata),
        (7,  'settings',       o.settings       IS DISTINCT FROM n.settings),
        (8,  'yjs_state',      o.yjs_state      IS DISTINCT FROM n.yjs_state),
        (9,  'yjs_clock',      o.yjs_clock      IS DISTINCT FROM n.yjs_clock),
        (10, 'view_count',     o.view_count     IS DISTINCT FROM n.view_count),
        (11, 'last_viewed_at', o.last_viewed_at IS DISTINCT FROM n.last_viewed_at),
        (12, 'last_edited_at', o.last_edited_at IS DISTINCT FROM n.last_edited_at),
        (13, 'created_by',     o.created_by     IS DISTINCT FROM n.created_by),
        (14, 'updated_by',     o.updated_by     IS DISTINCT FROM n.updated_by),
        (15, 'created_at',     o.created_at     IS DISTINCT FROM n.created_at),
        (16, 'deleted',        o.deleted        IS DISTINCT FROM n.deleted),
        (17, 'deleted_at',     o.deleted_at     IS DISTINCT FROM n.deleted_at),
        (18, 'deleted_by',     o.deleted_by     IS DISTINCT FROM n.deleted_by)
    ) AS c(ord, name, changed)
    WHERE c.changed
$$;

-- ==============================================================================
-- DOCUMENT_VERSIONS TABLE
-- ==============================================================================
CREATE TABLE document_versions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id UUID NOT NULL REFERENCES documents(id) ON DELETE CASCADE,

    -- Version tracking (always assigned by trigger_auto_version_number)
    version_number INTEGER NOT NULL,

    -- Snapshot
    title VARCHAR(500) NOT NULL,
    content TEXT NOT NULL,
    content_hash VARCHAR(64), -- filled with sha256_hex(content) when not supplied
    yjs_state BYTEA, -- Yjs state of the snapshot, so that a version can be restored

    -- Change tracking
    change_description TEXT,
    changes_summary JSONB, -- { added: 10, removed: 5, modified: 2 }
    diff_patch TEXT, -- Optional: unified diff format

    -- Metadata snapshot
    metadata_snapshot JSONB,

    -- Author
    created_by UUID REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(),

    -- Size (bytes of the UTF-8 content, not characters)
    size_bytes INTEGER GENERATED ALWAYS AS (octet_length(content)) STORED,

    -- Unique constraint
    UNIQUE(document_id, version_number)
);

COMMENT ON TABLE document_versions IS 'Snapshots of documents, numbered 1..n per document by a trigger that '
    'serialises concurrent inserts on the parent document row.';

-- Indexes
CREATE INDEX idx_versions_document ON document_versions(document_id, version_number DESC);
CREATE INDEX idx_versions_created_at ON document_versions(document_id, created_at DESC);
CREATE INDEX idx_versions_author ON document_versions(created_by);

-- Auto-increment version number.  Concurrent inserts for the same document are
-- serialised by locking the parent document row before reading MAX(); the lock
-- mode (NO KEY UPDATE) does not block foreign-key checks from other tables.
CREATE OR REPLACE FUNCTION auto_version_number()
RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM documents d WHERE d.id = NEW.document_id FOR NO KEY UPDATE;

    NEW.version_number := COALESCE(
        (SELECT MAX(v.version_number) FROM document_versions v WHERE v.document_id = NEW.document_id),
        0
    ) + 1;

    IF NEW.content_hash IS NULL THEN
        NEW.content_hash := sha256_hex(NEW.content);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_auto_version_number
    BEFORE INSERT ON document_versions
    FOR EACH ROW
    EXECUTE FUNCTION auto_version_number();

-- ==============================================================================
-- ATTACHMENTS TABLE
-- ==============================================================================
CREATE TABLE attachments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),

    -- Relationships
    document_id UUID REFERENCES documents(id) ON DELETE CASCADE,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,

    -- File info
    file_name VARCHAR(500) NOT NULL,
    original_name VARCHAR(500),
    content_type VARCHAR(100),
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),

    -- S3 storage
    s3_bucket VARCHAR(255) NOT NULL,
    s3_key VARCHAR(1000) NOT NULL,
    s3_region VARCHAR(50) DEFAULT 'us-east-1',

    -- CDN
    cdn_url TEXT,

    -- Image-specific metadata
    metadata JSONB DEFAULT '{}'::jsonb, -- width, height, exif, etc.

    -- Processing
    processing_status VARCHAR(50) DEFAULT 'pending', -- pending, processing, complete, failed
    thumbnail_s3_key VARCHAR(1000),
    thumbnail_url TEXT,

    -- Ownership
    uploaded_by UUID REFERENCES users(id) ON DELETE SET NULL,
    uploaded_at TIMESTAMPTZ DEFAULT NOW(),

    -- Access tracking
    download_count INTEGER DEFAULT 0,
    last_accessed_at TIMESTAMPTZ,

    -- Soft delete
    deleted_at TIMESTAMPTZ,

    -- Unique S3 key
    UNIQUE(s3_bucket, s3_key)
);

COMMENT ON TABLE attachments IS 'Files stored in S3.  Every row (soft-deleted or not, the object still exists '
    'in S3) counts towards workspaces.storage_used_bytes.';

-- Indexes
CREATE INDEX idx_attachments_document ON attachments(document_id) WHERE deleted_at IS NULL;
CREATE INDEX idx_attachments_workspace ON attachments(workspace_id);
CREATE INDEX idx_attachments_uploader ON attachments(uploaded_by);
CREATE INDEX idx_attachments_s3_key ON attachments(s3_bucket, s3_key);
CREATE INDEX idx_attachments_processing ON attachments(processing_status) WHERE processing_status != 'complete';

-- ==============================================================================
-- COMMENTS TABLE
-- ==============================================================================
CREATE TABLE comments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id UUID NOT NULL REFERENCES documents(id) ON DELETE CASCADE,

    -- Thread structure (thread_id/depth assigned by trigger_comment_thread_id)
    parent_id UUID REFERENCES comments(id) ON DELETE CASCADE,
    thread_id UUID,
    depth INTEGER DEFAULT 0,

    -- Author
    author_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,

    -- Content
    content TEXT NOT NULL,
    content_html TEXT, -- Cached rendered content

    -- Position (inline comments)
    position JSONB, -- { "from": 100, "to": 150, "blockId": "abc" }
    anchor_text TEXT, -- Original text that comment refers to

    -- Mentions
    mentions UUID[], -- User IDs

    -- Status
    resolved BOOLEAN DEFAULT FALSE,
    resolved_by UUID REFERENCES users(id) ON DELETE SET NULL,
    resolved_at TIMESTAMPTZ,

    -- Reactions
    reactions JSONB DEFAULT '[]'::jsonb, -- [{ "emoji": "+1", "users": [uuid1, uuid2] }]

    -- Edit tracking
    edited BOOLEAN DEFAULT FALSE,
    edit_history JSONB DEFAULT '[]'::jsonb,

    -- Timestamps
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    deleted_at TIMESTAMPTZ,

    -- Constraints
    CONSTRAINT content_not_empty CHECK (length(trim(content)) > 0)
);

COMMENT ON TABLE comments IS 'Threaded comments.  thread_id = id of the root comment, depth = 0 for roots.';

-- Indexes
CREATE INDEX idx_comments_document ON comments(document_id, created_at) WHERE deleted_at IS NULL;
CREATE INDEX idx_comments_thread ON comments(thread_id, depth) WHERE deleted_at IS NULL;
CREATE INDEX idx_comments_author ON comments(author_id);
CREATE INDEX idx_comments_mentions ON comments USING GIN(mentions);
CREATE INDEX idx_comments_resolved ON comments(document_id, resolved) WHERE deleted_at IS NULL;

-- Thread ID auto-assignment.  Column defaults (including id) are applied before
-- BEFORE ROW triggers run, so NEW.id already holds the generated uuid here.
CREATE OR REPLACE FUNCTION set_comment_thread_id()
RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_thread   uuid;
    v_depth    integer;
    v_document uuid;
BEGIN
    IF NEW.parent_id IS NULL THEN
        NEW.thread_id := NEW.id;
        NEW.depth := 0;
    ELSE
        SELECT COALESCE(p.thread_id, p.id), COALESCE(p.depth, 0) + 1, p.document_id
          INTO v_thread, v_depth, v_document
          FROM comments p
         WHERE p.id = NEW.parent_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'parent comment % does not exist', NEW.parent_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF v_document <> NEW.document_id THEN
            RAISE EXCEPTION 'reply % must be on the same document as its parent %', NEW.id, NEW.parent_id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.thread_id := v_thread;
        NEW.depth := v_depth;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_comment_thread_id
    BEFORE INSERT ON comments
    FOR EACH ROW
    EXECUTE FUNCTION set_comment_thread_id();

-- ==============================================================================
-- PRESENCE TABLE (Real-Time)
-- ==============================================================================
CREATE TABLE presence (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),

    -- Session
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    document_id UUID NOT NULL REFERENCES documents(id) ON DELETE CASCADE,

    -- Connection
    connection_id VARCHAR(255) NOT NULL UNIQUE,
    device_type VARCHAR(50), -- 'web', 'desktop', 'mobile'
    device_name VARCHAR(255),

    -- Cursor state
    cursor_position JSONB,
    selection_range JSONB,

    -- Activity
    is_active BOOLEAN DEFAULT TRUE,
    is_typing BOOLEAN DEFAULT FALSE,
    current_block_id VARCHAR(255),

    -- Timestamps
    connected_at TIMESTAMPTZ DEFAULT NOW(),
    last_activity_at TIMESTAMPTZ DEFAULT NOW(),
    disconnected_at TIMESTAMPTZ,

    -- TTL
    expires_at TIMESTAMPTZ DEFAULT NOW() + INTERVAL '5 minutes'
);

COMMENT ON TABLE presence IS 'Who is connected to which document; rows expire (cleanup_expired_presence()).';

-- Indexes
CREATE INDEX idx_presence_document_active ON presence(document_id, is_active) WHERE is_active = TRUE;
CREATE INDEX idx_presence_user_document ON presence(user_id, document_id);
CREATE INDEX idx_presence_expires ON presence(expires_at);
CREATE INDEX idx_presence_connection ON presence(connection_id);

-- ==============================================================================
-- SYNC_LOG TABLE
-- ==============================================================================
CREATE TABLE sync_log (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),

    -- Entity
    entity_type VARCHAR(50) NOT NULL,
    entity_id UUID NOT NULL,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,

    -- Operation
    operation sync_operation NOT NULL,

    -- Changes: a SMALL jsonb (changed column names + app supplied context),
    -- never the document content or Yjs state.
    changes JSONB,
    content_hash VARCHAR(64),

    -- Actor
    changed_by UUID REFERENCES users(id) ON DELETE SET NULL,
    device_id VARCHAR(255),
    client_version VARCHAR(50),

    -- Timestamp
    timestamp TIMESTAMPTZ DEFAULT NOW(),

    -- Sync cursor (for pagination)
    cursor BIGSERIAL UNIQUE,

    -- Writing transaction: lets the changes feed avoid handing out a cursor past
    -- a transaction that is still in flight.
    txid xid8 NOT NULL DEFAULT pg_current_xact_id()
);

COMMENT ON TABLE sync_log IS 'Append-only change feed per workspace, paginated by cursor.  Rows older '
    'than the retention period are removed by cleanup_old_sync_log().';
COMMENT ON COLUMN sync_log.txid IS 'pg_current_xact_id() of the writing transaction; compare with '
    'pg_snapshot_xmin(pg_current_snapshot()) to find cursors that are safe to hand out.';

-- Indexes (critical for sync performance)
CREATE INDEX idx_sync_log_workspace_cursor ON sync_log(workspace_id, cursor DESC);
CREATE INDEX idx_sync_log_entity ON sync_log(entity_type, entity_id, cursor DESC);
CREATE INDEX idx_sync_log_timestamp ON sync_log(timestamp DESC);
CREATE INDEX idx_sync_log_cursor ON sync_log(cursor DESC);

-- ==============================================================================
-- INVITATIONS TABLE
-- ==============================================================================
CREATE TABLE invitations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),

    -- Workspace
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,

    -- Inviter
    invited_by UUID REFERENCES users(id) ON DELETE SET NULL,

    -- Invitee
    email VARCHAR(255) NOT NULL,
    user_id UUID REFERENCES users(id) ON DELETE SET NULL,

    -- Role
    role workspace_role NOT NULL DEFAULT 'viewer',

    -- Token: 64 hex chars derived from two random (pg_strong_random) uuids
    token VARCHAR(64) UNIQUE NOT NULL DEFAULT encode(
        sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || clock_timestamp()::text,
                          'UTF8')),
        'hex'),

    -- Status
    status invitation_status NOT NULL DEFAULT 'pending',

    -- Message
    message TEXT,

    -- Timestamps
    created_at TIMESTAMPTZ DEFAULT NOW(),
    expires_at TIMESTAMPTZ DEFAULT NOW() + INTERVAL '7 days',
    accepted_at TIMESTAMPTZ,
    declined_at TIMESTAMPTZ
);

COMMENT ON TABLE invitations IS 'Workspace invitations; at most one pending invitation per workspace and '
    '(case-insensitive) email.';

-- At most one PENDING invitation per workspace and email (case-insensitive).
-- (The draft's "UNIQUE (...) WHERE ..." table constraint is not valid SQL.)
CREATE UNIQUE INDEX idx_invitations_pending_unique
    ON invitations(workspace_id, lower(email)) WHERE status = 'pending';

-- Indexes
CREATE INDEX idx_invitations_workspace ON invitations(workspace_id, status);
CREATE INDEX idx_invitations_email ON invitations(lower(email), status);
CREATE INDEX idx_invitations_token ON invitations(token) WHERE status = 'pending';
CREATE INDEX idx_invitations_expires ON invitations(expires_at) WHERE status = 'pending';

-- ==============================================================================
-- MINDMAPS TABLE
-- ==============================================================================
CREATE TABLE mindmaps (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id UUID UNIQUE NOT NULL REFERENCES documents(id) ON DELETE CASCADE,

    -- Structure
    nodes JSONB NOT NULL DEFAULT '[]'::jsonb,
    edges JSONB NOT NULL DEFAULT '[]'::jsonb,

    -- Layout
    layout_type VARCHAR(50) DEFAULT 'tree',
    layout_settings JSONB DEFAULT '{}'::jsonb,

    -- AI metadata
    ai_generated BOOLEAN DEFAULT FALSE,
    ai_prompt TEXT,
    ai_model VARCHAR(100),

    -- Timestamps
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- Indexes
CREATE INDEX idx_mindmaps_document ON mindmaps(document_id);

-- ==============================================================================
-- API_KEYS TABLE (User-Provided AI Keys)
-- ==============================================================================
CREATE TABLE api_keys (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,

    -- Provider
    provider ai_provider NOT NULL,

    -- Encrypted key
    encrypted_key TEXT NOT NULL,
    key_hash VARCHAR(64) NOT NULL,

    -- Metadata
    name VARCHAR(100),
    description TEXT,

    -- Usage
    last_used_at TIMESTAMPTZ,
    usage_count INTEGER DEFAULT 0,

    -- Status
    is_active BOOLEAN DEFAULT TRUE,
    is_valid BOOLEAN DEFAULT TRUE,
    validation_error TEXT,

    -- Timestamps
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    revoked_at TIMESTAMPTZ,

    -- Unique constraint
    UNIQUE(user_id, provider, key_hash)
);

-- Indexes
CREATE INDEX idx_api_keys_user_provider ON api_keys(user_id, provider, is_active);

-- ==============================================================================
-- USAGE_METRICS TABLE
-- ==============================================================================
CREATE TABLE usage_metrics (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    workspace_id UUID REFERENCES workspaces(id) ON DELETE CASCADE,

    -- Metric
    metric_type metric_type NOT NULL,
    value BIGINT NOT NULL,

    -- Context
    metadata JSONB DEFAULT '{}'::jsonb,

    -- Time window
    recorded_at TIMESTAMPTZ DEFAULT NOW(),
    period_start TIMESTAMPTZ NOT NULL,
    period_end TIMESTAMPTZ NOT NULL
);

-- Indexes
CREATE INDEX idx_usage_metrics_user_period ON usage_metrics(user_id, metric_type, period_start DESC, period_end DESC);
CREATE INDEX idx_usage_metrics_workspace ON usage_metrics(workspace_id, metric_type, period_start DESC);
CREATE INDEX idx_usage_metrics_period ON usage_metrics(period_start, period_end);

-- Partitioning by month (for performance) -- not done: would need a partitioned
-- parent table and a partition-aware primary key.

-- ==============================================================================
-- GLOBAL TRIGGERS
-- ==============================================================================

-- Update updated_at automatically
CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- documents: same, except that a pure view-tracking update (only view_count /
-- last_viewed_at changed) does not count as a modification.
CREATE OR REPLACE FUNCTION update_document_updated_at()
RETURNS TRIGGER AS $$
BEGIN
    IF (NEW.view_count IS DISTINCT FROM OLD.view_count
        OR NEW.last_viewed_at IS DISTINCT FROM OLD.last_viewed_at)
       AND document_changed_columns(OLD, NEW) <@ ARRAY['view_count', 'last_viewed_at']
    THEN
        RETURN NEW;
    END IF;
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER update_users_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_workspaces_updated_at
    BEFORE UPDATE ON workspaces
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_documents_updated_at
    BEFORE UPDATE ON documents
    FOR EACH ROW
    EXECUTE FUNCTION update_document_updated_at();

CREATE TRIGGER update_comments_updated_at
    BEFORE UPDATE ON comments
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_mindmaps_updated_at
    BEFORE UPDATE ON mindmaps
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_api_keys_updated_at
    BEFORE UPDATE ON api_keys
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

-- Log document changes to sync_log.
--
-- changes is a SMALL jsonb:
--   create : {"title": ..., "type": ...}
--   update : {"columns": [changed column names]}   (never content/yjs_state values)
--   delete : {"soft": true, "columns": [...]} for deleted false->true,
--            {"soft": false} for a hard DELETE
--   move   : the old workspace gets {"moved_to": new_ws}, the new one a 'create'
-- merged with the object in the transaction-local setting app.sync_changes
-- (trigger keys win).  app.device_id / app.client_version fill device_id /
-- client_version; app.current_user_id is the fallback actor.
--
-- No row is written when an UPDATE changed nothing a syncing client cares
-- about (e.g. only view_count/last_viewed_at), nor for rows whose workspace is
-- gone or being deleted (ON DELETE CASCADE from workspaces: the parent row is
-- already invisible when the cascade runs).
CREATE OR REPLACE FUNCTION log_document_change()
RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_op        sync_operation;
    v_ws        uuid;
    v_cols      text[];
    v_changes   jsonb;
    v_app_raw   text;
    v_app       jsonb;
    v_app_user  uuid := app_setting_uuid('app.current_user_id');
    v_actor     uuid;
    v_device    text := left(NULLIF(current_setting('app.device_id', true), ''), 255);
    v_client    text := left(NULLIF(current_setting('app.client_version', true), ''), 50);
    v_hash      text;
    v_entity    uuid;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_op := 'create';
        v_ws := NEW.workspace_id;
        v_entity := NEW.id;
        v_hash := NEW.content_hash;
        v_changes := jsonb_build_object('title', NEW.title, 'type', NEW.type);
        v_actor := COALESCE(NEW.created_by, NEW.updated_by, v_app_user);
    ELSIF TG_OP = 'UPDATE' THEN
        v_cols := array(
            SELECT c FROM unnest(document_changed_columns(OLD, NEW)) AS c
            WHERE c NOT IN ('view_count', 'last_viewed_at')
        );
        IF cardinality(v_cols) = 0 THEN
            RETURN NULL;
        END IF;
        v_ws := NEW.workspace_id;
        v_entity := NEW.id;
        v_hash := NEW.content_hash;
        IF NEW.deleted AND NOT OLD.deleted THEN
            v_op := 'delete';
            v_changes := jsonb_build_object('soft', true, 'columns', to_jsonb(v_cols));
            v_actor := COALESCE(NEW.deleted_by, v_app_user, NEW.updated_by, NEW.created_by);
        ELSE
            v_op := 'update';
            v_changes := jsonb_build_object('columns', to_jsonb(v_cols));
            v_actor := COALESCE(
                CASE WHEN NEW.updated_by IS DISTINCT FROM OLD.updated_by THEN NEW.updated_by END,
                v_app_user, NEW.updated_by, NEW.created_by);
        END IF;

        IF NEW.workspace_id IS DISTINCT FROM OLD.workspace_id THEN
            -- Moved between workspaces: clients of the old workspace see a delete,
            -- clients of the new one a create.
            PERFORM 1 FROM workspaces w WHERE w.id = OLD.workspace_id;
            IF FOUND THEN
                INSERT INTO sync_log (entity_type, entity_id, workspace_id, operation, changes,
                                      content_hash, changed_by, device_id, client_version)
                VALUES ('document', OLD.id, OLD.workspace_id, 'delete',
                        jsonb_build_object('moved_to', NEW.workspace_id),
                        OLD.content_hash, (SELECT u.id FROM users u WHERE u.id = v_actor),
                        v_device, v_client);
            END IF;
            IF v_op = 'update' THEN
                v_op := 'create';
            END IF;
        END IF;
    ELSE  -- DELETE
        v_op := 'delete';
        v_ws := OLD.workspace_id;
        v_entity := OLD.id;
        v_hash := OLD.content_hash;
        v_changes := jsonb_build_object('soft', false);
        v_actor := COALESCE(v_app_user, OLD.deleted_by, OLD.updated_by, OLD.created_by);
    END IF;

    -- Workspace gone (or being deleted by a cascade): nothing to tell anyone.
    PERFORM 1 FROM workspaces w WHERE w.id = v_ws;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    -- Application supplied context (transaction-local setting).
    v_app_raw := NULLIF(current_setting('app.sync_changes', true), '');
    IF v_app_raw IS NOT NULL THEN
        BEGIN
            v_app := v_app_raw::jsonb;
        EXCEPTION WHEN OTHERS THEN
            v_app := to_jsonb(left(v_app_raw, 200));
        END;
        IF jsonb_typeof(v_app) = 'object' THEN
            v_changes := v_app || v_changes;
        ELSE
            v_changes := v_changes || jsonb_build_object('app', v_app);
        END IF;
    END IF;

    -- The actor may have been deleted (e.g. ON DELETE SET NULL cascades).
    v_actor := (SELECT u.id FROM users u WHERE u.id = v_actor);

    INSERT INTO sync_log (entity_type, entity_id, workspace_id, operation, changes,
                          content_hash, changed_by, device_id, client_version)
    VALUES ('document', v_entity, v_ws, v_op, v_changes, v_hash, v_actor, v_device, v_client);

    RETURN NULL;  -- AFTER trigger: result ignored
END;
$$;

CREATE TRIGGER trigger_log_document_change
    AFTER INSERT OR UPDATE OR DELETE ON documents
    FOR EACH ROW
    EXECUTE FUNCTION log_document_change();

-- Update workspace storage usage.  Handles insert, size change, delete and
-- moving an attachment to another workspace; a NULL size counts as 0.
CREATE OR REPLACE FUNCTION update_workspace_storage()
RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_old bigint := 0;
    v_new bigint := 0;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        v_old := COALESCE(OLD.size_bytes, 0);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        v_new := COALESCE(NEW.size_bytes, 0);
    END IF;

    IF TG_OP = 'UPDATE' AND NEW.workspace_id IS NOT DISTINCT FROM OLD.workspace_id THEN
        IF v_new <> v_old THEN
            UPDATE workspaces
               SET storage_used_bytes = GREATEST(0, COALESCE(storage_used_bytes, 0) + (v_new - v_old))
             WHERE id = NEW.workspace_id;
        END IF;
        RETURN NULL;
    END IF;

    IF TG_OP IN ('UPDATE', 'DELETE') AND v_old <> 0 THEN
        UPDATE workspaces
           SET storage_used_bytes = GREATEST(0, COALESCE(storage_used_bytes, 0) - v_old)
         WHERE id = OLD.workspace_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND v_new <> 0 THEN
        UPDATE workspaces
           SET storage_used_bytes = GREATEST(0, COALESCE(storage_used_bytes, 0) + v_new)
         WHERE id = NEW.workspace_id;
    END IF;
    RETURN NULL;  -- AFTER trigger: result ignored
END;
$$;

CREATE TRIGGER trigger_update_workspace_storage
    AFTER INSERT OR UPDATE OF size_bytes, workspace_id OR DELETE ON attachments
    FOR EACH ROW
    EXECUTE FUNCTION update_workspace_storage();

-- Cleanup expired presence records (run periodically)
CREATE OR REPLACE FUNCTION cleanup_expired_presence()
RETURNS INTEGER AS $$
DECLARE
    deleted_count INTEGER;
BEGIN
    DELETE FROM presence
    WHERE expires_at < NOW() OR disconnected_at < NOW() - INTERVAL '1 hour';

    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$ LANGUAGE plpgsql;

-- Cleanup expired invitations
CREATE OR REPLACE FUNCTION cleanup_expired_invitations()
RETURNS INTEGER AS $$
DECLARE
    updated_count INTEGER;
BEGIN
    UPDATE invitations
    SET status = 'expired'
    WHERE status = 'pending' AND expires_at < NOW();

    GET DIAGNOSTICS updated_count = ROW_COUNT;
    RETURN updated_count;
END;
$$ LANGUAGE plpgsql;

-- ==============================================================================
-- DATA RETENTION (seed section 3.4)
-- ==============================================================================

-- Archive old document versions (keep the last p_keep per document).
-- Returns the number of versions removed.
CREATE OR REPLACE FUNCTION archive_old_versions(p_keep integer DEFAULT 10)
RETURNS integer AS $$
DECLARE
    deleted_count integer;
BEGIN
    WITH ranked_versions AS (
        SELECT v.id,
               ROW_NUMBER() OVER (PARTITION BY v.document_id ORDER BY v.version_number DESC) AS rn
        FROM document_versions v
    )
    DELETE FROM document_versions dv
    WHERE dv.id IN (SELECT r.id FROM ranked_versions r WHERE r.rn > p_keep);

    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$ LANGUAGE plpgsql;

-- Delete old sync_log entries (keep 90 days by default).  Was a bare DELETE in
-- the draft, which would only have run once, at migration time.
CREATE OR REPLACE FUNCTION cleanup_old_sync_log(p_keep interval DEFAULT INTERVAL '90 days')
RETURNS integer AS $$
DECLARE
    deleted_count integer;
BEGIN
    DELETE FROM sync_log s WHERE s."timestamp" < NOW() - p_keep;

    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$ LANGUAGE plpgsql;

-- ==============================================================================
-- VIEWS (Performance Optimization)
-- ==============================================================================

-- Active documents view (most common query).  Explicit column list (a d.* is
-- frozen at creation time and would drag yjs_state/search_vector into every
-- listing); LEFT JOIN users because created_by is nulled when a user is deleted.
CREATE VIEW active_documents AS
SELECT
    d.id,
    d.workspace_id,
    d.title,
    d.type,
    d.content,
    d.content_hash,
    d.metadata,
    d.settings,
    d.yjs_clock,
    d.view_count,
    d.last_viewed_at,
    d.last_edited_at,
    d.created_by,
    d.updated_by,
    d.created_at,
    d.updated_at,
    d.deleted,
    d.deleted_at,
    d.deleted_by,
    u.display_name as creator_name,
    u.avatar_url as creator_avatar,
    w.name as workspace_name,
    (SELECT COUNT(*) FROM comments c WHERE c.document_id = d.id AND c.deleted_at IS NULL) as comment_count,
    (SELECT COUNT(*) FROM document_versions dv WHERE dv.document_id = d.id) as version_count
FROM documents d
LEFT JOIN users u ON d.created_by = u.id
JOIN workspaces w ON d.workspace_id = w.id
WHERE d.deleted = FALSE AND w.deleted_at IS NULL;

-- User workspace summary
CREATE VIEW user_workspace_summary AS
SELECT
    wm.user_id,
    wm.workspace_id,
    w.name as workspace_name,
    w.owner_id,
    wm.role,
    wm.joined_at,
    COUNT(DISTINCT d.id) as document_count,
    MAX(d.updated_at) as last_activity,
    w.storage_used_bytes,
    w.storage_limit_bytes
FROM workspace_members wm
JOIN workspaces w ON wm.workspace_id = w.id
LEFT JOIN documents d ON d.workspace_id = w.id AND d.deleted = FALSE
WHERE w.deleted_at IS NULL AND wm.is_active = TRUE
GROUP BY wm.user_id, wm.workspace_id, w.name, w.owner_id, wm.role, wm.joined_at, w.storage_used_bytes, w.storage_limit_bytes;

-- ==============================================================================
-- MATERIALIZED VIEWS (For Analytics)
-- ==============================================================================

-- Daily active users (refresh periodically)
CREATE MATERIALIZED VIEW daily_active_users AS
SELECT
    DATE(last_seen_at) as activity_date,
    COUNT(DISTINCT id) as active_users
FROM users
WHERE last_seen_at >= NOW() - INTERVAL '90 days'
GROUP BY DATE(last_seen_at)
ORDER BY activity_date DESC;

-- UNIQUE (same name and column as the draft's plain index): required by
-- REFRESH MATERIALIZED VIEW CONCURRENTLY.
CREATE UNIQUE INDEX idx_dau_date ON daily_active_users(activity_date DESC);

-- Workspace activity summary.  Same columns as the draft; the counts are
-- computed per workspace with LATERAL subqueries instead of one
-- documents x members x comments join (which multiplied rows and needed
-- COUNT(DISTINCT) to undo it).
CREATE MATERIALIZED VIEW workspace_activity_summary AS
SELECT
    w.id as workspace_id,
    w.name as workspace_name,
    w.owner_id,
    ds.total_documents,
    ds.recent_documents,
    ms.member_count,
    cs.total_comments,
    ds.last_activity
FROM workspaces w
CROSS JOIN LATERAL (
    SELECT COUNT(*) as total_documents,
           COUNT(*) FILTER (WHERE d.updated_at >= NOW() - INTERVAL '7 days') as recent_documents,
           MAX(d.updated_at) as last_activity
    FROM documents d
    WHERE d.workspace_id = w.id AND d.deleted = FALSE
) ds
CROSS JOIN LATERAL (
    SELECT COUNT(*) as member_count
    FROM workspace_members wm
    WHERE wm.workspace_id = w.id AND wm.is_active = TRUE
) ms
CROSS JOIN LATERAL (
    SELECT COUNT(*) as total_comments
    FROM comments c
    JOIN documents d ON d.id = c.document_id
    WHERE d.workspace_id = w.id AND d.deleted = FALSE AND c.deleted_at IS NULL
) cs
WHERE w.deleted_at IS NULL;

-- UNIQUE (same name and column as the draft's plain index): required by
-- REFRESH MATERIALIZED VIEW CONCURRENTLY.
CREATE UNIQUE INDEX idx_workspace_activity_workspace ON workspace_activity_summary(workspace_id);

-- Refresh materialized views (run via cron or manually, as the owner)
-- REFRESH MATERIALIZED VIEW CONCURRENTLY daily_active_users;
-- REFRESH MATERIALIZED VIEW CONCURRENTLY workspace_activity_summary;

-- ==============================================================================
-- SECURITY POLICIES (Row-Level Security)
--
-- User-scoped access is keyed on the transaction-local setting
-- app.current_user_id.  Unset/empty -> NULL -> matches nothing (no error).
-- ==============================================================================

-- Workspaces the current application user is an ACTIVE member of (workspace
-- not soft-deleted), optionally restricted to some roles.  SECURITY DEFINER so
-- that policies on workspace_members can use it without recursing into
-- themselves.
CREATE OR REPLACE FUNCTION app_user_workspace_ids(p_roles workspace_role[] DEFAULT NULL)
RETURNS SETOF uuid
LANGUAGE sql
STABLE
ROWS 10
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT wm.workspace_id
    FROM workspace_members wm
    JOIN workspaces w ON w.id = wm.workspace_id
    WHERE wm.user_id = NULLIF(current_setting('app.current_user_id', true), '')::uuid
      AND wm.is_active = TRUE
      AND w.deleted_at IS NULL
      AND (p_roles IS NULL OR wm.role = ANY (p_roles))
$$;

-- Enable RLS on sensitive tables; FORCE so that the table owner is subject to
-- it too (superusers and BYPASSRLS roles still bypass it).
ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE comments ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspace_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents FORCE ROW LEVEL SECURITY;
ALTER TABLE comments FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace_members FORCE ROW LEVEL SECURITY;

-- Documents: Users can only access documents in workspaces they are an active member of
CREATE POLICY documents_access_policy ON documents
    FOR ALL
    USING (workspace_id IN (SELECT app_user_workspace_ids()))
    WITH CHECK (workspace_id IN (SELECT app_user_workspace_ids()));

-- Comments: same access as the documents they belong to
CREATE POLICY comments_access_policy ON comments
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

-- Workspace members: a user sees their own memberships and all memberships of
-- workspaces they are an active member of ...
CREATE POLICY workspace_members_select_policy ON workspace_members
    FOR SELECT
    USING (
        user_id = NULLIF(current_setting('app.current_user_id', true), '')::uuid
        OR workspace_id IN (SELECT app_user_workspace_ids())
    );

-- ... only active owners/admins add, change or remove memberships ...
CREATE POLICY workspace_members_manage_policy ON workspace_members
    FOR ALL
    USING (workspace_id IN (SELECT app_user_workspace_ids(ARRAY['owner', 'admin']::workspace_role[])))
    WITH CHECK (workspace_id IN (SELECT app_user_workspace_ids(ARRAY['owner', 'admin']::workspace_role[])));

-- ... and anyone may leave a workspace.
CREATE POLICY workspace_members_leave_policy ON workspace_members
    FOR DELETE
    USING (user_id = NULLIF(current_setting('app.current_user_id', true), '')::uuid);

-- The server's own internal work (compaction, feeds, maintenance) is not
-- user-scoped.
CREATE POLICY documents_service_policy ON documents
    FOR ALL TO collab_service USING (true) WITH CHECK (true);
CREATE POLICY comments_service_policy ON comments
    FOR ALL TO collab_service USING (true) WITH CHECK (true);
CREATE POLICY workspace_members_service_policy ON workspace_members
    FOR ALL TO collab_service USING (true) WITH CHECK (true);

-- ==============================================================================
-- PRIVILEGES
-- ==============================================================================
GRANT USAGE ON SCHEMA public TO collab_user, collab_service;

GRANT SELECT, INSERT, UPDATE, DELETE ON
    users, workspaces, workspace_members, documents, document_versions, attachments, comments,
    presence, sync_log, invitations, mindmaps, api_keys, usage_metrics
TO collab_user, collab_service;

GRANT USAGE, SELECT ON SEQUENCE sync_log_cursor_seq TO collab_user, collab_service;

GRANT SELECT ON active_documents, user_workspace_summary, daily_active_users, workspace_activity_summary
TO collab_service;

-- Views run with the privileges of their owner, which would bypass RLS.
-- security_invoker (PG15+) makes them respect the caller's RLS; only then are
-- they granted to collab_user.  On PG13/14 collab_user cannot read them.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 150000 THEN
        EXECUTE 'ALTER VIEW active_documents SET (security_invoker = true)';
        EXECUTE 'ALTER VIEW user_workspace_summary SET (security_invoker = true)';
        EXECUTE 'GRANT SELECT ON active_documents, user_workspace_summary TO collab_user';
    END IF;
END
$$;

-- Tables and sequences created later by the migration role (002_* ...) get the
-- same privileges automatically.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO collab_user, collab_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO collab_user, collab_service;

-- ==============================================================================
-- PERFORMANCE MONITORING
-- ==============================================================================

-- Slow query logging (configure in postgresql.conf)
-- log_min_duration_statement = 1000  -- Log queries taking > 1 second
-- pg_stat_statements: created (optionally) at the top of this file.

-- ==============================================================================
-- DATABASE FUNCTIONS (API Helpers)
-- ==============================================================================

-- Get user's workspaces with permissions.  Counts are per workspace (no
-- documents x members cross product); member_count counts ACTIVE members only.
CREATE OR REPLACE FUNCTION get_user_workspaces(p_user_id UUID)
RETURNS TABLE (
    workspace_id UUID,
    workspace_name VARCHAR,
    role workspace_role,
    permissions JSONB,
    is_owner BOOLEAN,
    document_count BIGINT,
    member_count BIGINT
)
LANGUAGE sql
STABLE
AS $$
    SELECT
        w.id,
        w.name::varchar,
        wm.role,
        wm.permissions,
        (w.owner_id = p_user_id),
        (SELECT COUNT(*) FROM documents d WHERE d.workspace_id = w.id AND d.deleted = FALSE),
        (SELECT COUNT(*) FROM workspace_members m WHERE m.workspace_id = w.id AND m.is_active = TRUE)
    FROM workspaces w
    JOIN workspace_members wm ON wm.workspace_id = w.id
    WHERE wm.user_id = p_user_id
      AND w.deleted_at IS NULL
      AND wm.is_active = TRUE
    ORDER BY w.name, w.id
$$;

-- Search documents with full-text search (title weight A > content B > tags C)
CREATE OR REPLACE FUNCTION search_documents(
    p_workspace_id UUID,
    p_query TEXT,
    p_limit INTEGER DEFAULT 20,
    p_offset INTEGER DEFAULT 0
)
RETURNS TABLE (
    id UUID,
    title VARCHAR,
    content TEXT,
    rank REAL,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ
)
LANGUAGE sql
STABLE
AS $$
    SELECT
        d.id,
        d.title::varchar,
        d.content,
        ts_rank(d.search_vector, q.query),
        d.created_at,
        d.updated_at
    FROM documents d
    CROSS JOIN websearch_to_tsquery('english'::regconfig, p_query) AS q(query)
    WHERE d.workspace_id = p_workspace_id
      AND d.deleted = FALSE
      AND d.search_vector @@ q.query
    ORDER BY ts_rank(d.search_vector, q.query) DESC, d.updated_at DESC, d.id
    LIMIT p_limit OFFSET p_offset
$$;

-- ==============================================================================
-- INITIALIZATION COMPLETE
-- ==============================================================================
