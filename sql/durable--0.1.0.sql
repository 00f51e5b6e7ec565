-- durable install script.  Generated from sql/src/*.sql by tools/build_sql.py;
-- run by `durable install` in one transaction under an advisory lock.
-- Every object reference is schema-qualified; every function pins search_path.

-- Roles are cluster-wide: create them once, reuse them in every database.
-- durable_owner owns the df schema and its SECURITY DEFINER functions and
-- can never log in; durable_worker is granted to the login roles workers use.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'durable_owner') THEN
        CREATE ROLE durable_owner NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'durable_worker') THEN
        CREATE ROLE durable_worker NOLOGIN;
    END IF;
    -- A non-superuser installer (managed services) needs to act as the owner.
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'durable_owner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT durable_owner TO %I', current_user);
    END IF;
END
$roles$;

CREATE SCHEMA df AUTHORIZATION durable_owner;
REVOKE ALL ON SCHEMA df FROM PUBLIC;
GRANT USAGE ON SCHEMA df TO durable_worker;

-- Everything below is owned by durable_owner (operators excepted: see the end).
SET LOCAL ROLE durable_owner;

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
    CONSTRAINT instances_pkey PRIMARY KEY (id),
    CONSTRAINT instances_id_format_chk CHECK (id ~ '^[0-9a-f]{8}$'),
    CONSTRAINT instances_root_node_format_chk CHECK (root_node ~ '^[0-9a-f]{8}$'),
    CONSTRAINT instances_status_chk CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    CONSTRAINT instances_transaction_mode_chk CHECK (transaction_mode IN ('caller', 'new')),
    CONSTRAINT instances_completed_at_chk CHECK (completed_at IS NULL OR status = 'completed'),
    CONSTRAINT instances_identity_key UNIQUE (id, submitted_by)
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
    claims            integer     NOT NULL DEFAULT 0
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
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT attempts_pkey PRIMARY KEY (instance_id, node_id),
    CONSTRAINT attempts_node_fkey FOREIGN KEY (instance_id, node_id)
        REFERENCES df.nodes (instance_id, id) ON DELETE CASCADE
);
CREATE INDEX idx_attempts_backend ON df.attempts (backend_pid);

-- Live workers (heartbeats), for leases and for notifying only when someone listens.
CREATE TABLE df.workers (
    worker_id     uuid        NOT NULL PRIMARY KEY,
    hostname      text,
    pid           integer,
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    last_seen_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    idle          boolean     NOT NULL DEFAULT true
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

-- ---------------------------------------------------------------------------
-- Core helpers: settings, time, versions, caller identity, errors.
-- SQLSTATEs of class DF (docs/errors.md lists them all):
--   DF001 invalid input          DF002 invalid graph        DF003 not found or access denied
--   DF004 conflict               DF005 submitter refused    DF006 id space exhausted
--   DF007 not supported          DF008 instance finished    DF009 limit exceeded
--   DF010 invalid cursor         DF011 wait timeout         DF012 schema version
--   DF013 inside a workflow      DF014 lease lost           DF015 step failed
-- ---------------------------------------------------------------------------

CREATE FUNCTION df._setting(p_key text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT s.value FROM df.settings AS s WHERE s.key = p_key $$;

-- The one clock seam: transaction time, unless a test fakes it.
CREATE FUNCTION df._now() RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT COALESCE((SELECT s.value::timestamptz FROM df.settings AS s WHERE s.key = 'fake_now'), pg_catalog.now()) $$;

-- First resource_version of a new row: above anything an earlier holder of
-- the same id could have reached (microseconds of the real clock, never
-- now() or the fake clock), kept monotonic against clock steps.
CREATE FUNCTION df._initial_version() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_clock bigint := (extract(epoch FROM pg_catalog.clock_timestamp()) * 1000000)::bigint;
    v_next  bigint := pg_catalog.nextval('df.version_hwm');
BEGIN
    IF v_clock > v_next THEN
        PERFORM pg_catalog.setval('df.version_hwm', v_clock);
        RETURN v_clock;
    END IF;
    RETURN v_next;
END
$$;

-- Every change to an instance or node advances its resource_version by exactly one.
CREATE FUNCTION df._bump_version() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.resource_version := df._initial_version();
    ELSE
        NEW.resource_version := OLD.resource_version + 1;
        NEW.updated_at := pg_catalog.now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER instances_version BEFORE INSERT OR UPDATE ON df.instances
    FOR EACH ROW EXECUTE FUNCTION df._bump_version();
CREATE TRIGGER nodes_version BEFORE INSERT OR UPDATE ON df.nodes
    FOR EACH ROW EXECUTE FUNCTION df._bump_version();

-- A finished instance never changes state again.
CREATE FUNCTION df._guard_terminal() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'instance % is already %', OLD.id, OLD.status USING ERRCODE = 'DF008';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER instances_terminal BEFORE UPDATE OF status ON df.instances
    FOR EACH ROW EXECUTE FUNCTION df._guard_terminal();

-- Stamp who really inserted a ticket.  SECURITY INVOKER on purpose: here
-- current_user is the inserting role, whatever SET ROLE or definer function
-- it came through; the row's own values are ignored.
CREATE FUNCTION df._stamp_ticket() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.caller := pg_catalog.quote_ident(current_user)::regrole;
    NEW.xid := pg_catalog.pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER caller_tickets_stamp BEFORE INSERT OR UPDATE ON df.caller_tickets
    FOR EACH ROW EXECUTE FUNCTION df._stamp_ticket();

-- Called by the SECURITY INVOKER wrappers: leave a ticket for the definer code.
CREATE FUNCTION df._ticket() RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid := pg_catalog.gen_random_uuid();
BEGIN
    INSERT INTO df.caller_tickets (id, caller, xid) VALUES (v_id, 0::oid::regrole, '0'::xid8);
    RETURN v_id;
END
$$;

-- Consume a ticket left in this very transaction: the caller's true identity.
CREATE FUNCTION df._caller(p_ticket uuid) RETURNS regrole
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller regrole;
BEGIN
    DELETE FROM df.caller_tickets AS t
     WHERE t.id = p_ticket AND t.xid = pg_catalog.pg_current_xact_id()
    RETURNING t.caller INTO v_caller;
    IF v_caller IS NULL THEN
        RAISE EXCEPTION 'durable: invalid caller ticket' USING ERRCODE = 'DF005';
    END IF;
    RETURN v_caller;
END
$$;

-- Why a role may not submit workflows, or NULL when it may.  Checked at
-- start and again at every attempt: superusers (unless enabled), BYPASSRLS
-- roles, the owner and worker roles, and any member of one of them.
CREATE FUNCTION df._submitter_refusal(p_role regrole) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r pg_catalog.pg_roles%ROWTYPE;
    v_name text;
BEGIN
    SELECT * INTO r FROM pg_catalog.pg_roles WHERE oid = p_role::oid;
    IF NOT FOUND THEN
        RETURN 'submitted_by role no longer exists in pg_roles';
    END IF;
    v_name := r.rolname;
    IF NOT r.rolcanlogin THEN
        RETURN pg_catalog.format('current_user "%s" does not have LOGIN privilege. '
            'durable runs workflow steps as the submitting role, which must be able to log in.', v_name);
    END IF;
    IF r.rolsuper THEN
        IF COALESCE(df._setting('enable_superuser_instances'), 'off') <> 'on' THEN
            RETURN pg_catalog.format('durable: superuser instances are disabled. current_user "%s" is a superuser, '
                'but the enable_superuser_instances setting is off. Set it to on in df.settings to allow this.', v_name);
        END IF;
        RETURN NULL;
    END IF;
    IF r.rolbypassrls THEN
        RETURN pg_catalog.format('durable: role "%s" has BYPASSRLS and cannot submit workflows', v_name);
    END IF;
    IF pg_catalog.pg_has_role(p_role::oid, 'durable_owner', 'MEMBER')
       OR pg_catalog.pg_has_role(p_role::oid, 'durable_worker', 'MEMBER') THEN
        RETURN pg_catalog.format('durable: role "%s" is (a member of) the durable owner or worker role '
            'and cannot submit workflows', v_name);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS s
                WHERE (s.rolsuper OR s.rolbypassrls) AND s.oid <> p_role::oid
                  AND pg_catalog.pg_has_role(p_role::oid, s.oid, 'MEMBER')) THEN
        RETURN pg_catalog.format('durable: role "%s" is a member of a superuser or BYPASSRLS role '
            'and cannot submit workflows', v_name);
    END IF;
    RETURN NULL;
END
$$;

SET LOCAL ROLE durable_owner;
CREATE FUNCTION df.seq(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION df.as_op(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION df.join(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION df.race(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION df.if_then_op(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION df.if_else_op(a text, b text) RETURNS text LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION df.loop_prefix_op(a text) RETURNS text LANGUAGE sql AS $$ SELECT a $$;
CREATE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL, headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30) RETURNS text LANGUAGE sql AS $$ SELECT url $$;
CREATE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL, headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30) RETURNS text LANGUAGE sql AS $$ SELECT url $$;
CREATE FUNCTION df.metrics() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
RESET ROLE;

-- ---------------------------------------------------------------------------
-- Row-level security, grants, df.grant_usage / df.revoke_usage.
-- Users write nothing directly: instances and nodes change only through
-- SECURITY DEFINER functions that learn the caller from a ticket.  They read
-- their own rows under RLS.
-- ---------------------------------------------------------------------------

ALTER TABLE df.instances ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.vars ENABLE ROW LEVEL SECURITY;
ALTER TABLE df.signals ENABLE ROW LEVEL SECURITY;

CREATE POLICY instances_user_isolation ON df.instances FOR ALL
    USING (submitted_by = pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (submitted_by = pg_catalog.quote_ident(current_user)::regrole);
CREATE POLICY nodes_user_isolation ON df.nodes FOR ALL
    USING (submitted_by = pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (submitted_by = pg_catalog.quote_ident(current_user)::regrole);
CREATE POLICY vars_user_isolation ON df.vars FOR ALL
    USING (owner = pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (owner = pg_catalog.quote_ident(current_user)::regrole);
CREATE POLICY signals_user_isolation ON df.signals FOR ALL
    USING (submitted_by = pg_catalog.quote_ident(current_user)::regrole)
    WITH CHECK (submitted_by = pg_catalog.quote_ident(current_user)::regrole);

-- Workers read everything (they write through their own definer functions).
CREATE POLICY instances_worker_read ON df.instances FOR SELECT TO durable_worker USING (true);
CREATE POLICY nodes_worker_read ON df.nodes FOR SELECT TO durable_worker USING (true);
CREATE POLICY signals_worker_read ON df.signals FOR SELECT TO durable_worker USING (true);

-- BYPASSRLS roles skip WITH CHECK but not triggers: a variable always
-- belongs to the role that wrote it.
CREATE FUNCTION df._stamp_var_owner() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_user <> 'durable_owner' THEN
        NEW.owner := pg_catalog.quote_ident(current_user)::regrole;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER vars_owner BEFORE INSERT OR UPDATE ON df.vars
    FOR EACH ROW EXECUTE FUNCTION df._stamp_var_owner();

REVOKE ALL ON ALL TABLES IN SCHEMA df FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA df FROM PUBLIC;
GRANT SELECT ON df.instances, df.nodes, df.signals, df.instance_queue, df.workers, df.schema_version
    TO durable_worker;

-- Internal helpers that users must not call directly.
REVOKE EXECUTE ON FUNCTION df._setting(text), df._initial_version(), df._submitter_refusal(regrole)
    FROM PUBLIC;

CREATE FUNCTION df.grant_usage(p_role text, include_http boolean DEFAULT false, with_grant boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_opt text := CASE WHEN with_grant THEN ' WITH GRANT OPTION' ELSE '' END;
BEGIN
    IF p_role IS NULL THEN
        RAISE EXCEPTION 'p_role cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA df TO %I%s', p_role, v_opt);
    EXECUTE format('GRANT SELECT ON df.instances, df.nodes, df.signals TO %I%s', p_role, v_opt);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON df.vars TO %I%s', p_role, v_opt);
    EXECUTE format('GRANT INSERT ON df.caller_tickets TO %I%s', p_role, v_opt);
    IF include_http THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer), '
                       'df.http_multipart(text, text, jsonb, jsonb, integer) TO %I%s', p_role, v_opt);
    END IF;
    IF with_grant THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text), '
                       'df.metrics() TO %I WITH GRANT OPTION', p_role);
    END IF;
    RAISE NOTICE 'pg_durable: granted df usage privileges to "%"', p_role;
END
$$;

CREATE FUNCTION df.revoke_usage(p_role text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_role IS NULL THEN
        RAISE EXCEPTION 'p_role cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    EXECUTE format('REVOKE ALL ON df.instances, df.nodes, df.signals, df.vars, df.caller_tickets FROM %I CASCADE',
                   p_role);
    BEGIN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer), '
                       'df.http_multipart(text, text, jsonb, jsonb, integer) FROM %I CASCADE', p_role);
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text), '
                       'df.metrics() FROM %I CASCADE', p_role);
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    EXECUTE format('REVOKE USAGE ON SCHEMA df FROM %I CASCADE', p_role);
    RAISE NOTICE 'pg_durable: revoked df usage privileges granted by "%" from "%"', current_user, p_role;
END
$$;

REVOKE EXECUTE ON FUNCTION df.grant_usage(text, boolean, boolean), df.revoke_usage(text) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Operators.  Like pg_durable they must resolve under the default
-- search_path: a superuser install puts them in pg_catalog (which pg_dump
-- skips: `durable install` re-creates them after a restore); otherwise they
-- go to public.  All share one precedence, left-associative; prefix @> binds
-- tighter, as PostgreSQL parses any user-defined operator.
-- ---------------------------------------------------------------------------

CREATE FUNCTION df._create_operators_v1() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text := CASE WHEN (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
                          THEN 'pg_catalog' ELSE 'public' END;
    op record;
BEGIN
    FOR op IN SELECT * FROM (VALUES
        ('~>', 'text', 'df.seq'),
        ('|=>', 'text', 'df.as_op'),
        ('&', 'text', 'df.join'),
        ('|', 'text', 'df.race'),
        ('?>', 'text', 'df.if_then_op'),
        ('!>', 'text', 'df.if_else_op'),
        ('@>', NULL, 'df.loop_prefix_op')) AS t(name, lefttype, fn)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_operator AS o
             WHERE o.oprname = op.name AND o.oprnamespace = v_schema::regnamespace
               AND o.oprleft = COALESCE(op.lefttype::regtype, 0) AND o.oprright = 'text'::regtype)
        THEN
            IF op.lefttype IS NULL THEN
                EXECUTE format('CREATE OPERATOR %s.%s (RIGHTARG = text, FUNCTION = %s)', v_schema, op.name, op.fn);
            ELSE
                EXECUTE format('CREATE OPERATOR %s.%s (LEFTARG = text, RIGHTARG = text, FUNCTION = %s)',
                               v_schema, op.name, op.fn);
            END IF;
        END IF;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION df._create_operators_v1() FROM PUBLIC;

RESET ROLE;
SELECT df._create_operators_v1();
