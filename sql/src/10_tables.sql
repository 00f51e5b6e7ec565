-- ---------------------------------------------------------------------------
-- Tables.  df.instances, df.nodes and df.vars keep pg_durable's columns, in
-- its order; durable's own columns come after them.
-- ---------------------------------------------------------------------------

-- The recorded schema version: one row per install or upgrade applied.
CREATE TABLE df.schema_version (
    version     text        NOT NULL PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    kind        text        NOT NULL CHECK (kind IN ('install', 'upgrade'))
);

-- Owner-only settings (never custom GUCs: SECURITY DEFINER code must read
-- nothing a user can set).  Test hooks live here too.
CREATE TABLE df.settings (
    key    text NOT NULL PRIMARY KEY,
    value  text
);
INSERT INTO df.settings (key, value) VALUES
    ('enable_superuser_instances', 'off'),
    ('list_instances_max_limit', '1000'),
    ('lease_seconds', '30'),
    ('loop_min_iteration_seconds', '1'),
    ('loop_max_iterations', '100000'),
    ('statement_timeout_ms', '0'),
    ('max_user_connections', '10'),       -- per worker, per submitter role and database
    ('max_result_bytes', '67108864'),     -- 0.2.0: a larger SQL step result fails the step
    ('max_id_attempts', '10'),
    ('id_space', '4294967296'),           -- tests shrink it to force collisions
    ('fake_now', NULL),                   -- tests set it to fake df._now()
    ('fault_points', NULL);               -- tests arm worker fault points here

-- Monotonic high-water mark behind every new row's first resource_version.
CREATE SEQUENCE df.version_hwm AS bigint;

CREATE TABLE df.instances (
    id            varchar(8)  NOT NULL,
    label         text,
    root_node     varchar(8)  NOT NULL,
    status        text        DEFAULT 'pending',
    submitted_by  regrole     NOT NULL,
    database      text,
    created_at    timestamptz DEFAULT pg_catalog.now(),
    updated_at    timestamptz DEFAULT pg_catalog.now(),
    completed_at  timestamptz,
    -- durable's own columns
    resource_version  bigint  NOT NULL,
    transaction_mode  text    NOT NULL DEFAULT 'caller',
    output            text,          -- root result (column order kept) or the failure message
    execution_count   bigint  NOT NULL DEFAULT 1,  -- 1 + root loop restarts
    labels            jsonb   NOT NULL DEFAULT '{}'::jsonb,   -- 0.2.0: string values, for selection
    annotations       jsonb   NOT NULL DEFAULT '{}'::jsonb,   -- 0.2.0: any JSON, for tools
    CONSTRAINT instances_pkey PRIMARY KEY (id),
    CONSTRAINT instances_id_format_chk CHECK (id ~ '^[0-9a-f]{8}$'),
    CONSTRAINT instances_root_node_format_chk CHECK (root_node ~ '^[0-9a-f]{8}$'),
    CONSTRAINT instances_status_chk CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    CONSTRAINT instances_transaction_mode_chk CHECK (transaction_mode IN ('caller', 'new')),
    CONSTRAINT instances_completed_at_chk CHECK (completed_at IS NULL OR status = 'completed'),
    CONSTRAINT instances_identity_key UNIQUE (id, submitted_by),
    CONSTRAINT instances_labels_chk CHECK (pg_catalog.jsonb_typeof(labels) = 'object'),
    CONSTRAINT instances_annotations_chk CHECK (pg_catalog.jsonb_typeof(annotations) = 'object')
);
CREATE INDEX idx_instances_status ON df.instances (status, created_at DESC, id);
CREATE INDEX idx_instances_created_at ON df.instances (created_at DESC, id);
CREATE INDEX idx_instances_label ON df.instances (label, created_at DESC, id) WHERE label IS NOT NULL;
CREATE INDEX idx_instances_submitted_by ON df.instances (submitted_by, created_at DESC, id);

CREATE TABLE df.nodes (
    id              varchar(8)  NOT NULL,
    instance_id     varchar(8)  NOT NULL,
    node_type       text        NOT NULL,
    query           text,
    result_name     text,
    left_node       varchar(8),
    right_node      varchar(8),
    status          text        DEFAULT 'pending',
    result          jsonb,
    error           text,
    submitted_by    regrole     NOT NULL,
    database        text,
    created_at      timestamptz DEFAULT pg_catalog.now(),
    updated_at      timestamptz DEFAULT pg_catalog.now(),
    status_details  jsonb,
    -- durable's own columns
    resource_version  bigint     NOT NULL,
    result_text       text,          -- the result as JSON text with column order kept
    parent_id         varchar(8),    -- structural parent (NULL for the root)
    slot              text,          -- where it hangs under its parent
    wake_at           timestamptz,   -- timer deadline of a running SLEEP/WAIT_SCHEDULE/SIGNAL
    state             jsonb,         -- engine bookkeeping (loop iteration, carried names, ...)
    CONSTRAINT nodes_pkey PRIMARY KEY (instance_id, id),
    CONSTRAINT nodes_id_format_chk CHECK (id ~ '^[0-9a-f]{8}$'),
    CONSTRAINT nodes_left_format_chk CHECK (left_node IS NULL OR left_node ~ '^[0-9a-f]{8}$'),
    CONSTRAINT nodes_right_format_chk CHECK (right_node IS NULL OR right_node ~ '^[0-9a-f]{8}$'),
    CONSTRAINT nodes_node_type_chk CHECK (node_type IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE',
        'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL')),
    CONSTRAINT nodes_result_name_chk CHECK (result_name IS NULL OR result_name ~ '^[a-zA-Z_][a-zA-Z0-9_]*$'),
    CONSTRAINT nodes_status_chk CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    CONSTRAINT nodes_result_chk CHECK (result IS NULL OR status IN ('completed', 'failed')),
    CONSTRAINT nodes_slot_chk CHECK ((parent_id IS NULL) = (slot IS NULL)),
    CONSTRAINT nodes_structure_chk CHECK (CASE node_type
        WHEN 'THEN' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
        WHEN 'RACE' THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NULL
        WHEN 'JOIN' THEN left_node IS NOT NULL AND right_node IS NOT NULL
        WHEN 'IF'   THEN left_node IS NOT NULL AND right_node IS NOT NULL AND query IS NOT NULL
        WHEN 'LOOP' THEN left_node IS NOT NULL AND right_node IS NULL
        ELSE left_node IS NULL AND right_node IS NULL AND query IS NOT NULL
    END),
    CONSTRAINT nodes_instance_fkey FOREIGN KEY (instance_id, submitted_by)
        REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT nodes_left_same_instance_fkey FOREIGN KEY (instance_id, left_node)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT nodes_right_same_instance_fkey FOREIGN KEY (instance_id, right_node)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT nodes_parent_same_instance_fkey FOREIGN KEY (instance_id, parent_id)
        REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX idx_nodes_instance ON df.nodes (instance_id);
-- Room on each page for the updates a step makes to its nodes (0.3.0): they stay HOT (no new index
-- entries) where a full page would move the row.
ALTER TABLE df.nodes SET (fillfactor = 60);

ALTER TABLE df.instances ADD CONSTRAINT instances_root_node_same_instance_fkey
    FOREIGN KEY (id, root_node) REFERENCES df.nodes (instance_id, id) DEFERRABLE INITIALLY DEFERRED;

-- Per-role variables, captured by df.start.
CREATE TABLE df.vars (
    name   text    NOT NULL,
    value  text,
    owner  regrole NOT NULL DEFAULT pg_catalog.quote_ident(current_user)::regrole,
    CONSTRAINT vars_pkey PRIMARY KEY (owner, name)
);

-- The variables an instance captured at start; fixed for its whole run.
CREATE TABLE df.instance_vars (
    instance_id  varchar(8) NOT NULL REFERENCES df.instances (id) ON DELETE CASCADE,
    name         text       NOT NULL,
    value        text       NOT NULL,
    CONSTRAINT instance_vars_pkey PRIMARY KEY (instance_id, name)
);

-- Signals are durable rows: queued until a wait consumes them.
CREATE TABLE df.signals (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   varchar(8)  NOT NULL,
    signal_name   text        NOT NULL,
    data          text        NOT NULL,     -- JSON text
    submitted_by  regrole     NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    consumed_by   varchar(8),               -- node that received it
    consumed_at   timestamptz,
    CONSTRAINT signals_instance_fkey FOREIGN KEY (instance_id, submitted_by)
        REFERENCES df.instances (id, submitted_by) ON DELETE CASCADE
);
CREATE INDEX idx_signals_pending ON df.signals (instance_id, signal_name, id) WHERE consumed_at IS NULL;

-- Scheduling and leases, apart from the user-visible rows so that a
-- heartbeat never bumps a resource_version.  One row per unfinished instance.
CREATE TABLE df.instance_queue (
    instance_id       varchar(8)  NOT NULL PRIMARY KEY REFERENCES df.instances (id) ON DELETE CASCADE,
    wake_at           timestamptz,             -- due for a worker at; NULL = waiting on a signal only
    lease_token       uuid,                    -- the holder's fencing token
    lease_worker      uuid,
    lease_expires_at  timestamptz,
    claims            integer     NOT NULL DEFAULT 0,
    nudges            bigint      NOT NULL DEFAULT 0   -- bumped by cancel/signal/run: a wakeup the holder must not lose
);
CREATE INDEX idx_instance_queue_wake ON df.instance_queue (wake_at) WHERE wake_at IS NOT NULL;

-- One row per SQL step attempt in flight: the secret that authorises its
-- checkpoint (stored hashed) and the step's backend.
CREATE TABLE df.attempts (
    instance_id   varchar(8)  NOT NULL,
    node_id       varchar(8)  NOT NULL,
    lease_token   uuid        NOT NULL,
    secret_hash   bytea       NOT NULL,
    backend_pid   integer,
    backend_start timestamptz,                 -- with the pid, identifies the step's backend
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    bind_hash     bytea,                       -- 0.3.0: one-use proof that binds the attempt to its backend
    CONSTRAINT attempts_pkey PRIMARY KEY (instance_id, node_id),
    CONSTRAINT attempts_node_fkey FOREIGN KEY (instance_id, node_id)
        REFERENCES df.nodes (instance_id, id) ON DELETE CASCADE
);
-- No index on backend_pid (0.3.0): binding an attempt to its backend is then a
-- HOT update, and the table holds only the attempts in flight.
ALTER TABLE df.attempts SET (fillfactor = 50);
ALTER TABLE df.instance_queue SET (fillfactor = 50);  -- claims and leases update it all the time

-- Live workers (heartbeats), for leases and for notifying only when someone listens.
CREATE TABLE df.workers (
    worker_id     uuid        NOT NULL PRIMARY KEY,
    hostname      text,
    pid           integer,
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    last_seen_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    idle          boolean     NOT NULL DEFAULT true
);

-- Sessions waiting for instances to finish (0.2.0): a finishing instance
-- notifies only when someone waits.  A row names its own backend only.
-- Unlogged (0.3.0): a row lives no longer than its session, and registering
-- costs no disk flush.
CREATE UNLOGGED TABLE df.waiters (
    pid            integer     NOT NULL PRIMARY KEY,
    backend_start  timestamptz,
    since          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

-- One-use identity tickets.  A SECURITY INVOKER wrapper inserts one with the
-- caller's own privileges; a trigger stamps who really inserted it; the
-- SECURITY DEFINER implementation consumes it in the same transaction.  This
-- is how definer code learns its caller (current_user there is the owner).
CREATE UNLOGGED TABLE df.caller_tickets (
    id      uuid      NOT NULL PRIMARY KEY,
    caller  regrole   NOT NULL,
    xid     xid8      NOT NULL
);
