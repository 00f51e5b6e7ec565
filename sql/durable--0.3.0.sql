-- durable install script.  Generated from sql/src/*.sql by tools/build_sql.py;
-- run by `durable install` in one transaction under an advisory lock.
-- Every object reference is schema-qualified; every function pins search_path.

-- Roles are cluster-wide: create them once, reuse them in every database.
-- durable_owner owns the df schema and its SECURITY DEFINER functions and
-- can never log in; durable_worker is granted to the login roles workers use.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'durable_owner') THEN
        CREATE ROLE durable_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'durable_worker') THEN
        CREATE ROLE durable_worker NOLOGIN;
    END IF;
    -- Lets owner code tell a step's backend from a later one that reuses its pid
    -- (pg_stat_activity.backend_start); without it, the pid alone is used.
    BEGIN
        GRANT pg_read_all_stats TO durable_owner;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'durable: could not grant pg_read_all_stats to durable_owner; df.in_workflow() will match by pid only';
    END;
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

-- ---------------------------------------------------------------------------
-- Core helpers: settings, time, versions, caller identity, errors.
-- SQLSTATEs of class DF (docs/errors.md lists them all):
--   DF001 invalid input          DF002 invalid graph        DF003 not found or access denied
--   DF004 conflict               DF005 submitter refused    DF006 id space exhausted
--   DF007 not supported          DF008 instance finished    DF009 limit exceeded
--   DF010 invalid cursor         DF011 wait timeout         DF012 schema version
--   DF013 inside a workflow      DF014 lease lost           DF015 step failed
-- ---------------------------------------------------------------------------

-- PL/pgSQL, not SQL: a SQL function with SET clauses is never inlined and
-- parses and plans its query at every call (about 30 us); PL/pgSQL keeps the plan.
CREATE FUNCTION df._setting(p_key text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT s.value FROM df.settings AS s WHERE s.key = p_key);
END
$$;

-- The one clock seam: transaction time, unless a test fakes it.
-- PL/pgSQL (0.3.0): its plan is cached; a LANGUAGE sql function with a SET
-- clause is planned again at every call, and the worker's calls use it often.
CREATE FUNCTION df._now() RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN COALESCE((SELECT s.value::timestamptz FROM df.settings AS s WHERE s.key = 'fake_now'), pg_catalog.now());
END
$$;

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

-- Every change to an instance or node advances its resource_version by
-- exactly one.  A new row gets its first version here unless its writer gave
-- one (df.start gives all rows of an instance the same df._initial_version()).
-- 0.3.0: the triggers' WHEN skips the call where the statement did the same
-- itself (the worker's writes set resource_version + 1 and updated_at =
-- now()); for any other insert or update the trigger does it.
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

CREATE TRIGGER instances_version BEFORE UPDATE ON df.instances
    FOR EACH ROW WHEN (NEW.resource_version IS DISTINCT FROM OLD.resource_version + 1
                       OR NEW.updated_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION df._bump_version();
CREATE TRIGGER instances_version_new BEFORE INSERT ON df.instances
    FOR EACH ROW WHEN (NEW.resource_version IS NULL) EXECUTE FUNCTION df._bump_version();
CREATE TRIGGER nodes_version BEFORE UPDATE ON df.nodes
    FOR EACH ROW WHEN (NEW.resource_version IS DISTINCT FROM OLD.resource_version + 1
                       OR NEW.updated_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION df._bump_version();
CREATE TRIGGER nodes_version_new BEFORE INSERT ON df.nodes
    FOR EACH ROW WHEN (NEW.resource_version IS NULL) EXECUTE FUNCTION df._bump_version();

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
-- 0.3.0: the WHEN is the function's own test, so an ordinary change of status costs no call.
CREATE TRIGGER instances_terminal BEFORE UPDATE OF status ON df.instances
    FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION df._guard_terminal();

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
    r record;
BEGIN
    -- One read answers every question for an ordinary role (0.3.0: this runs
    -- at every start and every attempt).  Named columns, not pg_roles.*: the
    -- view's join for rolconfig is then left out.
    SELECT a.rolname, a.rolcanlogin, a.rolsuper, a.rolbypassrls,
           pg_catalog.pg_has_role(a.oid, 'durable_owner', 'MEMBER')
               OR pg_catalog.pg_has_role(a.oid, 'durable_worker', 'MEMBER') AS engine_role,
           EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS s
                    WHERE (s.rolsuper OR s.rolbypassrls) AND s.oid <> a.oid
                      AND pg_catalog.pg_has_role(a.oid, s.oid, 'MEMBER')) AS privileged_member
      INTO r
      FROM pg_catalog.pg_roles AS a
     WHERE a.oid = p_role::oid;
    IF NOT FOUND THEN
        RETURN 'submitted_by role no longer exists in pg_roles';
    ELSIF NOT r.rolcanlogin THEN
        RETURN pg_catalog.format('current_user "%s" does not have LOGIN privilege. '
            'durable runs workflow steps as the submitting role, which must be able to log in.', r.rolname);
    ELSIF r.rolsuper THEN
        IF COALESCE(df._setting('enable_superuser_instances'), 'off') <> 'on' THEN
            RETURN pg_catalog.format('durable: superuser instances are disabled. current_user "%s" is a superuser, '
                'but the enable_superuser_instances setting is off. Set it to on in df.settings to allow this.',
                r.rolname);
        END IF;
        RETURN NULL;
    ELSIF r.rolbypassrls THEN
        RETURN pg_catalog.format('durable: role "%s" has BYPASSRLS and cannot submit workflows', r.rolname);
    ELSIF r.engine_role THEN
        RETURN pg_catalog.format('durable: role "%s" is (a member of) the durable owner or worker role '
            'and cannot submit workflows', r.rolname);
    ELSIF r.privileged_member THEN
        RETURN pg_catalog.format('durable: role "%s" is a member of a superuser or BYPASSRLS role '
            'and cannot submit workflows', r.rolname);
    END IF;
    RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------
-- The workflow DSL: builders, operator helpers, envelope parsing and graph
-- flattening.  Builders only build text envelopes (they write nothing); the
-- bytes are pg_durable 0.2.6's (PGD_FIXTURES.md sections 0-2):
--   R-JSON  compact, escapes exactly as PostgreSQL's to_json(text) does;
--   R-KEYS  node_type, left_node, right_node, condition_node, extra_nodes,
--           query, result_name;
--   R-CHILD a composer re-serialises only the top level of an envelope it
--           receives; that envelope's children are copied byte for byte.
-- R-CHILD needs the raw text of each top-level member: the json type (not
-- jsonb) keeps it, so json_each() is our scanner, in C.
-- ---------------------------------------------------------------------------

-- ----- JSON helpers (serde_json's renderings) ------------------------------

-- A JSON number as serde_json prints it after parsing: integers that fit
-- u64/i64 unchanged, everything else through f64 in ryu's shortest form
-- (1.50 -> 1.5, 1e2 -> 100.0, 1e20 -> 1e20).  PostgreSQL's float8 output
-- with extra_float_digits >= 1 gives the same shortest digits.
CREATE FUNCTION df._json_number_v1(p_num text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
AS $$
DECLARE
    m text[];
    v_sign text;
    v_digits text;
    v_exp integer;
    v_len integer;
    v_kk integer;
BEGIN
    IF p_num ~ '^-?[0-9]+$' THEN
        IF p_num = '-0' THEN
            RETURN '-0.0';              -- serde_json reads "-0" as the float -0.0
        END IF;
        IF p_num::numeric BETWEEN -9223372036854775808 AND 18446744073709551615 THEN
            RETURN p_num::numeric::text;
        END IF;
    END IF;
    m := pg_catalog.regexp_match(p_num::double precision::text,
                                 '^(-?)([0-9]+)(?:\.([0-9]+))?(?:e([-+][0-9]+))?$');
    v_sign := m[1];
    v_digits := m[2] || COALESCE(m[3], '');
    v_exp := COALESCE(m[4]::integer, 0) - pg_catalog.length(COALESCE(m[3], ''));
    v_digits := pg_catalog.ltrim(v_digits, '0');
    IF v_digits = '' THEN
        RETURN v_sign || '0.0';
    END IF;
    v_len := pg_catalog.length(v_digits);
    v_digits := pg_catalog.rtrim(v_digits, '0');
    v_exp := v_exp + v_len - pg_catalog.length(v_digits);
    v_len := pg_catalog.length(v_digits);
    v_kk := v_len + v_exp;
    IF v_exp >= 0 AND v_kk <= 16 THEN
        RETURN v_sign || v_digits || pg_catalog.repeat('0', v_exp) || '.0';
    ELSIF v_kk > 0 AND v_kk <= 16 THEN
        RETURN v_sign || pg_catalog.left(v_digits, v_kk) || '.' || pg_catalog.substr(v_digits, v_kk + 1);
    ELSIF v_kk > -5 AND v_kk <= 0 THEN
        RETURN v_sign || '0.' || pg_catalog.repeat('0', -v_kk) || v_digits;
    ELSIF v_len = 1 THEN
        RETURN v_sign || v_digits || 'e' || (v_kk - 1);
    END IF;
    RETURN v_sign || pg_catalog.left(v_digits, 1) || '.' || pg_catalog.substr(v_digits, 2) || 'e' || (v_kk - 1);
END
$$;

-- A jsonb value as serde_json's compact output of it (R-JSONB-IN): jsonb's
-- key order, no spaces, numbers through _json_number_v1.
CREATE FUNCTION df._json_compact_v1(p_value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    CASE pg_catalog.jsonb_typeof(p_value)
    WHEN 'object' THEN
        RETURN '{' || COALESCE((SELECT pg_catalog.string_agg(pg_catalog.to_json(e.key)::text || ':'
                                                             || df._json_compact_v1(e.value), ',' ORDER BY e.o)
                                  FROM pg_catalog.jsonb_each(p_value) WITH ORDINALITY AS e(key, value, o)), '') || '}';
    WHEN 'array' THEN
        RETURN '[' || COALESCE((SELECT pg_catalog.string_agg(df._json_compact_v1(e.value), ',' ORDER BY e.o)
                                  FROM pg_catalog.jsonb_array_elements(p_value) WITH ORDINALITY AS e(value, o)), '')
                   || ']';
    WHEN 'number' THEN
        RETURN df._json_number_v1(p_value::text);
    ELSE
        RETURN p_value::text;           -- strings (same escapes as serde_json), true, false, null
    END CASE;
END
$$;

-- serde_json's description of an unexpected value, for deserialisation
-- errors ("invalid type: <this>, expected a string").
CREATE FUNCTION df._serde_unexpected_v1(p_raw text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_head text := pg_catalog.left(p_raw, 1);
    v_str text;
    v_num text;
    i integer;
BEGIN
    IF v_head = '"' THEN
        -- Rust's Debug rendering of a str.
        v_str := pg_catalog.replace(pg_catalog.replace(p_raw::json #>> '{}', '\', '\\'), '"', '\"');
        v_str := pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(v_str,
                     E'\n', '\n'), E'\r', '\r'), E'\t', '\t');
        FOR i IN 1 .. 127 LOOP
            CONTINUE WHEN i BETWEEN 32 AND 126 OR i IN (9, 10, 13);
            v_str := pg_catalog.replace(v_str, pg_catalog.chr(i), '\u{' || pg_catalog.to_hex(i) || '}');
        END LOOP;
        RETURN 'string "' || v_str || '"';
    ELSIF v_head = '{' THEN
        RETURN 'map';
    ELSIF v_head = '[' THEN
        RETURN 'sequence';
    ELSIF p_raw IN ('true', 'false') THEN
        RETURN 'boolean `' || p_raw || '`';
    ELSIF p_raw = 'null' THEN
        RETURN 'null';
    END IF;
    v_num := df._json_number_v1(p_raw);
    IF v_num ~ '[.e]' THEN
        RETURN 'floating point `' || v_num || '`';
    END IF;
    RETURN 'integer `' || v_num || '`';
END
$$;

-- serde_json's " at line L column C" for an error in member p_member of the
-- top-level object p_text (p_values: the members' raw values in order):
-- p_where 'key' = just after the member's key, 'value_start' = at its value
-- (containers are not consumed), 'value_end' = after its value.  Column
-- counts bytes since the last newline.  Only used on the error path.
CREATE FUNCTION df._serde_position_v1(p_text text, p_values text[], p_member integer, p_where text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pos integer := pg_catalog.strpos(p_text, '{') + 1;
    v_at integer;
    v_prefix text;
    i integer;
BEGIN
    FOR i IN 1 .. p_member LOOP
        v_pos := v_pos + pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_pos), E'^[ \t\n\r,]*'));
        v_pos := v_pos + pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_pos),
                                                                '^"(?:[^"\\]|\\.)*"'));
        IF i = p_member AND p_where = 'key' THEN
            v_at := v_pos;
            EXIT;
        END IF;
        v_pos := v_pos + pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_pos),
                                                                E'^[ \t\n\r]*:[ \t\n\r]*'));
        IF i = p_member AND p_where = 'value_start' THEN
            v_at := v_pos;
            EXIT;
        END IF;
        v_pos := v_pos + pg_catalog.length(p_values[i]);
        v_at := v_pos;
    END LOOP;
    v_prefix := pg_catalog.substr(p_text, 1, v_at - 1);
    RETURN ' at line ' || (1 + pg_catalog.length(v_prefix) - pg_catalog.length(pg_catalog.replace(v_prefix, E'\n', '')))
        || ' column ' || pg_catalog.octet_length(pg_catalog.regexp_replace(v_prefix, E'^.*\n', ''));
END
$$;

-- ----- Helpers that are not workflow steps (fixture X11) --------------------
-- pg_durable refuses, after df.setvar & co ran in a statement, any later
-- non-JSON step argument of that statement.  We refuse only the value the
-- helper actually returned (CONTRACT.md section 9).  The record lives in a
-- transaction-local custom setting keyed by backend and statement; it only
-- ever makes a builder raise, so a user forging it harms only themselves.

-- Record that helper p_helper (e.g. 'df.setvar') returned p_value in this
-- statement, and return p_value.  df.await_instance & co call it too.
CREATE FUNCTION df._note_step_helper_v1(p_helper text, p_value text) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stmt text := pg_catalog.pg_backend_pid()::text || '@'
                   || EXTRACT(EPOCH FROM pg_catalog.statement_timestamp())::text;
    v_cur text := pg_catalog.current_setting('durable.step_helpers', true);
    v_map jsonb := '{}';
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    END IF;
    IF pg_catalog.starts_with(v_cur, v_stmt || '|') THEN
        v_map := pg_catalog.substr(v_cur, pg_catalog.length(v_stmt) + 2)::jsonb;
    END IF;
    PERFORM pg_catalog.set_config('durable.step_helpers',
        v_stmt || '|' || (v_map || pg_catalog.jsonb_build_object(p_value, p_helper))::text, true);
    RETURN p_value;
END
$$;

-- Raise X11 when p_text is what a helper returned earlier in this statement.
CREATE FUNCTION df._check_step_arg_v1(p_text text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stmt text := pg_catalog.pg_backend_pid()::text || '@'
                   || EXTRACT(EPOCH FROM pg_catalog.statement_timestamp())::text;
    v_cur text := pg_catalog.current_setting('durable.step_helpers', true);
    v_helper text;
BEGIN
    IF pg_catalog.starts_with(v_cur, v_stmt || '|') THEN
        v_helper := pg_catalog.substr(v_cur, pg_catalog.length(v_stmt) + 2)::jsonb ->> p_text;
        IF v_helper IS NOT NULL THEN
            RAISE EXCEPTION '% cannot be used as a workflow step. Call % before df.start().', v_helper, v_helper
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
END
$$;

-- ----- Envelopes -----------------------------------------------------------

-- Parse a step argument (PGD_REFERENCE.md 2.2).  kind:
--   'text'      not an envelope (plain text, invalid JSON, JSON that is not
--               an object or has no string node_type): an SQL step;
--   'malformed' string node_type but it does not deserialise (detail =
--               serde_json's message);
--   'unknown'   deserialises, but node_type is not one of the 12 types;
--   'envelope'  node_type decoded; children and extra_nodes are raw JSON
--               texts; query and result_name are canonical JSON strings.
-- JSON null members count as absent, like serde's Option.
CREATE FUNCTION df._parse_durofut_v1(p_text text,
    OUT kind text, OUT node_type text, OUT left_node text, OUT right_node text, OUT condition_node text,
    OUT extra_nodes text[], OUT query text, OUT result_name text, OUT detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_head text := pg_catalog.left(p_text, 1);
    v_json json;
    v_keys text[];
    v_vals text[];
    v_n integer;
    v_nt text;
    v_seen text[] := '{}';
    v_err text;
    v_where text;
    v_at integer;
    k text;
    r text;
    c text;
    i integer;
BEGIN
    IF v_head = '{' OR (v_head IN (' ', E'\t', E'\n', E'\r') AND pg_catalog.ltrim(p_text, E' \t\n\r') LIKE '{%') THEN
        BEGIN
            v_json := p_text::json;
        EXCEPTION WHEN invalid_text_representation THEN
            v_json := NULL;
        END;
    END IF;
    IF v_json IS NOT NULL THEN
        SELECT pg_catalog.array_agg(e.key ORDER BY e.o), pg_catalog.array_agg(e.value::text ORDER BY e.o)
          INTO v_keys, v_vals
          FROM pg_catalog.json_each(v_json) WITH ORDINALITY AS e(key, value, o);
        v_n := COALESCE(pg_catalog.array_length(v_keys, 1), 0);
        -- serde_json's Value keeps the last of duplicate keys.
        FOR i IN REVERSE v_n .. 1 LOOP
            IF v_keys[i] = 'node_type' THEN
                v_nt := v_vals[i];
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF v_nt IS NULL OR pg_catalog.left(v_nt, 1) <> '"' THEN
        IF pg_catalog.current_setting('durable.step_helpers', true) <> '' THEN
            PERFORM df._check_step_arg_v1(p_text);
        END IF;
        kind := 'text';
        RETURN;
    END IF;
    node_type := CASE WHEN pg_catalog.strpos(v_nt, '\') = 0 THEN pg_catalog.substr(v_nt, 2, pg_catalog.length(v_nt) - 2)
                      ELSE v_nt::json #>> '{}' END;

    -- Deserialise into the Durofut struct as serde derive does: members in
    -- order, a repeated field is an error, unknown members are ignored.
    FOR i IN 1 .. v_n LOOP
        k := v_keys[i];
        CONTINUE WHEN k NOT IN ('node_type', 'left_node', 'right_node', 'condition_node', 'extra_nodes',
                                'query', 'result_name');
        r := v_vals[i];
        c := pg_catalog.left(r, 1);
        IF k = ANY (v_seen) THEN
            v_err := 'duplicate field `' || k || '`';
            v_where := 'key';
        ELSIF (k = 'node_type' AND c <> '"') OR (k IN ('query', 'result_name') AND c <> '"' AND r <> 'null') THEN
            v_err := 'invalid type: ' || df._serde_unexpected_v1(r) || ', expected a string';
        ELSIF k = 'extra_nodes' AND c <> '[' THEN
            v_err := 'invalid type: ' || df._serde_unexpected_v1(r) || ', expected a sequence';
        END IF;
        IF v_err IS NOT NULL THEN
            v_where := COALESCE(v_where, CASE WHEN c IN ('{', '[') THEN 'value_start' ELSE 'value_end' END);
            v_at := i;
            EXIT;
        END IF;
        v_seen := v_seen || k;
        IF r = 'null' THEN
            CONTINUE;
        END IF;
        CASE k
        WHEN 'left_node' THEN
            left_node := r;
        WHEN 'right_node' THEN
            right_node := r;
        WHEN 'condition_node' THEN
            condition_node := r;
        WHEN 'extra_nodes' THEN
            SELECT pg_catalog.array_agg(e.value::text ORDER BY e.o) INTO extra_nodes
              FROM pg_catalog.json_array_elements(r::json) WITH ORDINALITY AS e(value, o);
        WHEN 'query' THEN
            query := CASE WHEN pg_catalog.strpos(r, '\u') = 0 AND pg_catalog.strpos(r, '\/') = 0 THEN r
                          ELSE pg_catalog.to_json(r::json #>> '{}')::text END;
        WHEN 'result_name' THEN
            result_name := CASE WHEN pg_catalog.strpos(r, '\u') = 0 AND pg_catalog.strpos(r, '\/') = 0 THEN r
                                ELSE pg_catalog.to_json(r::json #>> '{}')::text END;
        ELSE
            NULL;
        END CASE;
    END LOOP;

    IF v_err IS NOT NULL THEN
        kind := 'malformed';
        detail := v_err || df._serde_position_v1(p_text, v_vals, v_at, v_where);
    ELSIF node_type IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP',
                        'HTTP_MULTIPART', 'SIGNAL') THEN
        kind := 'envelope';
    ELSE
        kind := 'unknown';
    END IF;
END
$$;

-- An envelope from its parts (R-KEYS): children raw, query and result_name
-- already JSON strings.
CREATE FUNCTION df._durofut_json_v1(p_node_type text, p_left text, p_right text, p_condition text,
                                    p_extra text[], p_query text, p_result_name text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN '{"node_type":' || pg_catalog.to_json(p_node_type)::text
        || COALESCE(',"left_node":' || p_left, '')
        || COALESCE(',"right_node":' || p_right, '')
        || COALESCE(',"condition_node":' || p_condition, '')
        || CASE WHEN pg_catalog.cardinality(p_extra) > 0
                THEN ',"extra_nodes":[' || pg_catalog.array_to_string(p_extra, ',') || ']' ELSE '' END
        || COALESCE(',"query":' || p_query, '')
        || COALESCE(',"result_name":' || p_result_name, '')
        || '}';
END
$$;

-- A composer's view of a step argument (pg_durable's Durofut::ensure): the
-- canonical envelope text to embed as a child.
CREATE FUNCTION df._ensure_v1(p_text text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_head text := pg_catalog.left(p_text, 1);
    p record;
BEGIN
    IF v_head NOT IN ('{', ' ', E'\t', E'\n', E'\r') OR v_head = '' THEN
        -- The common case, plain SQL text: no parsing.
        IF pg_catalog.current_setting('durable.step_helpers', true) <> '' THEN
            PERFORM df._check_step_arg_v1(p_text);
        END IF;
        RETURN '{"node_type":"SQL","query":' || pg_catalog.to_json(p_text)::text || '}';
    END IF;
    SELECT * INTO p FROM df._parse_durofut_v1(p_text);
    IF p.kind = 'envelope' THEN
        RETURN df._durofut_json_v1(p.node_type, p.left_node, p.right_node, p.condition_node, p.extra_nodes,
                                   p.query, p.result_name);
    ELSIF p.kind = 'malformed' THEN
        RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: %', p.detail
            USING ERRCODE = 'DF001';
    END IF;
    RETURN '{"node_type":"SQL","query":' || pg_catalog.to_json(p_text)::text || '}';
END
$$;

-- The root-level strict parse df.start does (pg_durable's ensure_strict).
CREATE FUNCTION df._ensure_strict_v1(fut text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
    v jsonb;
    v_members bigint;
    v_drop text[];
BEGIN
    IF fut IS NULL THEN
        RAISE EXCEPTION 'Invalid durable function: fut cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    -- The common case first (0.3.0): an envelope as the operators write it,
    -- JSON whose root repeats no member and whose fields have the types serde
    -- wants.  Less what the strict parse below leaves out (unknown and null
    -- members, an empty extra_nodes), its jsonb is the envelope that parse
    -- would build.  Anything else, even what only jsonb rejects, takes the
    -- strict parse for its exact verdict.
    IF pg_catalog.left(fut, 1) = '{' THEN
        BEGIN
            v := fut::jsonb;
        EXCEPTION WHEN OTHERS THEN
            v := NULL;
        END;
        IF pg_catalog.jsonb_typeof(v -> 'node_type') = 'string'
           AND v ->> 'node_type' IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE',
                                     'HTTP', 'HTTP_MULTIPART', 'SIGNAL')
           AND COALESCE(pg_catalog.jsonb_typeof(v -> 'query'), 'null') IN ('string', 'null')
           AND COALESCE(pg_catalog.jsonb_typeof(v -> 'result_name'), 'null') IN ('string', 'null')
           AND COALESCE(pg_catalog.jsonb_typeof(v -> 'extra_nodes'), 'array') = 'array' THEN
            SELECT pg_catalog.count(*),
                   pg_catalog.array_agg(e.key) FILTER (
                       WHERE e.key NOT IN ('node_type', 'left_node', 'right_node', 'condition_node', 'extra_nodes',
                                           'query', 'result_name')
                          OR e.value = 'null'::jsonb OR (e.key = 'extra_nodes' AND e.value = '[]'::jsonb))
              INTO v_members, v_drop
              FROM pg_catalog.jsonb_each(v) AS e;
            IF v_members = (SELECT pg_catalog.count(*) FROM pg_catalog.json_object_keys(fut::json)) THEN
                RETURN CASE WHEN v_drop IS NULL THEN v ELSE v - v_drop END;
            END IF;
        END IF;
    END IF;
    SELECT * INTO p FROM df._parse_durofut_v1(fut);
    IF p.kind = 'envelope' THEN
        RETURN df._durofut_json_v1(p.node_type, p.left_node, p.right_node, p.condition_node, p.extra_nodes,
                                   p.query, p.result_name)::jsonb;
    ELSIF p.kind = 'malformed' THEN
        RAISE EXCEPTION 'Invalid durable function: Malformed Durofut JSON with node_type ''%'': %', p.node_type, p.detail
            USING ERRCODE = 'DF001';
    ELSIF p.kind = 'unknown' THEN
        RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. Valid types: SQL, THEN, IF, JOIN, LOOP, '
                        'BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL', p.node_type
            USING ERRCODE = 'DF001';
    END IF;
    RETURN pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', fut);
END
$$;

-- Whether an IF's query is an if_rows condition the engine can evaluate
-- (and embeds no node reference of its own).
CREATE FUNCTION df._is_if_rows_config_v1(p_query text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_query IS NULL OR p_query !~ E'^[ \t\n\r]*\\{' THEN
        RETURN false;
    END IF;
    BEGIN
        v := p_query::jsonb;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
        RETURN false;
    END;
    RETURN v ->> 'condition_type' = 'result_has_rows'
       AND pg_catalog.jsonb_typeof(v -> 'result_name') = 'string'
       AND NOT v ? 'condition_node' AND NOT v ? 'extra_nodes';
END
$$;

-- The whole-graph check and flattening df.start and df.explain use
-- (pg_durable's flatten_graph).  One row per node in pre-order (ord from 1;
-- children in the order left, right, condition_node, extra_nodes); slot is
-- 'left', 'right', 'condition' or 'extraN'.  query is what the node row
-- keeps: the query of a leaf or of an if_rows IF, else NULL (the caller
-- materialises condition_node / extra_nodes references).  A depth-first walk
-- with an explicit stack checks each node as it is popped, so the first
-- invalid node in pre-order is the one reported and nothing below it is read:
--   Invalid durable function graph: <path>: <message>   (SQLSTATE DF002)
-- It stops at depth 257 and at the 10,001st node in pre-order (the first
-- 10,001 popped, as pg_durable's walk pops them).  A walk in PL/pgSQL, not a
-- recursive CTE (0.3.0): starting that query's plan cost more than walking
-- the few nodes df.start mostly gets.  A node is read out of its parent once
-- (`->`), so a value is copied once per level above it, as the CTE's paths did.
CREATE FUNCTION df._flatten_v1(fut jsonb)
RETURNS TABLE(ord integer, parent_ord integer, slot text, depth integer, path text, node_type text, query text,
              result_name text, left_ord integer, right_ord integer, cond_ord integer, extra_ords integer[])
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The nodes still to visit, with what their rows need from their parent; the top is [v_top].
    s_node jsonb[] := ARRAY[fut];
    s_parent integer[] := ARRAY[NULL::integer];
    s_slot text[] := ARRAY[NULL::text];
    s_path text[] := ARRAY['root'];
    s_depth integer[] := ARRAY[0];
    v_top integer := 1;
    v_n integer := 0;
    -- The node being visited.
    v jsonb;
    v_parent integer;
    v_slot text;
    v_path text;
    v_depth integer;
    v_ntj jsonb;
    v_nt text;
    v_q text;
    v_rn text;
    v_xj jsonb;
    v_has_l boolean;
    v_has_r boolean;
    v_has_c boolean;
    v_extra integer;
    v_err text;
    i integer;
    -- The output columns by ord.
    a_parent integer[] := '{}';
    a_slot text[] := '{}';
    a_depth integer[] := '{}';
    a_path text[] := '{}';
    a_type text[] := '{}';
    a_query text[] := '{}';
    a_name text[] := '{}';
    a_left integer[] := '{}';
    a_right integer[] := '{}';
    a_cond integer[] := '{}';
    a_extra text[] := '{}';             -- comma lists, in ord order
BEGIN
    WHILE v_top > 0 LOOP
        v := s_node[v_top];
        v_parent := s_parent[v_top];
        v_slot := s_slot[v_top];
        v_path := s_path[v_top];
        v_depth := s_depth[v_top];
        v_top := v_top - 1;
        v_n := v_n + 1;

        v_ntj := v -> 'node_type';
        v_nt := v ->> 'node_type';
        v_q := v ->> 'query';
        v_rn := v ->> 'result_name';
        v_xj := v -> 'extra_nodes';
        v_has_l := COALESCE(v ? 'left_node' AND NOT v @> '{"left_node": null}', false);
        v_has_r := COALESCE(v ? 'right_node' AND NOT v @> '{"right_node": null}', false);
        v_has_c := COALESCE(v ? 'condition_node' AND NOT v @> '{"condition_node": null}', false);
        v_extra := CASE WHEN pg_catalog.jsonb_typeof(v_xj) = 'array' THEN pg_catalog.jsonb_array_length(v_xj) ELSE 0 END;
        -- A valid SQL leaf or THEN node (what most graphs are made of) skips
        -- the full check, which finds nothing wrong with either.  Not for the
        -- walk's own speed: PL/pgSQL builds an expression's state the first
        -- time it runs in each transaction, a start is mostly a transaction of
        -- its own, and building that CASE cost more than walking a small graph
        -- (0.3.0).  Anything else, or anything NULL here, takes the full check.
        -- v_err is NULL here: a node it was set for raised below.
        IF (v_depth <= 256 AND v_xj IS NULL AND NOT v_has_c AND v_rn IS NULL
                AND CASE v_nt WHEN 'SQL' THEN NOT (v_has_l OR v_has_r)
                                             AND pg_catalog.jsonb_typeof(v -> 'query') = 'string'
                              WHEN 'THEN' THEN v_has_l AND v_has_r AND NOT v ? 'query'
                              ELSE false END) IS NOT TRUE THEN
            v_err := CASE
                WHEN v_depth > 256 THEN
                    'Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into '
                    'multiple instances.'
                WHEN pg_catalog.jsonb_typeof(v) <> 'object' THEN
                    CASE WHEN v_slot = 'condition' THEN 'condition_node must be a Durofut JSON object'
                         WHEN v_slot LIKE 'extra%' THEN 'extra_nodes entries must be Durofut JSON objects'
                         ELSE 'Durofut children must be JSON objects' END
                WHEN v_ntj IS NULL THEN
                    'Malformed Durofut JSON: missing field `node_type`'
                WHEN pg_catalog.jsonb_typeof(v_ntj) <> 'string' THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1(v_ntj::text) || ', expected a string'
                WHEN v_xj IS NOT NULL AND pg_catalog.jsonb_typeof(v_xj) <> 'array' THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1(v_xj::text) || ', expected a sequence'
                WHEN pg_catalog.jsonb_typeof(v -> 'query') NOT IN ('string', 'null') THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1((v -> 'query')::text)
                    || ', expected a string'
                WHEN pg_catalog.jsonb_typeof(v -> 'result_name') NOT IN ('string', 'null') THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1((v -> 'result_name')::text)
                    || ', expected a string'
                WHEN v_nt NOT IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP',
                                  'HTTP_MULTIPART', 'SIGNAL') THEN
                    'Unknown node_type ''' || v_nt || '''. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, '
                    'SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL'
                WHEN v_has_c AND v_nt NOT IN ('IF', 'LOOP') THEN
                    'condition_node is only allowed on IF and LOOP nodes'
                WHEN v_extra > 0 AND v_nt <> 'JOIN' THEN
                    'extra_nodes is only allowed on JOIN nodes'
                WHEN v_nt IN ('THEN', 'RACE', 'JOIN', 'IF') AND NOT (v_has_l AND v_has_r) THEN
                    v_nt || ' node requires left_node and right_node'
                WHEN v_nt = 'IF' AND NOT v_has_c AND NOT df._is_if_rows_config_v1(v_q) THEN
                    'IF node requires condition_node or a result_has_rows query'
                WHEN v_nt = 'LOOP' AND NOT v_has_l THEN
                    'LOOP node requires left_node'
                WHEN v_nt = 'LOOP' AND v_has_r THEN
                    'LOOP node must not have right_node'
                WHEN v_nt NOT IN ('THEN', 'RACE', 'JOIN', 'IF', 'LOOP') AND (v_has_l OR v_has_r) THEN
                    v_nt || ' node must not have left_node or right_node'
                WHEN v_nt NOT IN ('THEN', 'RACE', 'JOIN', 'IF', 'LOOP') AND v_q IS NULL THEN
                    v_nt || ' node requires a query'
                WHEN v_rn = '' THEN
                    'result name cannot be empty'
                WHEN v_rn !~ '^[a-zA-Z_][a-zA-Z0-9_]*$' THEN
                    'result name ''' || v_rn || ''' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*'
                END;
        END IF;
        IF v_err IS NOT NULL THEN
            RAISE EXCEPTION 'Invalid durable function graph: %: %', v_path, v_err USING ERRCODE = 'DF002';
        END IF;
        IF v_n > 10000 THEN
            RAISE EXCEPTION 'Invalid durable function graph: root: Workflow exceeds maximum node count of 10000. '
                            'Simplify the workflow or break it into multiple instances.'
                USING ERRCODE = 'DF002';
        END IF;

        a_parent[v_n] := v_parent;
        a_slot[v_n] := v_slot;
        a_depth[v_n] := v_depth;
        a_path[v_n] := v_path;
        a_type[v_n] := v_nt;
        a_query[v_n] := CASE WHEN v_nt IN ('SQL', 'BREAK', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL')
                                  OR (v_nt = 'IF' AND NOT v_has_c) THEN v_q END;
        a_name[v_n] := v_rn;
        IF v_slot = 'left' THEN
            a_left[v_parent] := v_n;
        ELSIF v_slot = 'right' THEN
            a_right[v_parent] := v_n;
        ELSIF v_slot = 'condition' THEN
            a_cond[v_parent] := v_n;
        ELSIF v_slot LIKE 'extra%' THEN
            a_extra[v_parent] := COALESCE(a_extra[v_parent] || ',', '') || v_n;
        END IF;

        -- The children, pushed last first so that they pop in pre-order.  An extra node that could
        -- only pop after the 10,001st node is never pushed: a wide extra_nodes costs no more memory
        -- than the nodes the walk can reach.
        FOR i IN REVERSE LEAST(v_extra, 10001 - v_n) .. 1 LOOP
            v_top := v_top + 1;
            s_node[v_top] := v_xj -> (i - 1);
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'extra' || i;
            s_path[v_top] := v_path || '.extra_nodes[' || (i - 1) || ']';
            s_depth[v_top] := v_depth + 1;
        END LOOP;
        IF v_has_c THEN
            v_top := v_top + 1;
            s_node[v_top] := v -> 'condition_node';
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'condition';
            s_path[v_top] := v_path || '.condition_node';
            s_depth[v_top] := v_depth + 1;
        END IF;
        IF v_has_r THEN
            v_top := v_top + 1;
            s_node[v_top] := v -> 'right_node';
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'right';
            s_path[v_top] := v_path || '.right';
            s_depth[v_top] := v_depth + 1;
        END IF;
        IF v_has_l THEN
            v_top := v_top + 1;
            s_node[v_top] := v -> 'left_node';
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'left';
            s_path[v_top] := v_path || '.left';
            s_depth[v_top] := v_depth + 1;
        END IF;
    END LOOP;
    FOR i IN 1 .. v_n LOOP
        ord := i;
        parent_ord := a_parent[i];
        slot := a_slot[i];
        depth := a_depth[i];
        path := a_path[i];
        node_type := a_type[i];
        query := a_query[i];
        result_name := a_name[i];
        left_ord := a_left[i];
        right_ord := a_right[i];
        cond_ord := a_cond[i];
        extra_ords := pg_catalog.string_to_array(a_extra[i], ',')::integer[];
        RETURN NEXT;
    END LOOP;
END
$$;

-- ----- Cron ----------------------------------------------------------------

-- Standard cron (CONTRACT.md section 9): minute hour day-of-month month
-- day-of-week [year]; each field a comma list of *, n, a-b, with an optional
-- /step (>= 1); month names JAN-DEC and day names SUN-SAT in any case;
-- day-of-week 0-7 with 0 and 7 = Sunday; year 1970-2099.  Ranges must not
-- run backwards.
CREATE FUNCTION df._cron_valid_v1(p_expr text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_fields text[] := pg_catalog.regexp_split_to_array(pg_catalog.btrim(p_expr, E' \t\n\r'), E'[ \t\n\r]+');
    v_min integer[] := ARRAY[0, 0, 1, 1, 0, 1970];
    v_max integer[] := ARRAY[59, 23, 31, 12, 7, 2099];
    v_months text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
    v_days text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    v_item text;
    v_bound text;
    v_vals integer[];
    m text[];
    i integer;
    j integer;
BEGIN
    IF pg_catalog.cardinality(v_fields) NOT IN (5, 6) THEN
        RETURN false;
    END IF;
    FOR i IN 1 .. pg_catalog.cardinality(v_fields) LOOP
        FOREACH v_item IN ARRAY pg_catalog.string_to_array(v_fields[i], ',') LOOP
            m := pg_catalog.regexp_match(v_item, '^(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?$');
            IF m IS NULL THEN
                RETURN false;
            END IF;
            IF m[4] IS NOT NULL AND (pg_catalog.length(m[4]) > 9 OR m[4]::integer < 1) THEN
                RETURN false;
            END IF;
            CONTINUE WHEN m[1] IS NOT NULL;
            v_vals := '{}';
            FOR j IN 2 .. 3 LOOP
                v_bound := m[j];
                CONTINUE WHEN v_bound IS NULL;
                IF v_bound ~ '^[0-9]{1,9}$' THEN
                    v_vals := v_vals || v_bound::integer;
                ELSIF i = 4 AND pg_catalog.array_position(v_months, pg_catalog.upper(v_bound)) IS NOT NULL THEN
                    v_vals := v_vals || pg_catalog.array_position(v_months, pg_catalog.upper(v_bound));
                ELSIF i = 5 AND pg_catalog.array_position(v_days, pg_catalog.upper(v_bound)) IS NOT NULL THEN
                    v_vals := v_vals || (pg_catalog.array_position(v_days, pg_catalog.upper(v_bound)) - 1);
                ELSE
                    RETURN false;
                END IF;
            END LOOP;
            IF v_vals[1] < v_min[i] OR v_vals[pg_catalog.cardinality(v_vals)] > v_max[i]
               OR v_vals[1] > v_vals[pg_catalog.cardinality(v_vals)] THEN
                RETURN false;
            END IF;
        END LOOP;
    END LOOP;
    RETURN true;
END
$$;

-- ----- Builders (PGD_REFERENCE.md 1.1, 2.1) --------------------------------

CREATE FUNCTION df.sql(query text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN '{"node_type":"SQL","query":' || pg_catalog.to_json(query)::text || '}';
END
$$;

CREATE FUNCTION df.seq(a text, b text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('THEN', df._ensure_v1(a), df._ensure_v1(b), NULL, NULL, NULL, NULL);
END
$$;

CREATE FUNCTION df."as"(fut text, name text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
BEGIN
    -- The name is checked before the step is parsed (fixture X1).
    IF name = '' THEN
        RAISE EXCEPTION 'df.as: result name cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    IF name !~ '^[a-zA-Z_][a-zA-Z0-9_]*$' THEN
        RAISE EXCEPTION 'df.as: result name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*', name
            USING ERRCODE = 'DF001';
    END IF;
    SELECT * INTO p FROM df._parse_durofut_v1(fut);
    IF p.kind = 'envelope' THEN
        RETURN df._durofut_json_v1(p.node_type, p.left_node, p.right_node, p.condition_node, p.extra_nodes,
                                   p.query, '"' || name || '"');
    ELSIF p.kind = 'malformed' THEN
        RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: %', p.detail
            USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('SQL', NULL, NULL, NULL, NULL, pg_catalog.to_json(fut)::text, '"' || name || '"');
END
$$;

CREATE FUNCTION df."join"(a text, b text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('JOIN', df._ensure_v1(a), df._ensure_v1(b), NULL, NULL, NULL, NULL);
END
$$;

CREATE FUNCTION df.join3(a text, b text, c text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('JOIN', df._ensure_v1(a), df._ensure_v1(b), NULL, ARRAY[df._ensure_v1(c)], NULL, NULL);
END
$$;

CREATE FUNCTION df.race(a text, b text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('RACE', df._ensure_v1(a), df._ensure_v1(b), NULL, NULL, NULL, NULL);
END
$$;

-- left = then, right = else, condition_node = the condition (any step).
CREATE FUNCTION df."if"(condition text, then_branch text, else_branch text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_condition text := df._ensure_v1(condition);
BEGIN
    RETURN df._durofut_json_v1('IF', df._ensure_v1(then_branch), df._ensure_v1(else_branch), v_condition,
                               NULL, NULL, NULL);
END
$$;

-- The condition is "the named result has rows"; the name is checked when the IF runs.
CREATE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('IF', df._ensure_v1(then_branch), df._ensure_v1(else_branch), NULL, NULL,
        pg_catalog.to_json('{"condition_type":"result_has_rows","result_name":'
                           || pg_catalog.to_json(result_name)::text || '}')::text,
        NULL);
END
$$;

CREATE FUNCTION df.loop(body text, condition text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF body IS NULL THEN
        RAISE EXCEPTION 'df.loop: body cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('LOOP', df._ensure_v1(body), NULL,
                               CASE WHEN condition IS NOT NULL THEN df._ensure_v1(condition) END, NULL, NULL, NULL);
END
$$;

-- The value is a literal, never a step; it is parsed only when the BREAK runs.
CREATE FUNCTION df."break"(value text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('BREAK', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"break_value":' || COALESCE(pg_catalog.to_json(value)::text, 'null') || '}')::text,
        NULL);
END
$$;

CREATE FUNCTION df.sleep(seconds bigint) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF seconds < 0 THEN
        RAISE EXCEPTION 'Sleep duration must be non-negative' USING ERRCODE = 'DF001';
    END IF;
    RETURN '{"node_type":"SLEEP","query":"' || seconds::text || '"}';
END
$$;

CREATE FUNCTION df.wait_for_schedule(cron_expr text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT df._cron_valid_v1(cron_expr) THEN
        RAISE EXCEPTION 'Invalid cron expression ''%'': Invalid expression: Invalid cron expression.', cron_expr
            USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('WAIT_SCHEDULE', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"cron_expr":' || pg_catalog.to_json(cron_expr)::text || '}')::text, NULL);
END
$$;

CREATE FUNCTION df.wait_for_signal(name text, timeout_seconds integer DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'df.wait_for_signal: name cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF name = '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('SIGNAL', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"signal_name":' || pg_catalog.to_json(name)::text
                           || ',"timeout_seconds":' || COALESCE(timeout_seconds::text, 'null') || '}')::text,
        NULL);
END
$$;

-- Builds the envelope only: the allow-list and the caller's EXECUTE
-- privilege are checked when the step runs.
CREATE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL, headers jsonb DEFAULT NULL,
                        timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_method text := pg_catalog.upper(method);
    v_scheme text;
BEGIN
    IF url IS NULL OR method IS NULL OR timeout_seconds IS NULL THEN
        RAISE EXCEPTION 'df.http: url, method and timeout_seconds cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF v_method NOT IN ('GET', 'POST', 'PUT', 'DELETE', 'PATCH') THEN
        RAISE EXCEPTION 'Invalid HTTP method: %. Must be GET, POST, PUT, DELETE, or PATCH', method
            USING ERRCODE = 'DF001';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    -- A url with {var} is only complete at run time, where it is checked again.
    IF pg_catalog.strpos(url, '{') = 0 THEN
        v_scheme := pg_catalog.lower(pg_catalog.split_part(url, '://', 1));
        IF v_scheme NOT IN ('http', 'https') THEN
            RAISE EXCEPTION 'Blocked: unsupported URL scheme ''%''. Only http and https are allowed.', v_scheme
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
    RETURN df._durofut_json_v1('HTTP', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"url":' || pg_catalog.to_json(url)::text
                           || ',"method":' || pg_catalog.to_json(v_method)::text
                           || ',"body":' || COALESCE(pg_catalog.to_json(body)::text, 'null')
                           || ',"headers":' || COALESCE(df._json_compact_v1(headers), 'null')
                           || ',"timeout_seconds":' || timeout_seconds::text || '}')::text,
        NULL);
END
$$;

CREATE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL,
                                  headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_method text := pg_catalog.upper(method);
    v_scheme text;
BEGIN
    IF url IS NULL OR method IS NULL OR timeout_seconds IS NULL THEN
        RAISE EXCEPTION 'df.http_multipart: url, method and timeout_seconds cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF v_method NOT IN ('POST', 'PUT', 'PATCH') THEN
        RAISE EXCEPTION 'Invalid HTTP method for multipart: %. Must be POST, PUT, or PATCH', method
            USING ERRCODE = 'DF001';
    END IF;
    IF parts IS NULL THEN
        RAISE EXCEPTION 'parts is required and cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF pg_catalog.jsonb_typeof(parts) <> 'array'
       OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(parts) AS e(v)
                   WHERE pg_catalog.jsonb_typeof(e.v) <> 'object') THEN
        RAISE EXCEPTION 'parts must be a JSON array of part objects' USING ERRCODE = 'DF001';
    END IF;
    IF pg_catalog.jsonb_array_length(parts) = 0 THEN
        RAISE EXCEPTION 'parts must contain at least one part' USING ERRCODE = 'DF001';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    IF pg_catalog.strpos(url, '{') = 0 THEN
        v_scheme := pg_catalog.lower(pg_catalog.split_part(url, '://', 1));
        IF v_scheme NOT IN ('http', 'https') THEN
            RAISE EXCEPTION 'Blocked: unsupported URL scheme ''%''. Only http and https are allowed.', v_scheme
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
    RETURN df._durofut_json_v1('HTTP_MULTIPART', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"url":' || pg_catalog.to_json(url)::text
                           || ',"method":' || pg_catalog.to_json(v_method)::text
                           || ',"parts":' || df._json_compact_v1(parts)
                           || ',"headers":' || COALESCE(df._json_compact_v1(headers), 'null')
                           || ',"timeout_seconds":' || timeout_seconds::text || '}')::text,
        NULL);
END
$$;

-- Outbound HTTP is opt-in per role: df.grant_usage(role, include_http => true).
REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer),
                           df.http_multipart(text, text, jsonb, jsonb, integer) FROM PUBLIC;

-- ----- Operator helpers (PGD_REFERENCE.md 1.5, 1.6) ------------------------
-- 95_operators.sql creates ~> |=> & | ?> !> @> over these.

CREATE FUNCTION df.as_op(fut text, name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df."as"(fut, name) $$;

-- `c ?> t` is a partial IF that `!> e` completes; its operands are kept as
-- strings and only become steps in df.if.
CREATE FUNCTION df.if_then_op(condition text, then_branch text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.jsonb_build_object('_partial_if', true, 'condition', condition,
                                           'then_branch', then_branch)::text $$;

-- Lines 7 and 11 are where pg_durable's errors point (fixtures X10, X10b).
CREATE FUNCTION df.if_else_op(partial_if text, else_branch text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_partial jsonb;
    v_condition text;
    v_then text;
BEGIN
    v_partial := partial_if::jsonb;
    v_condition := v_partial ->> 'condition';
    v_then := v_partial ->> 'then_branch';
    IF pg_catalog.jsonb_typeof(v_partial) <> 'object' OR v_partial -> '_partial_if' IS DISTINCT FROM 'true' OR v_condition IS NULL OR v_then IS NULL THEN
        RAISE EXCEPTION 'Invalid if-then-else: left side of !> must be a ?> expression' USING ERRCODE = 'DF001';
    END IF;
    RETURN df."if"(v_condition, v_then, else_branch);
END
$$;

CREATE FUNCTION df.loop_prefix_op(body text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df.loop(body) $$;

-- ---------------------------------------------------------------------------
-- Variables (PGD_REFERENCE.md 1.3): per-role rows in df.vars, captured by
-- df.start.  The functions run with the caller's own privileges; RLS and the
-- owner trigger (90_security.sql) keep each row its writer's, and every
-- statement here also filters on the caller explicitly, so a BYPASSRLS role
-- reads and changes only its own variables through them.
-- ---------------------------------------------------------------------------

-- Whether this backend is running a workflow step: the worker records each
-- step's backend pid in df.attempts, which users cannot write (pg_durable's
-- session setting df.in_workflow can be reset by the step itself).
CREATE FUNCTION df._in_workflow() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The backend's start time guards against a pid reused by a later session.  An attempt bound in
    -- the step's own transaction (0.3.0) records no start time: it counts only in that transaction.
    RETURN EXISTS (
        SELECT 1 FROM df.attempts AS a
         WHERE a.backend_pid = pg_catalog.pg_backend_pid()
           AND (a.backend_start IS NOT DISTINCT FROM (SELECT s.backend_start FROM pg_catalog.pg_stat_activity AS s
                                                       WHERE s.pid = pg_catalog.pg_backend_pid())
                OR (a.backend_start IS NULL AND a.bind_hash IS NULL
                    AND a.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()))));
END
$$;

CREATE FUNCTION df.in_workflow() RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._in_workflow();
END
$$;

CREATE FUNCTION df.setvar(name text, value text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.setvar() cannot be called inside a workflow - variables are captured when the workflow '
                        'starts; call df.setvar() before df.start()' USING ERRCODE = 'DF013';
    END IF;
    INSERT INTO df.vars AS v (name, value, owner)
    VALUES (setvar.name, setvar.value, pg_catalog.quote_ident(current_user)::regrole)
    ON CONFLICT ON CONSTRAINT vars_pkey DO UPDATE SET value = EXCLUDED.value;
    RETURN df._note_step_helper_v1('df.setvar', 'OK');
END
$$;

CREATE FUNCTION df.getvar(name text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT v.value FROM df.vars AS v
             WHERE v.owner = pg_catalog.quote_ident(current_user)::regrole AND v.name = getvar.name);
END
$$;

CREATE FUNCTION df.unsetvar(name text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.unsetvar() cannot be called inside a workflow - variables are captured when the workflow '
                        'starts; call df.unsetvar() before df.start()' USING ERRCODE = 'DF013';
    END IF;
    DELETE FROM df.vars AS v
     WHERE v.owner = pg_catalog.quote_ident(current_user)::regrole AND v.name = unsetvar.name;
    RETURN df._note_step_helper_v1('df.unsetvar', 'OK');
END
$$;

CREATE FUNCTION df.clearvars() RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.clearvars() cannot be called inside a workflow - variables are captured when the workflow '
                        'starts; call df.clearvars() before df.start()' USING ERRCODE = 'DF013';
    END IF;
    DELETE FROM df.vars AS v WHERE v.owner = pg_catalog.quote_ident(current_user)::regrole;
    RETURN df._note_step_helper_v1('df.clearvars', 'OK');
END
$$;

-- ---------------------------------------------------------------------------
-- df.start: validate the whole graph, claim an id, materialise the instance
-- and its nodes in the caller's transaction.
-- ---------------------------------------------------------------------------

-- Tell idle workers there is work, but only when someone listens: in
-- PostgreSQL 15 a NOTIFYing transaction takes a cluster-wide lock through its
-- commit.  The payload says nothing about whose work it is.
CREATE FUNCTION df._wake_workers() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM df.workers AS w
                WHERE w.idle AND w.last_seen_at > pg_catalog.clock_timestamp() - interval '2 minutes') THEN
        PERFORM pg_catalog.pg_notify('durable_work', '');
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION df._wake_workers() FROM PUBLIC;

CREATE FUNCTION df._start_v1(p_ticket uuid, p_fut text, p_label text, p_database text, p_mode text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mode      text := pg_catalog.lower(p_mode);
    v_env       jsonb;
    v_caller    regrole;
    v_refusal   text;
    v_base      bigint := (pg_catalog.random() * 4294967296)::bigint % 4294967296;
    v_space     bigint := COALESCE(df._setting('id_space')::bigint, 4294967296);
    v_attempts  integer := COALESCE(df._setting('max_id_attempts')::integer, 10);
    v_version   bigint;
    v_id        varchar(8);
    v_try       integer;
BEGIN
    IF v_mode IS NULL OR v_mode NOT IN ('caller', 'new') THEN
        RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''', p_mode
            USING ERRCODE = 'DF001';
    END IF;
    IF v_mode = 'new' THEN
        RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' is not supported yet; use ''caller'' (the default)'
            USING ERRCODE = 'DF007';
    END IF;
    v_env := df._ensure_strict_v1(p_fut);
    IF p_database IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database AS d WHERE d.datname = p_database) THEN
        RAISE EXCEPTION 'database "%" does not exist', p_database USING ERRCODE = 'DF001';
    END IF;
    v_caller := df._caller(p_ticket);
    v_refusal := df._submitter_refusal(v_caller);
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION '%', v_refusal USING ERRCODE = 'DF005';
    END IF;

    -- Claim an id: insert-on-conflict-do-nothing, re-rolled on collision.
    -- Every row of the instance starts at one version (0.3.0: the rows'
    -- version trigger then has nothing to do; one clock read, not one per
    -- row).  The root is node 1 (ids below).
    v_version := df._initial_version();
    FOR v_try IN 1 .. v_attempts LOOP
        v_id := pg_catalog.lpad(pg_catalog.to_hex(((pg_catalog.random() * v_space)::bigint % v_space)), 8, '0');
        INSERT INTO df.instances AS i (id, label, root_node, status, submitted_by, database, transaction_mode,
                                       resource_version)
        VALUES (v_id, p_label, pg_catalog.lpad(pg_catalog.to_hex((v_base + 2654435761) % 4294967296), 8, '0'),
                'pending', v_caller, p_database, v_mode, v_version)
        ON CONFLICT (id) DO NOTHING
        RETURNING i.id INTO v_id;
        EXIT WHEN v_id IS NOT NULL;
    END LOOP;
    IF v_id IS NULL THEN
        -- The detail does not say how many ids are in use: that counts other roles' instances.
        RAISE EXCEPTION 'Failed to create instance: exhausted % attempts to find a free instance id', v_attempts
            USING ERRCODE = 'DF006',
                  DETAIL = pg_catalog.format('The id space holds %s ids and is nearly full '
                                             '(df.metrics() shows how full).', v_space),
                  HINT = 'Delete finished instances to free ids.';
    END IF;

    -- The graph is validated and flattened by the same statement that writes
    -- its rows (0.3.0: no pass to collect them first); an invalid graph
    -- raises there, and the caller's transaction loses the instance row too.
    -- No temp table anywhere: a caller could plant one with a trigger that
    -- would run as the owner.  Node ids: a random base walked by an odd
    -- multiplier modulo 2^32 is a bijection, so the ids of one instance are
    -- distinct and look random.  Node k (pre-order, from 1) is
    -- lpad(to_hex((base + k * 2654435761) % 2^32), 8, '0'), written out: a
    -- function call per id cost more than the rest of the row.
    INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node,
                          submitted_by, database, parent_id, slot, resource_version)
    SELECT pg_catalog.lpad(pg_catalog.to_hex((v_base + f.ord::bigint * 2654435761) % 4294967296), 8, '0'),
           v_id,
           f.node_type,
           CASE
           WHEN f.cond_ord IS NOT NULL
               THEN pg_catalog.json_build_object('condition_node', pg_catalog.lpad(pg_catalog.to_hex(
                        (v_base + f.cond_ord::bigint * 2654435761) % 4294967296), 8, '0'))::text
           WHEN COALESCE(pg_catalog.cardinality(f.extra_ords), 0) > 0
               THEN pg_catalog.json_build_object('extra_nodes',
                    (SELECT pg_catalog.array_agg(pg_catalog.lpad(pg_catalog.to_hex(
                                (v_base + x.e::bigint * 2654435761) % 4294967296), 8, '0') ORDER BY x.k)
                       FROM pg_catalog.unnest(f.extra_ords) WITH ORDINALITY AS x(e, k)))::text
           ELSE f.query
           END,
           f.result_name,
           pg_catalog.lpad(pg_catalog.to_hex((v_base + f.left_ord::bigint * 2654435761) % 4294967296), 8, '0'),
           pg_catalog.lpad(pg_catalog.to_hex((v_base + f.right_ord::bigint * 2654435761) % 4294967296), 8, '0'),
           v_caller,
           p_database,
           pg_catalog.lpad(pg_catalog.to_hex((v_base + f.parent_ord::bigint * 2654435761) % 4294967296), 8, '0'),
           f.slot,
           v_version
      FROM df._flatten_v1(v_env) AS f;

    INSERT INTO df.instance_vars (instance_id, name, value)
    SELECT v_id, v.name, v.value FROM df.vars AS v WHERE v.owner = v_caller AND v.value IS NOT NULL;

    INSERT INTO df.instance_queue (instance_id, wake_at) VALUES (v_id, pg_catalog.clock_timestamp());
    PERFORM df._wake_workers();
    RETURN v_id;
END
$$;

CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller')
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF fut IS NULL THEN
        RAISE EXCEPTION 'Invalid durable function: fut cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    -- The ticket is inserted here, with the caller's own privileges: it is
    -- what tells the SECURITY DEFINER implementation who called.
    RETURN df._start_v1(df._ticket(), fut, label, database, transaction_mode);
END
$$;

-- ---------------------------------------------------------------------------
-- Reads (SECURITY INVOKER: row-level security decides what a role sees) and
-- the small control functions: status, result, instance_info, list_instances,
-- await_instance, version, target_database, run.  The ones clients poll are
-- PL/pgSQL (0.3.0), whose plans are kept: a LANGUAGE sql function with a SET
-- clause is planned again at every call.
-- ---------------------------------------------------------------------------

CREATE FUNCTION df.status(instance_id text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT i.status FROM df.instances AS i WHERE i.id = status.instance_id);
END
$$;

CREATE FUNCTION df.result(instance_id text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT n.result::text
              FROM df.instances AS i
              JOIN df.nodes AS n ON n.instance_id = i.id AND n.id = i.root_node
             WHERE i.id = result.instance_id AND n.status = 'completed');
END
$$;

CREATE FUNCTION df.instance_info(instance_id text)
RETURNS TABLE(instance_id text, label text, function_name text, function_version text,
              current_execution_id bigint, status text, output text, resource_version bigint,
              labels jsonb, annotations jsonb)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, '1.0.0'::text,
           i.execution_count, i.status,
           CASE WHEN i.status IN ('completed', 'failed') THEN i.output END,
           i.resource_version, i.labels, i.annotations
      FROM df.instances AS i
     WHERE i.id = instance_info.instance_id
$$;

-- The list page cap (an owner-only setting) for the list functions, which run as the caller.
CREATE FUNCTION df._list_max_limit() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT COALESCE((SELECT s.value::integer FROM df.settings AS s WHERE s.key = 'list_instances_max_limit'), 1000) $$;

CREATE FUNCTION df._check_list_limit(p_limit integer) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max integer := df._list_max_limit();
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = 'DF009';
    END IF;
    IF p_limit > v_max THEN
        RAISE EXCEPTION 'df.list_instances: limit_count (%) exceeds pg_durable.list_instances_max_limit (%); '
                        'use a smaller limit_count and page with after_cursor', p_limit, v_max
            USING ERRCODE = 'DF009';
    END IF;
END
$$;

CREATE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count integer DEFAULT 100)
RETURNS TABLE(instance_id text, label text, function_name text, status text, execution_count bigint,
              output text, resource_version bigint, labels jsonb, annotations jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM df._check_list_limit(limit_count);
    RETURN QUERY
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, i.status,
           i.execution_count, CASE WHEN i.status IN ('completed', 'failed') THEN i.output END,
           i.resource_version, i.labels, i.annotations
      FROM df.instances AS i
     WHERE status_filter IS NULL OR i.status = status_filter
     ORDER BY i.created_at DESC
     LIMIT limit_count;
END
$$;

-- Keyset cursor: lowercase hex of 'v1|<created_at in the session time zone>|<id>'.
CREATE FUNCTION df._encode_cursor(p_created_at timestamptz, p_id text) RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.encode(pg_catalog.convert_to(
        'v1|' || pg_catalog.to_char(p_created_at, 'YYYY-MM-DD"T"HH24:MI:SS.USOF') || '|' || p_id, 'UTF8'), 'hex')
$$;

CREATE FUNCTION df._decode_cursor(p_cursor text, OUT created_at timestamptz, OUT id text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_raw   text;
    v_parts text[];
BEGIN
    IF p_cursor IS NULL OR p_cursor = '' OR pg_catalog.length(p_cursor) > 512
       OR pg_catalog.length(p_cursor) % 2 <> 0 OR p_cursor !~ '^[0-9a-fA-F]+$' THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END IF;
    BEGIN
        v_raw := pg_catalog.convert_from(pg_catalog.decode(pg_catalog.lower(p_cursor), 'hex'), 'UTF8');
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END;
    v_parts := pg_catalog.string_to_array(v_raw, '|');
    IF pg_catalog.cardinality(v_parts) <> 3 OR v_parts[1] <> 'v1' OR v_parts[2] = '' OR v_parts[3] = ''
       OR v_parts[2] !~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d(:\d\d)?$' THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END IF;
    BEGIN
        created_at := v_parts[2]::timestamptz;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END;
    id := v_parts[3];
END
$$;

-- Pages follow the index order (created_at DESC, id): the keyset condition
-- "after (ts, id)" is written as created_at <= ts AND (created_at < ts OR
-- id > id), whose first half is an index condition, so a deep page reads
-- only its own rows.  Planned for each call's values (custom plan): the
-- status and label filters then use their indexes too.
CREATE FUNCTION df.list_instances(status_filter text, limit_count integer, label_filter text,
                                  after_cursor text DEFAULT NULL)
RETURNS TABLE(instance_id text, label text, function_name text, status text, execution_count bigint,
              output text, created_at timestamptz, completed_at timestamptz, next_cursor text,
              resource_version bigint, labels jsonb, annotations jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_after_ts timestamptz;
    v_after_id text;
    v_next     text;
BEGIN
    PERFORM df._check_list_limit(limit_count);
    IF after_cursor IS NOT NULL THEN
        SELECT c.created_at, c.id INTO v_after_ts, v_after_id FROM df._decode_cursor(after_cursor) AS c;
    END IF;
    RETURN QUERY
    WITH page AS (
        SELECT i.*
          FROM df.instances AS i
         WHERE (status_filter IS NULL OR i.status = status_filter)
           AND (label_filter IS NULL OR i.label = label_filter)
           AND i.created_at IS NOT NULL
           AND i.created_at <= COALESCE(v_after_ts, 'infinity'::timestamptz)
           AND (v_after_ts IS NULL OR i.created_at < v_after_ts OR i.id > v_after_id)
         ORDER BY i.created_at DESC, i.id ASC
         LIMIT limit_count + 1
    ), numbered AS (
        SELECT p.*, pg_catalog.row_number() OVER (ORDER BY p.created_at DESC, p.id ASC) AS rn,
               pg_catalog.count(*) OVER () AS total
          FROM page AS p
    ), cursor_row AS (
        SELECT CASE WHEN n.total > limit_count THEN df._encode_cursor(n.created_at, n.id) END AS c
          FROM numbered AS n WHERE n.rn = LEAST(n.total, limit_count)
    )
    SELECT n.id::text, n.label, 'pg_durable::orchestration::execute-function-graph'::text, n.status,
           n.execution_count, CASE WHEN n.status IN ('completed', 'failed') THEN n.output END,
           n.created_at, n.completed_at, (SELECT cr.c FROM cursor_row AS cr), n.resource_version,
           n.labels, n.annotations
      FROM numbered AS n
     WHERE n.rn <= limit_count
     ORDER BY n.created_at DESC, n.id ASC;
END
$$;

CREATE FUNCTION df.version() RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.3.0 (built 2026-11-23T00:00:00Z)'::text $$;

CREATE FUNCTION df.target_database() RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.current_database()::text $$;

-- pg_durable's no-op nudge; here it makes the instance due now.
CREATE FUNCTION df._run_v1(p_ticket uuid, p_instance_id text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller regrole := df._caller(p_ticket);
BEGIN
    UPDATE df.instance_queue AS q SET wake_at = pg_catalog.clock_timestamp()
      FROM df.instances AS i
     WHERE q.instance_id = i.id AND i.submitted_by = v_caller
       AND (p_instance_id IS NULL OR i.id = p_instance_id);
    PERFORM df._wake_workers();
END
$$;

CREATE FUNCTION df.run(instance_id text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM df._run_v1(df._ticket(), instance_id);
    IF instance_id IS NULL THEN
        RETURN 'Triggered run for all pending instances';
    END IF;
    RETURN 'Triggered run for instance: ' || instance_id;
END
$$;

-- ---------------------------------------------------------------------------
-- Control: cancel, signal, await_instance / wait_for_completion.
-- ---------------------------------------------------------------------------

-- Lock and return a caller's own instance, or raise "not found or access denied".
CREATE FUNCTION df._own_instance(p_caller regrole, p_instance_id text) RETURNS df.instances
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r df.instances;
BEGIN
    -- Lock order is the worker's: the queue row, then the instance row (else a
    -- signal and the worker's apply deadlock).  Only the caller's own queue
    -- row is ever locked here.
    PERFORM 1 FROM df.instances AS i WHERE i.id = p_instance_id AND i.submitted_by = p_caller;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'DF003';
    END IF;
    PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id FOR NO KEY UPDATE;
    SELECT * INTO r FROM df.instances AS i
     WHERE i.id = p_instance_id AND i.submitted_by = p_caller
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'DF003';
    END IF;
    RETURN r;
END
$$;
REVOKE EXECUTE ON FUNCTION df._own_instance(regrole, text) FROM PUBLIC;

-- Wake the worker holding an instance (it cancels running steps, delivers signals).
CREATE FUNCTION df._nudge_instance(p_instance_id text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_leased boolean;
BEGIN
    UPDATE df.instance_queue AS q SET wake_at = pg_catalog.clock_timestamp(), nudges = q.nudges + 1
     WHERE q.instance_id = p_instance_id
    RETURNING q.lease_expires_at > pg_catalog.clock_timestamp() INTO v_leased;
    IF v_leased THEN
        PERFORM pg_catalog.pg_notify('durable_nudge', '');
    ELSE
        PERFORM df._wake_workers();
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION df._nudge_instance(text) FROM PUBLIC;

CREATE FUNCTION df._cancel_v2(p_ticket uuid, p_instance_id text, p_reason text, p_expected bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF r.status IN ('completed', 'failed', 'cancelled') THEN
        RETURN pg_catalog.format('Instance %s is already %s', r.id, r.status);
    END IF;
    UPDATE df.instances AS i SET status = 'cancelled', output = p_reason WHERE i.id = r.id;
    PERFORM df._nudge_instance(r.id);
    PERFORM df._notify_done();
    RETURN pg_catalog.format('Instance %s cancelled: %s', r.id, p_reason);
END
$$;

-- Not STRICT (a trailing parameter defaulting to NULL): pg_durable's own
-- parameters keep STRICT behaviour by hand.
CREATE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user',
                          expected_resource_version bigint DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL OR reason IS NULL THEN
        RETURN NULL;
    END IF;
    IF instance_id = '' THEN
        RAISE EXCEPTION 'Instance ID cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._cancel_v2(df._ticket(), instance_id, reason, expected_resource_version);
END
$$;

CREATE FUNCTION df._signal_v2(p_ticket uuid, p_instance_id text, p_name text, p_data text, p_expected bigint)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r      df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
    v_data text;
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF r.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'Failed to send signal: instance % has already finished (%): signal ''%'' was not delivered',
            r.id, r.status, p_name USING ERRCODE = 'DF008';
    END IF;
    -- A JSON payload is kept as sent; any other text travels as a JSON string.
    BEGIN
        PERFORM p_data::json;
        v_data := p_data;
    EXCEPTION WHEN invalid_text_representation THEN
        v_data := pg_catalog.to_json(p_data)::text;
    END;
    INSERT INTO df.signals (instance_id, signal_name, data, submitted_by)
    VALUES (r.id, p_name, v_data, r.submitted_by);
    UPDATE df.instances AS i SET updated_at = pg_catalog.now() WHERE i.id = r.id;  -- delivery bumps the version
    PERFORM df._nudge_instance(r.id);
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}',
                          expected_resource_version bigint DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL OR signal_name IS NULL OR signal_data IS NULL THEN
        RETURN NULL;
    END IF;
    IF instance_id = '' THEN
        RAISE EXCEPTION 'Instance ID cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    IF signal_name = '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._signal_v2(df._ticket(), instance_id, signal_name, signal_data, expected_resource_version);
END
$$;

-- Register / unregister the calling session as waiting for instances to
-- finish (the Python client LISTENs on durable_done meanwhile).  Only ever
-- the caller's own backend, so anyone may call them.  PL/pgSQL (0.3.0): as
-- LANGUAGE sql functions with a SET clause they planned their statements over
-- pg_stat_activity again at every call (about 2 ms).
CREATE FUNCTION df._wait_begin_v1() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM df.waiters AS w
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = w.pid);
    INSERT INTO df.waiters (pid, backend_start)
    VALUES (pg_catalog.pg_backend_pid(),
            (SELECT a.backend_start FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = pg_catalog.pg_backend_pid()))
    ON CONFLICT (pid) DO UPDATE SET backend_start = EXCLUDED.backend_start, since = pg_catalog.clock_timestamp();
END
$$;

CREATE FUNCTION df._wait_end_v1() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM df.waiters AS w WHERE w.pid = pg_catalog.pg_backend_pid();
END
$$;

-- An instance finished: wake waiting clients, if there are any (at most one
-- NOTIFY per transaction; the payload tells other roles nothing).
CREATE FUNCTION df._notify_done() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM df.waiters) THEN
        PERFORM pg_catalog.pg_notify('durable_done', '');
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION df._notify_done() FROM PUBLIC;

-- A function cannot receive notifications while it runs, so it polls, with
-- a short interval that grows (10 ms up to 250 ms).
CREATE FUNCTION df.await_instance(instance_id text, timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_deadline timestamptz;
    v_status   text;
    v_mine     boolean;
    v_pause    double precision := 0.01;
BEGIN
    IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.await_instance() cannot be called inside a workflow - a step waiting for an instance '
                        'would hold its worker slot' USING ERRCODE = 'DF013';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    SELECT i.status, i.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned())
      INTO v_status, v_mine
      FROM df.instances AS i WHERE i.id = await_instance.instance_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found: %', instance_id USING ERRCODE = 'DF003';
    END IF;
    IF v_status NOT IN ('completed', 'failed', 'cancelled') THEN
        IF v_mine THEN
            RAISE EXCEPTION 'df.await_instance(): instance % was started in this transaction, which must commit '
                            'before a worker can run it', instance_id USING ERRCODE = 'DF001';
        END IF;
        IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'df.await_instance(): cannot wait inside a % transaction: its snapshot never sees '
                            'the instance finish', pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
    v_deadline := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => timeout_seconds);
    LOOP
        IF v_status IN ('completed', 'failed', 'cancelled') THEN
            -- Remembered so that passing this value to a builder in the same statement is refused.
            RETURN df._note_step_helper_v1('df.await_instance', v_status);
        END IF;
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'Timeout after %s waiting for instance % (status: %). The instance is still running; '
                            'call df.await_instance() again or check df.status().', timeout_seconds, instance_id, v_status
                USING ERRCODE = 'DF011';
        END IF;
        PERFORM pg_catalog.pg_sleep(LEAST(v_pause,
            EXTRACT(epoch FROM v_deadline - pg_catalog.clock_timestamp())::double precision));
        v_pause := LEAST(v_pause * 1.5, 0.25);
        SELECT i.status INTO v_status FROM df.instances AS i WHERE i.id = await_instance.instance_id;
    END LOOP;
END
$$;

CREATE FUNCTION df.wait_for_completion(instance_id text, timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE WARNING 'df.wait_for_completion() is deprecated; use df.await_instance() instead';
    RETURN df.await_instance(instance_id, timeout_seconds);
END
$$;

-- ---------------------------------------------------------------------------
-- Compare-and-swap for clients (like HTTP If-Match) and instance metadata.
-- Every client-facing mutation takes an optional expected_resource_version:
-- when given, a mismatch raises DF004 naming the current version and changes
-- nothing; when NULL the change applies to the current version.
-- ---------------------------------------------------------------------------

CREATE FUNCTION df._expect_version(p_instance df.instances, p_expected bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_expected IS NOT NULL AND p_expected <> p_instance.resource_version THEN
        RAISE EXCEPTION 'resource_version mismatch for instance %: expected %, current %',
            p_instance.id, p_expected, p_instance.resource_version
            USING ERRCODE = 'DF004',
                  DETAIL = pg_catalog.format('current resource_version: %s', p_instance.resource_version),
                  HINT = 'Read the instance again and retry with its current resource_version.';
    END IF;
END
$$;

-- RFC 7386 JSON merge patch: objects merge key by key, null deletes a key,
-- anything else replaces.
CREATE FUNCTION df._merge_patch(p_target jsonb, p_patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
    v_key    text;
    v_value  jsonb;
BEGIN
    IF pg_catalog.jsonb_typeof(p_patch) IS DISTINCT FROM 'object' THEN
        RETURN p_patch;
    END IF;
    v_result := CASE WHEN pg_catalog.jsonb_typeof(p_target) = 'object' THEN p_target ELSE '{}'::jsonb END;
    FOR v_key, v_value IN SELECT e.key, e.value FROM pg_catalog.jsonb_each(p_patch) AS e LOOP
        IF pg_catalog.jsonb_typeof(v_value) = 'null' THEN
            v_result := v_result - v_key;
        ELSE
            v_result := pg_catalog.jsonb_set(v_result, ARRAY[v_key], df._merge_patch(v_result -> v_key, v_value));
        END IF;
    END LOOP;
    RETURN v_result;
END
$$;

CREATE FUNCTION df._set_metadata_v1(p_ticket uuid, p_instance_id text, p_patch jsonb, p_expected bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r       df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
    v_doc   jsonb;
    v_extra text;
    v_version bigint;
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF pg_catalog.jsonb_typeof(p_patch) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'df.set_metadata: patch must be a JSON object such as {"labels": {"team": "a"}}'
            USING ERRCODE = 'DF001';
    END IF;
    SELECT pg_catalog.string_agg(k, ', ') INTO v_extra
      FROM pg_catalog.jsonb_object_keys(p_patch) AS k WHERE k NOT IN ('labels', 'annotations');
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION 'df.set_metadata: only "labels" and "annotations" can be patched (got %)', v_extra
            USING ERRCODE = 'DF001';
    END IF;
    v_doc := df._merge_patch(pg_catalog.jsonb_build_object('labels', r.labels, 'annotations', r.annotations), p_patch);
    IF pg_catalog.jsonb_typeof(v_doc -> 'labels') IS DISTINCT FROM 'object'
       OR pg_catalog.jsonb_typeof(v_doc -> 'annotations') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'df.set_metadata: labels and annotations must stay JSON objects (use null to delete a key)'
            USING ERRCODE = 'DF001';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.jsonb_each(v_doc -> 'labels') AS e WHERE pg_catalog.jsonb_typeof(e.value) <> 'string') THEN
        RAISE EXCEPTION 'df.set_metadata: label values must be strings' USING ERRCODE = 'DF001';
    END IF;
    UPDATE df.instances AS i SET labels = v_doc -> 'labels', annotations = v_doc -> 'annotations'
     WHERE i.id = r.id
    RETURNING i.resource_version INTO v_version;
    RETURN v_version;
END
$$;

CREATE FUNCTION df.set_metadata(instance_id text, patch jsonb, expected_resource_version bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL OR patch IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN df._set_metadata_v1(df._ticket(), instance_id, patch, expected_resource_version);
END
$$;

CREATE FUNCTION df._delete_instance_v1(p_ticket uuid, p_instance_id text, p_expected bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF r.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'Instance % is still %: cancel it or wait for it to finish before deleting it', r.id, r.status
            USING ERRCODE = 'DF001';
    END IF;
    DELETE FROM df.instances AS i WHERE i.id = r.id;
    RETURN true;
END
$$;

CREATE FUNCTION df.delete_instance(instance_id text, expected_resource_version bigint DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN df._delete_instance_v1(df._ticket(), instance_id, expected_resource_version);
END
$$;

-- ---------------------------------------------------------------------------
-- Monitoring: df.instance_nodes (with inferred status), df.instance_executions,
-- df.metrics, df.explain.
--
-- The reads are SECURITY INVOKER: they read df.instances / df.nodes as the
-- caller, so row-level security decides what a role sees, and an unknown or
-- invisible instance gives no rows.  df.metrics is the one engine-wide
-- (SECURITY DEFINER) function; PUBLIC cannot execute it.
-- ---------------------------------------------------------------------------


-- The root-loop generation (execution) a node's status_details stamp belongs
-- to: the <gen> right after the instance id in "<id>::<gen>[::<child>::<gen>...]",
-- or NULL when the node carries no well-formed stamp.
CREATE FUNCTION df._stamp_execution_v1(p_status_details jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_status_details ->> 'execution_id' ~ '^[^:]+::[0-9]{1,18}(::[^:]+::[0-9]{1,18})*$'
                THEN pg_catalog.split_part(p_status_details ->> 'execution_id', '::', 2)::bigint END
$$;

-- ---------------------------------------------------------------------------
-- Inferred status (PGD_REFERENCE 3.2), the one implementation behind
-- df.instance_nodes and df.explain.
--
-- A stamp "<scope>::<gen>" names the generation of a scope (the instance id,
-- or "<parent scope>::<parent gen>::<child root node id>" for each JOIN/RACE
-- branch and non-root loop child).  A stamp is superseded when its gen is
-- below the highest gen stamped in its scope, or when any enclosing
-- "<scope>::<gen>" prefix is.  Walking down from the root we carry A, the
-- nearest terminal non-superseded ancestor, and G, the ancestor with the
-- highest gen:
--   terminal & current      -> stored status
--   terminal & superseded   -> 'skipped' (from A) if A, else 'pending' (from G)
--   not terminal            -> 'skipped' (from A) if A, else stored status
--   unreachable from root   -> stored status
-- So an untaken IF arm, the rest of a failed THEN, an unfinished RACE loser
-- and the unfinished siblings of a failed JOIN branch read 'skipped', and a
-- previous loop iteration reads 'pending' (the engine also resets a loop's
-- body to 'pending' when a new iteration starts, which reads the same).
-- 'skipped' is never stored.
--
-- Edges are the node's own child references (left, right, IF/LOOP
-- condition, JOIN extras) that point at a node whose parent_id is this
-- node, so every node is reached at most once and a damaged graph cannot
-- make the walk explode; a depth bound stops cycles.
-- ---------------------------------------------------------------------------
CREATE FUNCTION df._inferred_nodes_v1(instance_id text)
RETURNS TABLE(node_id text, node_type text, query text, result_name text, left_node text, right_node text,
              condition_node text, extra_nodes text[], status text, result jsonb, status_details jsonb,
              inferred_status text, inferred_status_from_ancestor_id text, updated_at timestamptz,
              resource_version bigint, result_text text)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
WITH RECURSIVE node AS MATERIALIZED (
    SELECT n.id::text AS id, n.parent_id::text AS parent_id, n.node_type, n.query, n.result_name,
           n.left_node::text AS left_node, n.right_node::text AS right_node,
           CASE WHEN n.node_type IN ('IF', 'LOOP')
                THEN pg_catalog.substring(n.query, '"condition_node"\s*:\s*"([0-9a-f]{8})"') END AS condition_node,
           CASE WHEN n.node_type = 'JOIN' THEN
               ARRAY(SELECT m.v[1]
                       FROM pg_catalog.regexp_matches(
                                pg_catalog.substring(n.query, '"extra_nodes"\s*:\s*\[([^]]*)\]'),
                                '"([0-9a-f]{8})"', 'g') WITH ORDINALITY AS m(v, k)
                      ORDER BY m.k)
           ELSE '{}'::text[] END AS extra_nodes,
           n.status, n.result, n.status_details, n.updated_at, n.resource_version, n.result_text,
           n.status IN ('completed', 'failed') AS terminal,
           CASE WHEN n.status_details ->> 'execution_id' ~ '^[^:]+::[0-9]{1,18}(::[^:]+::[0-9]{1,18})*$'
                THEN pg_catalog.string_to_array(n.status_details ->> 'execution_id', '::') END AS parts
      FROM df.nodes AS n
     WHERE n.instance_id = $1
), stamp AS (
    -- Every "<scope>::<gen>" level of every stamp; own = the node's own level.
    SELECT node.id, pg_catalog.array_to_string(node.parts[1:2 * j - 1], '::') AS scope,
           node.parts[2 * j]::bigint AS gen, j = pg_catalog.cardinality(node.parts) / 2 AS own
      FROM node, pg_catalog.generate_series(1, pg_catalog.cardinality(node.parts) / 2) AS j
     WHERE node.parts IS NOT NULL
), scope_max AS (
    SELECT s.scope, pg_catalog.max(s.gen) AS max_gen FROM stamp AS s WHERE s.own GROUP BY s.scope
), info AS MATERIALIZED (
    SELECT node.*, own.gen,
           EXISTS (SELECT 1 FROM stamp AS s JOIN scope_max AS m ON m.scope = s.scope
                    WHERE s.id = node.id AND s.gen < m.max_gen) AS superseded
      FROM node LEFT JOIN stamp AS own ON own.id = node.id AND own.own
), walk(id, a_id, g_id, g_gen, depth) AS (
    SELECT i.root_node::text, NULL::text, NULL::text, NULL::bigint, 0
      FROM df.instances AS i
     WHERE i.id = $1
    UNION ALL
    SELECT c.id,
           CASE WHEN p.terminal AND NOT p.superseded THEN p.id ELSE w.a_id END,
           CASE WHEN p.gen > COALESCE(w.g_gen, -1) THEN p.id ELSE w.g_id END,
           CASE WHEN p.gen > COALESCE(w.g_gen, -1) THEN p.gen ELSE w.g_gen END,
           w.depth + 1
      FROM walk AS w
      JOIN info AS p ON p.id = w.id
      JOIN info AS c ON c.parent_id = p.id
                    AND c.id = ANY (ARRAY[p.left_node, p.right_node, p.condition_node] || p.extra_nodes)
     WHERE w.depth < 10000
), reached AS (
    SELECT DISTINCT ON (w.id) w.* FROM walk AS w ORDER BY w.id, w.depth
)
SELECT i.id, i.node_type, i.query, i.result_name, i.left_node, i.right_node, i.condition_node, i.extra_nodes,
       i.status, i.result, i.status_details,
       CASE WHEN r.id IS NULL OR (i.terminal AND NOT i.superseded) THEN i.status
            WHEN r.a_id IS NOT NULL THEN 'skipped'
            WHEN i.terminal THEN 'pending'
            ELSE i.status END,
       CASE WHEN r.id IS NULL OR (i.terminal AND NOT i.superseded) THEN NULL
            WHEN r.a_id IS NOT NULL THEN r.a_id
            WHEN i.terminal THEN r.g_id END,
       i.updated_at, i.resource_version, i.result_text
  FROM info AS i
  LEFT JOIN reached AS r ON r.id = i.id
 ORDER BY r.depth NULLS LAST, i.id
$$;

CREATE FUNCTION df.instance_nodes(instance_id_param text)
RETURNS TABLE(node_id text, node_type text, query text, result_name text, left_node text, right_node text,
              status text, result text, status_details text, inferred_status text,
              inferred_status_from_ancestor_id text, updated_at timestamptz, resource_version bigint)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.node_id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, n.status,
           n.result::text, n.status_details::text, n.inferred_status, n.inferred_status_from_ancestor_id,
           n.updated_at, n.resource_version
      FROM df._inferred_nodes_v1(instance_id_param) AS n
$$;

-- pg_durable's compatibility form: the argument is ignored, execution_id is always 1.
CREATE FUNCTION df.instance_nodes(instance_id_param text, _last_n_executions integer)
RETURNS TABLE(execution_id bigint, node_id text, node_type text, query text, result_name text, left_node text,
              right_node text, status text, result text, updated_at timestamptz)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 1::bigint, n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text,
           n.status, n.result::text, n.updated_at
      FROM df.nodes AS n
     WHERE n.instance_id = instance_id_param
$$;

-- ---------------------------------------------------------------------------
-- df.instance_executions: one row per execution (root-loop generation),
-- newest first.
--
-- Only the current generation (df.instances.execution_count) is kept in
-- detail: a new root-loop iteration resets the body's nodes.  So:
--   * the current execution: status from the instance (Running, Completed,
--     Failed, Cancelled); output as df.instance_info shows it; duration 0
--     while unfinished, else from its start to completed_at (updated_at for
--     failed/cancelled).  Its start: a root loop's iteration start (the
--     engine keeps it in the LOOP node's state.started_at); else created_at
--     for execution 1; else the earliest change of a node stamped with this
--     generation;
--     event_count = 1 (started) + 1 per node of this generation that started
--     + 1 per node that finished + 1 if the instance finished (nodes without
--     a stamp count for the current execution);
--   * earlier executions: status 'ContinuedAsNew', and event_count,
--     duration_ms and output NULL: they are not kept, and NULL says
--     "unknown" where a number would be made up;
--   * a pending instance (no worker has started it) has no execution yet.
-- ---------------------------------------------------------------------------
CREATE FUNCTION df.instance_executions(instance_id text, limit_count integer DEFAULT 5)
RETURNS TABLE(execution_id bigint, status text, event_count bigint, duration_ms bigint, output text)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r        df.instances;
    v_events bigint;
    v_start  timestamptz;
    v_loop   timestamptz;
    v_end    timestamptz;
BEGIN
    IF limit_count < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = 'DF009';
    END IF;
    IF limit_count > 10000 THEN
        RAISE EXCEPTION 'limit_count must be at most 10000' USING ERRCODE = 'DF009';
    END IF;
    SELECT * INTO r FROM df.instances AS i WHERE i.id = instance_executions.instance_id;
    IF NOT FOUND OR r.status = 'pending' THEN
        RETURN;
    END IF;

    SELECT 1 + pg_catalog.count(*) FILTER (WHERE n.status IN ('running', 'completed', 'failed'))
             + pg_catalog.count(*) FILTER (WHERE n.status IN ('completed', 'failed')),
           pg_catalog.min(n.updated_at)
      INTO v_events, v_start
      FROM df.nodes AS n
     WHERE n.instance_id = r.id
       AND COALESCE(df._stamp_execution_v1(n.status_details),
                    CASE WHEN n.status <> 'pending' THEN r.execution_count END) = r.execution_count;
    IF r.status IN ('completed', 'failed', 'cancelled') THEN
        v_events := v_events + 1;
        v_end := COALESCE(r.completed_at, r.updated_at);
    END IF;
    IF r.execution_count = 1 OR v_start IS NULL THEN
        v_start := r.created_at;
    END IF;
    SELECT (n.state ->> 'started_at')::timestamptz INTO v_loop
      FROM df.nodes AS n
     WHERE n.instance_id = r.id AND n.id = r.root_node AND n.node_type = 'LOOP'
       AND n.state ->> 'started_at' ~ '^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:\d\d)?|Z)$';
    v_start := COALESCE(v_loop, v_start);

    execution_id := r.execution_count;
    status := CASE r.status WHEN 'running' THEN 'Running' WHEN 'completed' THEN 'Completed'
                            WHEN 'failed' THEN 'Failed' WHEN 'cancelled' THEN 'Cancelled' ELSE r.status END;
    event_count := v_events;
    duration_ms := CASE WHEN v_end IS NULL THEN 0
                        ELSE GREATEST(0, pg_catalog.floor(EXTRACT(epoch FROM v_end - v_start) * 1000))::bigint END;
    output := CASE WHEN r.status IN ('completed', 'failed') THEN r.output END;
    RETURN NEXT;

    RETURN QUERY
    SELECT g, 'ContinuedAsNew'::text, NULL::bigint, NULL::bigint, NULL::text
      FROM pg_catalog.generate_series(r.execution_count - 1,
                                      GREATEST(1, r.execution_count - limit_count + 1), -1) AS g;
END
$$;

-- ---------------------------------------------------------------------------
-- df.metrics: engine-wide counts (SECURITY DEFINER; EXECUTE is granted only
-- through df.grant_usage(..., with_grant => true)).  Executions and events
-- are counted as df.instance_executions derives them (earlier executions'
-- events are unknown and not counted).  id_space_used: the fraction of the
-- 8-hex instance id space in use (CONTRACT.md 4).
-- ---------------------------------------------------------------------------
CREATE FUNCTION df.metrics()
RETURNS TABLE(total_instances bigint, running_instances bigint, completed_instances bigint,
              failed_instances bigint, total_executions bigint, total_events bigint, id_space_used numeric)
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH inst AS (
        SELECT pg_catalog.count(*) AS total,
               pg_catalog.count(*) FILTER (WHERE i.status = 'running') AS running,
               pg_catalog.count(*) FILTER (WHERE i.status = 'completed') AS completed,
               pg_catalog.count(*) FILTER (WHERE i.status = 'failed') AS failed,
               COALESCE(pg_catalog.sum(i.execution_count) FILTER (WHERE i.status <> 'pending'), 0)::bigint AS executions,
               pg_catalog.count(*) FILTER (WHERE i.status <> 'pending')
             + pg_catalog.count(*) FILTER (WHERE i.status IN ('completed', 'failed', 'cancelled')) AS events
          FROM df.instances AS i
    ), node AS (
        SELECT pg_catalog.count(*) FILTER (WHERE n.status IN ('running', 'completed', 'failed'))
             + pg_catalog.count(*) FILTER (WHERE n.status IN ('completed', 'failed')) AS events
          FROM df.nodes AS n
          JOIN df.instances AS i ON i.id = n.instance_id
         WHERE i.status <> 'pending'
           AND COALESCE(df._stamp_execution_v1(n.status_details),
                        CASE WHEN n.status <> 'pending' THEN i.execution_count END) = i.execution_count
    )
    SELECT inst.total, inst.running, inst.completed, inst.failed, inst.executions, inst.events + node.events,
           inst.total::numeric / COALESCE(df._setting('id_space')::numeric, 4294967296)
      FROM inst, node
$$;
REVOKE EXECUTE ON FUNCTION df.metrics() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- df.explain (PGD_REFERENCE 3.4, PGD_FIXTURES 3).  One difference from
-- pg_durable (CONTRACT.md 9): texts are cut by characters, not bytes, so
-- multi-byte text never makes it fail.
-- ---------------------------------------------------------------------------

-- Rust's char::is_whitespace set, for trim / trim_end.
CREATE FUNCTION df._explain_trim_v1(p_text text, p_both boolean) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.regexp_replace(
               CASE WHEN p_both
                    THEN pg_catalog.regexp_replace(p_text,
                             U&'^[\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000]+', '')
                    ELSE p_text END,
               U&'[\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000]+$', '')
$$;

-- Cut a text to p_max characters: longer ones keep p_max - 3 and get "...".
CREATE FUNCTION df._explain_cut_v1(p_text text, p_max integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.length(p_text) > p_max THEN pg_catalog.left(p_text, p_max - 3) || '...'
                ELSE p_text END
$$;

-- The final layout: trim the end, split into lines, right-pad every line
-- to the longest line (in characters) + 4, join with \n.
CREATE FUNCTION df._explain_pad_v1(p_text text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH line AS (
        SELECT pg_catalog.regexp_replace(l.line, E'\r$', '') AS line, l.k
          FROM pg_catalog.string_to_table(df._explain_trim_v1(p_text, false), E'\n') WITH ORDINALITY AS l(line, k)
    ), width AS (
        SELECT pg_catalog.max(pg_catalog.length(line.line)) + 4 AS w FROM line
    )
    SELECT COALESCE(pg_catalog.string_agg(pg_catalog.rpad(line.line, width.w), E'\n' ORDER BY line.k), '')
      FROM line, width
$$;

-- A JSON object parsed from text, or NULL when it is not one.
CREATE FUNCTION df._explain_json_object_v1(p_text text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_text IS NULL OR pg_catalog.left(df._explain_trim_v1(p_text, true), 1) <> '{' THEN
        RETURN NULL;
    END IF;
    BEGIN
        v := p_text::jsonb;
    EXCEPTION WHEN data_exception THEN
        RETURN NULL;
    END;
    RETURN CASE WHEN pg_catalog.jsonb_typeof(v) = 'object' THEN v END;
END
$$;

-- The text of one node.  p_node: {"t": type, "q": query, "n": result_name,
-- "c": condition child or null, "x": [extra children], "m": marker or null}.
CREATE FUNCTION df._explain_label_v1(p_node jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_type  text := p_node ->> 't';
    v_query text := p_node ->> 'q';
    v_cfg   jsonb;
    v_text  text;
BEGIN
    IF v_type IN ('WAIT_SCHEDULE', 'SIGNAL', 'HTTP', 'HTTP_MULTIPART', 'BREAK') THEN
        v_cfg := df._explain_json_object_v1(v_query);
    END IF;
    v_text := CASE v_type
        WHEN 'SQL' THEN 'SQL: ' || df._explain_cut_v1(COALESCE(v_query, ''), 50)
        WHEN 'SLEEP' THEN 'SLEEP ' || COALESCE(v_query, '') || 's'
        WHEN 'WAIT_SCHEDULE' THEN 'WAIT ''' || COALESCE(v_cfg ->> 'cron_expr', v_query, '') || ''''
        WHEN 'HTTP' THEN 'HTTP ' || COALESCE(v_cfg ->> 'method', '') || ' '
                         || df._explain_cut_v1(COALESCE(v_cfg ->> 'url', ''), 40)
        WHEN 'HTTP_MULTIPART' THEN 'HTTP_MULTIPART ' || COALESCE(v_cfg ->> 'method', '') || ' '
                                   || COALESCE(v_cfg ->> 'url', '')
        WHEN 'SIGNAL' THEN 'SIGNAL ''' || COALESCE(v_cfg ->> 'signal_name', '') || ''''
                           || COALESCE(' (' || (v_cfg ->> 'timeout_seconds') || 's)', '')
        WHEN 'LOOP' THEN CASE WHEN p_node ->> 'c' IS NOT NULL THEN 'LOOP (while)' ELSE 'LOOP (infinite)' END
        WHEN 'BREAK' THEN 'BREAK' || COALESCE(' ''' || df._explain_cut_v1(v_cfg ->> 'break_value', 20) || '''', '')
        WHEN 'JOIN' THEN 'JOIN (' || (2 + CASE WHEN pg_catalog.jsonb_typeof(p_node -> 'x') = 'array'
                                               THEN pg_catalog.jsonb_array_length(p_node -> 'x') ELSE 0 END) || ')'
        ELSE COALESCE(v_type, '?')
    END;
    IF v_type IS DISTINCT FROM 'RACE' AND p_node ->> 'n' IS NOT NULL THEN
        v_text := v_text || ' |=> ''' || (p_node ->> 'n') || '''';
    END IF;
    IF p_node ->> 'm' IS NOT NULL THEN
        v_text := v_text || ' ' || (p_node ->> 'm');
    END IF;
    RETURN v_text;
END
$$;

-- The tree as lines (not yet padded).  p_nodes maps a node key to its
-- p_node object (see df._explain_label_v1) plus "l", "r": left/right keys.
-- Iterative (an explicit stack), so deep graphs cost no recursion.
--   * THEN chains are flattened: the first item takes the THEN's connector,
--     the others "→ "; an item's own children sit at the THEN's prefix + 4.
--   * Any other node: prefix + connector ("" at the root, "└─" last,
--     "├─" not last) + text; its children at "    " (root), else prefix +
--     "    " (last) or "│   " (not last), in labelled blocks whose child is
--     2 further in: LOOP "↻ body:" / "? while:", IF "? condition:" (not for
--     if_rows) / "✓ then:" / "✗ else:", JOIN/RACE "║ branch <n>:".
CREATE FUNCTION df._explain_tree_v1(p_nodes jsonb, p_root text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- the stack: kind 'N' node (key, prefix, last, root), 'C' children block (key, prefix), 'L' line (text)
    s_kind   text[] := ARRAY['N'];
    s_key    text[] := ARRAY[p_root];
    s_text   text[] := ARRAY[''];
    s_last   boolean[] := ARRAY[true];
    s_root   boolean[] := ARRAY[true];
    v_top    integer := 1;
    -- the tasks one step produces, in order (pushed reversed)
    t_kind   text[];
    t_key    text[];
    t_text   text[];
    t_last   boolean[];
    v_lines  text[] := '{}';
    v_budget integer := 2 * (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(p_nodes)) + 16;
    v_kind   text;
    v_key    text;
    v_prefix text;
    v_last   boolean;
    v_root   boolean;
    v_node   jsonb;
    v_type   text;
    v_conn   text;
    v_items  text[];
    v_todo   text[];
    v_item   text;
    v_kids   text[];
    i        integer;
BEGIN
    WHILE v_top > 0 LOOP
        v_kind := s_kind[v_top]; v_key := s_key[v_top]; v_prefix := s_text[v_top];
        v_last := s_last[v_top]; v_root := s_root[v_top];
        v_top := v_top - 1;
        IF v_kind = 'L' THEN
            v_lines := v_lines || v_prefix;
            CONTINUE;
        END IF;
        v_node := p_nodes -> v_key;
        CONTINUE WHEN v_node IS NULL;
        v_budget := v_budget - 1;
        EXIT WHEN v_budget < 0;
        v_type := v_node ->> 't';
        v_conn := CASE WHEN v_root THEN '' WHEN v_last THEN '└─' ELSE '├─' END;
        t_kind := '{}'; t_key := '{}'; t_text := '{}'; t_last := '{}';

        IF v_kind = 'N' AND v_type = 'THEN' THEN
            -- flatten the chain, left to right
            v_items := '{}';
            v_todo := ARRAY[v_key];
            WHILE pg_catalog.cardinality(v_todo) > 0 AND v_budget >= 0 LOOP
                v_item := v_todo[pg_catalog.cardinality(v_todo)];
                v_todo := v_todo[1:pg_catalog.cardinality(v_todo) - 1];
                CONTINUE WHEN p_nodes -> v_item IS NULL;
                IF p_nodes -> v_item ->> 't' = 'THEN' THEN
                    v_budget := v_budget - 1;
                    v_todo := v_todo || pg_catalog.array_remove(ARRAY[p_nodes -> v_item ->> 'r', p_nodes -> v_item ->> 'l'], NULL);
                ELSE
                    v_items := v_items || v_item;
                END IF;
            END LOOP;
            FOR i IN 1 .. COALESCE(pg_catalog.cardinality(v_items), 0) LOOP
                t_kind := t_kind || 'L'::text; t_key := t_key || NULL::text; t_last := t_last || false;
                t_text := t_text || (v_prefix || CASE WHEN i = 1 THEN v_conn ELSE '→ ' END
                                     || df._explain_label_v1(p_nodes -> v_items[i]));
                IF p_nodes -> v_items[i] ->> 't' IN ('LOOP', 'IF', 'JOIN', 'RACE') THEN
                    t_kind := t_kind || 'C'::text; t_key := t_key || v_items[i]; t_last := t_last || false;
                    t_text := t_text || (v_prefix || '    ');
                END IF;
            END LOOP;
        ELSIF v_kind = 'N' THEN
            v_lines := v_lines || (v_prefix || v_conn || df._explain_label_v1(v_node));
            IF v_type IN ('LOOP', 'IF', 'JOIN', 'RACE') THEN
                t_kind := ARRAY['C']; t_key := ARRAY[v_key]; t_last := ARRAY[false];
                t_text := ARRAY[CASE WHEN v_root THEN '    '
                                     ELSE v_prefix || CASE WHEN v_last THEN '    ' ELSE '│   ' END END];
            END IF;
        ELSE
            -- a children block at prefix v_prefix
            IF v_type = 'LOOP' THEN
                t_kind := ARRAY['L', 'N']; t_key := ARRAY[NULL, v_node ->> 'l'];
                t_text := ARRAY[v_prefix || '↻ body:', v_prefix || '  ']; t_last := ARRAY[false, true];
                IF v_node ->> 'c' IS NOT NULL THEN
                    t_kind := t_kind || ARRAY['L', 'N']; t_key := t_key || ARRAY[NULL, v_node ->> 'c'];
                    t_text := t_text || ARRAY[v_prefix || '? while:', v_prefix || '  '];
                    t_last := t_last || ARRAY[false, true];
                END IF;
            ELSIF v_type = 'IF' THEN
                IF v_node ->> 'c' IS NOT NULL THEN
                    t_kind := ARRAY['L', 'N']; t_key := ARRAY[NULL, v_node ->> 'c'];
                    t_text := ARRAY[v_prefix || '? condition:', v_prefix || '  ']; t_last := ARRAY[false, true];
                END IF;
                t_kind := t_kind || ARRAY['L', 'N', 'L', 'N'];
                t_key := t_key || ARRAY[NULL, v_node ->> 'l', NULL, v_node ->> 'r'];
                t_text := t_text || ARRAY[v_prefix || '✓ then:', v_prefix || '  ', v_prefix || '✗ else:', v_prefix || '  '];
                t_last := t_last || ARRAY[false, true, false, true];
            ELSE
                -- JOIN / RACE branches: left, right, then extras (JOIN)
                v_kids := ARRAY[v_node ->> 'l', v_node ->> 'r'];
                IF v_type = 'JOIN' AND pg_catalog.jsonb_typeof(v_node -> 'x') = 'array' THEN
                    v_kids := v_kids || ARRAY(SELECT e.v FROM pg_catalog.jsonb_array_elements_text(v_node -> 'x')
                                                            WITH ORDINALITY AS e(v, k) ORDER BY e.k);
                END IF;
                FOR i IN 1 .. pg_catalog.cardinality(v_kids) LOOP
                    t_kind := t_kind || ARRAY['L', 'N']; t_key := t_key || ARRAY[NULL, v_kids[i]];
                    t_text := t_text || ARRAY[v_prefix || '║ branch ' || i || ':', v_prefix || '  '];
                    t_last := t_last || ARRAY[false, i = pg_catalog.cardinality(v_kids)];
                END LOOP;
            END IF;
        END IF;

        FOR i IN REVERSE COALESCE(pg_catalog.cardinality(t_kind), 0) .. 1 LOOP
            v_top := v_top + 1;
            s_kind[v_top] := t_kind[i]; s_key[v_top] := t_key[i]; s_text[v_top] := t_text[i];
            s_last[v_top] := t_last[i]; s_root[v_top] := false;
        END LOOP;
    END LOOP;
    RETURN v_lines;
END
$$;

-- The p_nodes map of df._explain_tree_v1 from an instance's stored nodes;
-- with markers (instance mode) or without (the graph df.start stored).
CREATE FUNCTION df._explain_stored_nodes_v1(p_instance_id text, p_markers boolean) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_object_agg(n.node_id, pg_catalog.jsonb_build_object(
               't', n.node_type, 'q', n.query, 'n', n.result_name, 'l', n.left_node, 'r', n.right_node,
               'c', n.condition_node, 'x', pg_catalog.to_jsonb(n.extra_nodes),
               'm', CASE WHEN p_markers THEN
                        CASE n.inferred_status WHEN 'completed' THEN '✓' WHEN 'failed' THEN '✗'
                             WHEN 'running' THEN '⏳' WHEN 'pending' THEN '○' WHEN 'skipped' THEN '⊘' END
                    END))
      FROM df._inferred_nodes_v1(p_instance_id) AS n
$$;

-- Dry run of an envelope: validate and flatten it exactly as df.start would
-- (df._flatten_v1), then draw it.  A graph error comes back as text.
CREATE FUNCTION df._explain_envelope_v1(p_envelope jsonb) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nodes jsonb;
    v_root  text;
BEGIN
    BEGIN
        SELECT pg_catalog.jsonb_object_agg(f.ord::text, pg_catalog.jsonb_build_object(
                   't', f.node_type, 'q', f.query, 'n', f.result_name,
                   'l', f.left_ord::text, 'r', f.right_ord::text, 'c', f.cond_ord::text,
                   'x', (SELECT pg_catalog.jsonb_agg(e.v::text ORDER BY e.k)
                           FROM pg_catalog.unnest(f.extra_ords) WITH ORDINALITY AS e(v, k)),
                   'm', NULL)),
               pg_catalog.min(f.ord) FILTER (WHERE f.parent_ord IS NULL)::text
          INTO v_nodes, v_root
          FROM df._flatten_v1(p_envelope) AS f;
    EXCEPTION WHEN SQLSTATE 'DF002' THEN
        RETURN SQLERRM;
    END;
    RETURN df._explain_pad_v1(pg_catalog.array_to_string(df._explain_tree_v1(v_nodes, v_root), E'\n'));
END
$$;

-- Instance mode: header, blank line, tree with inferred-status markers.
-- The Status line shows what pg_durable's engine would report (Running,
-- Completed, Failed, Cancelled) once a worker has picked the instance up,
-- and the df status ('pending') before; Output is df.instance_info's.
CREATE FUNCTION df._explain_instance_v1(p_instance_id text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r       df.instances;
    v_nodes jsonb;
    v_head  text;
BEGIN
    SELECT * INTO r FROM df.instances AS i WHERE i.id = p_instance_id;
    IF NOT FOUND THEN
        RETURN pg_catalog.format('Instance ''%s'' not found', p_instance_id);
    END IF;
    v_nodes := df._explain_stored_nodes_v1(r.id, true);
    IF v_nodes IS NULL THEN
        RETURN pg_catalog.format('No nodes found for instance ''%s''', r.id);
    END IF;
    v_head := 'Instance: ' || r.id || COALESCE(' (' || r.label || ')', '') || E'\n'
           || 'Status:   ' || CASE r.status
                  WHEN 'completed' THEN '✓ Completed'
                  WHEN 'failed' THEN '✗ Failed'
                  WHEN 'cancelled' THEN '✗ Cancelled'
                  WHEN 'running' THEN '⏳ Running'
                  ELSE '○ ' || COALESCE(r.status, '') END || E'\n'
           || CASE WHEN r.status IN ('completed', 'failed') AND r.output IS NOT NULL
                   THEN 'Output:   ' || df._explain_cut_v1(r.output, 60) || E'\n' ELSE '' END
           || E'\n';
    RETURN df._explain_pad_v1(v_head || pg_catalog.array_to_string(df._explain_tree_v1(v_nodes, r.root_node), E'\n'));
END
$$;

-- df.explain(input).  Dispatch on the trimmed input:
--   8 hex characters         -> the instance, with inferred statuses
--   an envelope              -> dry run
--   ~> |=> ?> !> @> or "df." -> evaluate SELECT <input> as the caller, then dry run
--   a leading SQL keyword    -> one SQL node
--   else                     -> "Cannot explain input: ..."
-- The evaluation runs in a subtransaction that is always rolled back, so
-- whatever the expression wrote (df.start(...) included) is undone: when it
-- returns the id of an instance it started, the answer is the graph that
-- instance would have run.
CREATE FUNCTION df.explain(input text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_in      text := df._explain_trim_v1(input, true);
    v_env     jsonb;
    v_value   text;
    v_graph   jsonb;
    v_started text;
    v_done    boolean := false;
BEGIN
    IF v_in ~ '^[0-9a-fA-F]{8}$' THEN
        RETURN df._explain_instance_v1(v_in);
    END IF;

    v_env := df._explain_json_object_v1(v_in);
    IF pg_catalog.jsonb_typeof(v_env -> 'node_type') = 'string' THEN
        RETURN df._explain_envelope_v1(v_env);
    END IF;

    IF pg_catalog.strpos(v_in, '~>') > 0 OR pg_catalog.strpos(v_in, '|=>') > 0 OR pg_catalog.strpos(v_in, '?>') > 0
       OR pg_catalog.strpos(v_in, '!>') > 0 OR pg_catalog.strpos(v_in, '@>') > 0
       OR pg_catalog.strpos(v_in, 'df.') > 0 THEN
        BEGIN
            -- The caller's expression, with the caller's rights; names
            -- resolve as under a default search_path (the DSL operators live
            -- in pg_catalog, or in public where the installer was not a superuser).
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, "$user", public, pg_temp', true);
            EXECUTE 'SELECT ' || v_in INTO v_value;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            IF v_value ~ '^[0-9a-f]{8}$' THEN
                v_graph := df._explain_stored_nodes_v1(v_value, false);
                IF v_graph IS NOT NULL THEN
                    v_started := df._explain_pad_v1(pg_catalog.array_to_string(df._explain_tree_v1(
                        v_graph, (SELECT i.root_node::text FROM df.instances AS i WHERE i.id = v_value)), E'\n'));
                END IF;
            END IF;
            v_done := true;
            -- Undo everything the expression did.
            RAISE EXCEPTION 'durable: df.explain rollback' USING ERRCODE = 'DF099';
        EXCEPTION WHEN SQLSTATE 'DF099' THEN
            IF NOT v_done THEN
                RAISE;
            END IF;
        END;
        IF v_value IS NULL THEN
            RETURN 'Expression returned NULL';
        END IF;
        IF v_started IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM df.instances AS i WHERE i.id = v_value) THEN
            RETURN v_started;
        END IF;
        v_env := df._explain_json_object_v1(v_value);
        IF pg_catalog.jsonb_typeof(v_env -> 'node_type') = 'string' THEN
            RETURN df._explain_envelope_v1(v_env);
        END IF;
        -- Any other text is what df.start would run it as: one SQL step.
        RETURN df._explain_envelope_v1(pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', v_value));
    END IF;

    IF pg_catalog.upper(v_in) ~ '^(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN) ' THEN
        RETURN df._explain_envelope_v1(pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', v_in));
    END IF;

    RETURN 'Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.'
        || E'\n' || 'Hint: DSL expressions use df.*() functions and operators like ~>, |=>, &, |.';
END
$$;

-- The underscore helpers above keep PUBLIC EXECUTE: they are SECURITY
-- INVOKER (row-level security applies) and the public functions call them
-- as the caller.

-- ---------------------------------------------------------------------------
-- The worker's internal API.  Revoked from PUBLIC and granted to
-- durable_worker, except the two a step's own (submitter) connection calls,
-- which are guarded by the per-attempt secret instead.
--
-- Fencing: a worker holds an instance through a lease (df.instance_queue
-- lease_token, lease_expires_at, kept alive by heartbeats).  Every write
-- names the token; a worker whose lease expired and was taken over fails
-- with DF014 and writes nothing.  Node writes are compare-and-swap on
-- resource_version (DF004 on mismatch).
-- ---------------------------------------------------------------------------

CREATE FUNCTION df._worker_settings_v1() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT COALESCE(pg_catalog.jsonb_object_agg(s.key, s.value), '{}'::jsonb) FROM df.settings AS s $$;

CREATE FUNCTION df._worker_register_v1(p_worker uuid, p_hostname text, p_pid integer) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO df.workers (worker_id, hostname, pid) VALUES (p_worker, p_hostname, p_pid)
    ON CONFLICT (worker_id) DO UPDATE SET last_seen_at = pg_catalog.clock_timestamp();
$$;

-- Heartbeat: the worker is alive, idle or busy, and keeps its leases.
CREATE FUNCTION df._worker_heartbeat_v1(p_worker uuid, p_idle boolean) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lease interval := pg_catalog.make_interval(secs => COALESCE(df._setting('lease_seconds')::double precision, 30));
    v_count integer;
BEGIN
    UPDATE df.workers AS w SET last_seen_at = pg_catalog.clock_timestamp(), idle = p_idle
     WHERE w.worker_id = p_worker;
    IF NOT FOUND THEN
        INSERT INTO df.workers (worker_id, idle) VALUES (p_worker, p_idle);
    END IF;
    -- Row by row, skipping rows someone holds locked (a user transaction that
    -- signalled an instance and stays open): one tenant can stall the lease of
    -- its own instance, never the leases of everybody else on this worker.
    -- A skipped row cannot be taken over meanwhile: claims skip locked rows too.
    UPDATE df.instance_queue AS q SET lease_expires_at = pg_catalog.clock_timestamp() + v_lease
     WHERE q.instance_id IN (SELECT x.instance_id FROM df.instance_queue AS x
                              WHERE x.lease_worker = p_worker AND x.lease_expires_at > pg_catalog.clock_timestamp()
                                FOR NO KEY UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

CREATE FUNCTION df._worker_unregister_v1(p_worker uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE df.instance_queue AS q
       SET lease_token = NULL, lease_worker = NULL, lease_expires_at = NULL,
           wake_at = COALESCE(q.wake_at, pg_catalog.clock_timestamp())
     WHERE q.lease_worker = p_worker;
    DELETE FROM df.workers AS w WHERE w.worker_id = p_worker;
$$;

-- Claim up to p_limit due instances nobody holds.  SKIP LOCKED: a row being
-- checkpointed or claimed by someone else is simply not ours this time.
CREATE FUNCTION df._claim_v1(p_worker uuid, p_limit integer)
RETURNS TABLE(instance_id text, lease_token uuid, nudges bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT q.instance_id
          FROM df.instance_queue AS q
         WHERE q.wake_at <= GREATEST(df._now(), pg_catalog.clock_timestamp())
           AND (q.lease_expires_at IS NULL OR q.lease_expires_at < pg_catalog.clock_timestamp())
         ORDER BY q.wake_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE df.instance_queue AS q
       SET lease_token = pg_catalog.gen_random_uuid(), lease_worker = p_worker, claims = q.claims + 1,
           lease_expires_at = pg_catalog.clock_timestamp()
               + pg_catalog.make_interval(secs => COALESCE(df._setting('lease_seconds')::double precision, 30))
      FROM due
     WHERE q.instance_id = due.instance_id
    RETURNING q.instance_id::text, q.lease_token, q.nudges;
$$;

-- Lock the queue row of an instance the caller must hold; DF014 if it does not.
CREATE FUNCTION df._hold_lease(p_instance_id text, p_token uuid) RETURNS df.instance_queue
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q df.instance_queue;
BEGIN
    SELECT * INTO q FROM df.instance_queue AS x WHERE x.instance_id = p_instance_id FOR UPDATE;
    IF NOT FOUND OR q.lease_token IS DISTINCT FROM p_token OR q.lease_expires_at <= pg_catalog.clock_timestamp() THEN
        RAISE EXCEPTION 'durable: the lease on instance % was lost', p_instance_id USING ERRCODE = 'DF014';
    END IF;
    RETURN q;
END
$$;

-- Apply one decision of the engine: node updates (CAS on resource_version),
-- consumed signals, the instance's status.  Returns the instance status
-- after it ('cancelled' tells the worker to stop) and the new node versions.
CREATE FUNCTION df._apply_v1(p_instance_id text, p_token uuid, p_updates jsonb, p_consume jsonb,
                             p_status text, p_output text, p_execution_count bigint)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status   text;
    v_expected integer := COALESCE(pg_catalog.jsonb_array_length(p_updates), 0);
    v_done     integer;
    v_versions jsonb;
BEGIN
    PERFORM df._hold_lease(p_instance_id, p_token);
    SELECT i.status INTO v_status FROM df.instances AS i WHERE i.id = p_instance_id FOR UPDATE;
    IF v_status IN ('completed', 'failed', 'cancelled') THEN
        RETURN pg_catalog.jsonb_build_object('status', v_status, 'versions', '{}'::jsonb);
    END IF;

    WITH u AS (
        SELECT * FROM pg_catalog.jsonb_to_recordset(COALESCE(p_updates, '[]'::jsonb)) AS x(
            node_id text, expected_version bigint, status text, result_text text, wake_at timestamptz,
            state jsonb, status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = u.state, status_details = u.status_details
          FROM u
         WHERE n.instance_id = p_instance_id AND n.id = u.node_id AND n.resource_version = u.expected_version
        RETURNING n.id, n.resource_version
    )
    SELECT pg_catalog.count(*), COALESCE(pg_catalog.jsonb_object_agg(done.id, done.resource_version), '{}'::jsonb)
      INTO v_done, v_versions FROM done;
    IF v_done <> v_expected THEN
        RAISE EXCEPTION 'durable: a node of instance % changed since it was read', p_instance_id
            USING ERRCODE = 'DF004';
    END IF;

    UPDATE df.signals AS s SET consumed_by = c.node_id, consumed_at = pg_catalog.clock_timestamp()
      FROM pg_catalog.jsonb_to_recordset(COALESCE(p_consume, '[]'::jsonb)) AS c(signal_id bigint, node_id text)
     WHERE s.id = c.signal_id AND s.instance_id = p_instance_id;

    IF p_status IN ('completed', 'failed') THEN
        UPDATE df.instances AS i
           SET status = p_status, output = p_output, execution_count = p_execution_count,
               completed_at = CASE WHEN p_status = 'completed' THEN pg_catalog.now() END
         WHERE i.id = p_instance_id;
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id;
        DELETE FROM df.attempts AS a WHERE a.instance_id = p_instance_id;
        PERFORM df._notify_done();
        v_status := p_status;
    ELSIF v_status = 'pending' OR p_execution_count IS DISTINCT FROM
            (SELECT i.execution_count FROM df.instances AS i WHERE i.id = p_instance_id) THEN
        UPDATE df.instances AS i SET status = 'running', execution_count = COALESCE(p_execution_count, i.execution_count)
         WHERE i.id = p_instance_id;
        v_status := 'running';
    END IF;
    RETURN pg_catalog.jsonb_build_object('status', v_status, 'versions', v_versions);
END
$$;

-- Give an instance back: due again at p_wake_at (NULL: only a signal or
-- cancel wakes it), or at once if it was nudged while held.
CREATE FUNCTION df._release_v1(p_instance_id text, p_token uuid, p_wake_at timestamptz, p_nudges bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE df.instance_queue AS q
       SET lease_token = NULL, lease_worker = NULL, lease_expires_at = NULL,
           wake_at = CASE WHEN q.nudges <> p_nudges THEN pg_catalog.clock_timestamp() ELSE p_wake_at END
     WHERE q.instance_id = p_instance_id AND q.lease_token = p_token;
    DELETE FROM df.attempts AS a WHERE a.instance_id = p_instance_id AND a.lease_token = p_token;
    -- A cancelled instance needs no worker any more.
    DELETE FROM df.instance_queue AS q
     USING df.instances AS i
     WHERE q.instance_id = p_instance_id AND i.id = q.instance_id
       AND i.status IN ('completed', 'failed', 'cancelled');
END
$$;

-- The unconsumed signals of an instance, and whether it was nudged.
CREATE FUNCTION df._nudges_v1(p_instance_id text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT q.nudges FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id $$;

-- Start an attempt of a SQL step: a fresh secret (its hash stored here,
-- where no submitter can read it) and the backend that will run it.
CREATE FUNCTION df._begin_attempt_v1(p_instance_id text, p_node_id text, p_token uuid, p_secret_hash bytea,
                                     p_backend_pid integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_refusal text;
BEGIN
    PERFORM df._hold_lease(p_instance_id, p_token);
    -- Checked again at every attempt: the role may have changed since df.start.
    SELECT df._submitter_refusal(i.submitted_by) INTO v_refusal FROM df.instances AS i WHERE i.id = p_instance_id;
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION '%', v_refusal USING ERRCODE = 'DF005';
    END IF;
    INSERT INTO df.attempts AS a (instance_id, node_id, lease_token, secret_hash, backend_pid, backend_start)
    VALUES (p_instance_id, p_node_id, p_token, p_secret_hash, p_backend_pid,
            (SELECT s.backend_start FROM pg_catalog.pg_stat_activity AS s WHERE s.pid = p_backend_pid))
    ON CONFLICT (instance_id, node_id) DO UPDATE
       SET lease_token = EXCLUDED.lease_token, secret_hash = EXCLUDED.secret_hash,
           backend_pid = EXCLUDED.backend_pid, backend_start = EXCLUDED.backend_start,
           started_at = pg_catalog.clock_timestamp();
END
$$;

-- Why an instance's submitter may not run steps (any more), or NULL: asked
-- when a login as the submitter fails, so a role made NOLOGIN or dropped
-- fails the instance instead of being retried forever.
CREATE FUNCTION df._submitter_refusal_v1(p_instance_id text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df._submitter_refusal(i.submitted_by) FROM df.instances AS i WHERE i.id = p_instance_id $$;

-- The secret dies with any attempt that did not checkpoint.
CREATE FUNCTION df._end_attempt_v1(p_instance_id text, p_node_id text, p_token uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM df.attempts AS a
     WHERE a.instance_id = p_instance_id AND a.node_id = p_node_id AND a.lease_token = p_token;
$$;

-- Called on the SUBMITTER's connection, in the step's own transaction, right
-- after the step's statement: the effect and this checkpoint commit together
-- or not at all.  Only the holder of the attempt's secret, on the attempt's
-- backend, under a live lease, for a running node of a live instance, can
-- write it.  Locks the queue row FOR SHARE so that no takeover can claim the
-- instance between this check and the commit.  Compare-and-swap on the
-- version the node had when the attempt started, so a late result can never
-- land on a later run of the same node (a loop's next iteration).  Returns
-- the node's new resource_version.
CREATE FUNCTION df._checkpoint_v1(p_instance_id text, p_node_id text, p_secret text, p_result_text text,
                                  p_status_details jsonb, p_expected_version bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a df.attempts;
    v_version bigint;
BEGIN
    SELECT * INTO a FROM df.attempts AS x
     WHERE x.instance_id = p_instance_id AND x.node_id = p_node_id FOR UPDATE;
    IF NOT FOUND OR a.secret_hash <> pg_catalog.sha256(pg_catalog.convert_to(p_secret, 'UTF8'))
       OR a.backend_pid IS DISTINCT FROM pg_catalog.pg_backend_pid() THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    -- KEY SHARE: a takeover's claim (FOR UPDATE) waits for this transaction,
    -- heartbeats (non-key updates) do not.
    PERFORM 1 FROM df.instance_queue AS q
      WHERE q.instance_id = p_instance_id AND q.lease_token = a.lease_token
        AND q.lease_expires_at > pg_catalog.clock_timestamp()
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the lease was lost' USING ERRCODE = 'DF014';
    END IF;
    -- SHARE on the instance orders this commit against df.cancel's update:
    -- no step effect commits after a cancel returned.  The step must run on a
    -- session of the submitter itself.
    PERFORM 1 FROM df.instances AS i
      WHERE i.id = p_instance_id AND i.status IN ('pending', 'running')
        AND i.submitted_by = pg_catalog.quote_ident(session_user)::regrole
        FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the instance is no longer running, or this session is '
                        'not its submitter' USING ERRCODE = 'DF014';
    END IF;
    UPDATE df.nodes AS n
       SET status = 'completed', result_text = p_result_text, result = p_result_text::jsonb,
           status_details = p_status_details, wake_at = NULL
     WHERE n.instance_id = p_instance_id AND n.id = p_node_id AND n.status = 'running'
       AND n.resource_version = p_expected_version
    RETURNING n.resource_version INTO v_version;
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    DELETE FROM df.attempts AS x WHERE x.instance_id = p_instance_id AND x.node_id = p_node_id;
    RETURN v_version;
END
$$;

-- A step in another database cannot reach df there: it runs at-least-once
-- in autocommit and the worker records its result here, under its lease.
CREATE FUNCTION df._checkpoint_remote_v1(p_instance_id text, p_node_id text, p_token uuid, p_result_text text,
                                         p_status_details jsonb, p_expected_version bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_version bigint;
BEGIN
    PERFORM df._hold_lease(p_instance_id, p_token);
    UPDATE df.nodes AS n
       SET status = 'completed', result_text = p_result_text, result = p_result_text::jsonb,
           status_details = p_status_details, wake_at = NULL
     WHERE n.instance_id = p_instance_id AND n.id = p_node_id AND n.status = 'running'
       AND n.resource_version = p_expected_version
       AND EXISTS (SELECT 1 FROM df.instances AS i WHERE i.id = p_instance_id AND i.status IN ('pending', 'running'))
    RETURNING n.resource_version INTO v_version;
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    DELETE FROM df.attempts AS x WHERE x.instance_id = p_instance_id AND x.node_id = p_node_id;
    RETURN v_version;
END
$$;

-- df._in_workflow() (35_vars.sql) reads df.attempts.backend_pid, recorded by _begin_attempt_v1.

-- Fire a test fault point at most once: disarm it and say whether it was armed.
CREATE FUNCTION df._fire_fault_v1(p_name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_points jsonb;
BEGIN
    SELECT s.value::jsonb INTO v_points FROM df.settings AS s WHERE s.key = 'fault_points' FOR UPDATE;
    IF v_points IS NULL OR NOT v_points ? p_name THEN
        RETURN false;
    END IF;
    UPDATE df.settings AS s SET value = (v_points - p_name)::text WHERE s.key = 'fault_points';
    RETURN true;
END
$$;

REVOKE EXECUTE ON FUNCTION df._submitter_refusal_v1(text), df._checkpoint_remote_v1(text, text, uuid, text, jsonb, bigint), df._fire_fault_v1(text), df._worker_settings_v1(), df._worker_register_v1(uuid, text, integer),
    df._worker_heartbeat_v1(uuid, boolean), df._worker_unregister_v1(uuid), df._claim_v1(uuid, integer),
    df._hold_lease(text, uuid), df._apply_v1(text, uuid, jsonb, jsonb, text, text, bigint),
    df._release_v1(text, uuid, timestamptz, bigint), df._nudges_v1(text),
    df._begin_attempt_v1(text, text, uuid, bytea, integer), df._end_attempt_v1(text, text, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._submitter_refusal_v1(text), df._checkpoint_remote_v1(text, text, uuid, text, jsonb, bigint), df._fire_fault_v1(text), df._worker_settings_v1(), df._worker_register_v1(uuid, text, integer),
    df._worker_heartbeat_v1(uuid, boolean), df._worker_unregister_v1(uuid), df._claim_v1(uuid, integer),
    df._apply_v1(text, uuid, jsonb, jsonb, text, text, bigint),
    df._release_v1(text, uuid, timestamptz, bigint), df._nudges_v1(text),
    df._begin_attempt_v1(text, text, uuid, bytea, integer), df._end_attempt_v1(text, text, uuid)
    TO durable_worker;
GRANT SELECT ON df.instance_vars TO durable_worker;

-- ---------------------------------------------------------------------------
-- 0.3.0: the set-based worker API.  One call claims and reads several
-- instances, one call writes the engine's decisions for many held instances
-- (with the attempts of the steps they start), and a step's own transaction
-- binds its attempt to its backend and checkpoints one or several steps.
-- ---------------------------------------------------------------------------

-- What the engine reads of some instances, with their leases, as one JSON
-- value: {"now": ..., "instances": [{..., "nodes": [...], "signals": [...], "vars": {...}}],
-- "settings": p_settings}.  Built as json, not jsonb (0.3.0): the worker only
-- parses it, and json is built at about a third of jsonb's cost.
CREATE FUNCTION df._snapshot(p_ids text[], p_settings jsonb DEFAULT NULL) RETURNS json
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN pg_catalog.json_build_object('now', df._now(), 'instances', COALESCE((
        WITH n AS (
            SELECT n.instance_id, pg_catalog.json_agg(pg_catalog.json_build_object(
                       'id', n.id, 'node_type', n.node_type, 'query', n.query, 'result_name', n.result_name,
                       'left_node', n.left_node, 'right_node', n.right_node, 'parent_id', n.parent_id,
                       'slot', n.slot, 'status', n.status, 'result_text', n.result_text, 'wake_at', n.wake_at,
                       'state', n.state, 'status_details', n.status_details,
                       'resource_version', n.resource_version)) AS nodes
              FROM df.nodes AS n WHERE n.instance_id = ANY (p_ids) GROUP BY n.instance_id
        ), s AS (
            SELECT s.instance_id, pg_catalog.json_agg(pg_catalog.json_build_object(
                       'id', s.id, 'signal_name', s.signal_name, 'data', s.data) ORDER BY s.id) AS signals
              FROM df.signals AS s WHERE s.instance_id = ANY (p_ids) AND s.consumed_at IS NULL
             GROUP BY s.instance_id
        ), v AS (
            SELECT v.instance_id, pg_catalog.json_object_agg(v.name, v.value) AS vars
              FROM df.instance_vars AS v WHERE v.instance_id = ANY (p_ids) GROUP BY v.instance_id
        )
        SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'id', i.id, 'label', i.label, 'root_node', i.root_node, 'status', i.status,
                   'execution_count', i.execution_count, 'database', i.database,
                   'submitter', pg_catalog.pg_get_userbyid(i.submitted_by::oid),
                   'lease_token', q.lease_token, 'nudges', q.nudges, 'nodes', n.nodes,
                   'signals', COALESCE(s.signals, '[]'::json), 'vars', COALESCE(v.vars, '{}'::json)))
          FROM df.instances AS i
          LEFT JOIN df.instance_queue AS q ON q.instance_id = i.id
          LEFT JOIN n ON n.instance_id = i.id
          LEFT JOIN s ON s.instance_id = i.id
          LEFT JOIN v ON v.instance_id = i.id
         WHERE i.id = ANY (p_ids)), '[]'::json), 'settings', p_settings);
END
$$;

-- Lease up to p_limit due instances nobody holds and read them, with the
-- worker settings (one round trip).
CREATE FUNCTION df._claim_v2(p_worker uuid, p_limit integer) RETURNS json
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_now   timestamptz := pg_catalog.clock_timestamp();
    v_due   timestamptz := GREATEST(df._now(), pg_catalog.clock_timestamp());
    v_lease interval := pg_catalog.make_interval(secs => COALESCE(df._setting('lease_seconds')::double precision, 30));
    v_ids   text[];
BEGIN
    WITH due AS (
        SELECT q.instance_id
          FROM df.instance_queue AS q
         WHERE q.wake_at <= v_due
           AND (q.lease_expires_at IS NULL OR q.lease_expires_at < v_now)
         ORDER BY q.wake_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE df.instance_queue AS q
           SET lease_token = pg_catalog.gen_random_uuid(), lease_worker = p_worker, claims = q.claims + 1,
               lease_expires_at = v_now + v_lease
          FROM due
         WHERE q.instance_id = due.instance_id
        RETURNING q.instance_id::text
    )
    SELECT pg_catalog.array_agg(c.instance_id) INTO v_ids FROM claimed AS c;
    RETURN df._snapshot(COALESCE(v_ids, '{}'::text[]), df._worker_settings_v1());
END
$$;

-- Read some held instances again (after a conflict, a nudge or a refused checkpoint).
CREATE FUNCTION df._load_v2(p_ids text[]) RETURNS json
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._snapshot(p_ids);
END
$$;

-- How often each of some instances was nudged (cancel, signal) so far.
CREATE FUNCTION df._nudges_v2(p_ids text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN COALESCE((SELECT pg_catalog.jsonb_object_agg(q.instance_id, q.nudges)
                       FROM df.instance_queue AS q WHERE q.instance_id = ANY (p_ids)), '{}'::jsonb);
END
$$;

-- Write the engine's decisions for several held instances in one
-- transaction, set-based.  Each item: {"id", "token", "updates": [node
-- updates, CAS on expected_version], "consume": [{signal_id, node_id}],
-- "status", "output", "execution_count", "ended": [node ids whose attempt is
-- over], "attempts": [{node_id, bind_hash, secret_hash} (hex)], "release":
-- bool, "wake_at", "nudges"}.  Locks in the worker's order (queue rows,
-- instance rows, nodes, each in id order).  Each item stands alone: a lost
-- lease ("lease"), a changed node ("conflict") or a refused submitter
-- ("refused") writes nothing of that item.  Returns {"now", "results": {id:
-- {"status", "versions"} | {"error", "message"}}}.
CREATE FUNCTION df._advance_v2(p_worker uuid, p_items jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_now       timestamptz := pg_catalog.clock_timestamp();
    v_ids       text[];
    v_held      text[];
    v_ended     text[];
    v_live      text[];
    v_refused   jsonb;
    v_conflict  text[];
    v_ok        text[];
    v_items     jsonb;
    v_versions  jsonb;
    v_results   jsonb;
    -- What some item asks for (0.3.0): a statement no item needs is not run.
    v_consume   boolean;
    v_finish    boolean;
    v_release   boolean;
BEGIN
    -- Every statement names the rows it touches by key (= ANY): index scans, whatever the tables hold.
    SELECT pg_catalog.array_agg(e.value ->> 'id'),
           COALESCE(pg_catalog.bool_or(COALESCE(e.value -> 'consume', '[]') <> '[]'), false),
           COALESCE(pg_catalog.bool_or(e.value ->> 'status' IN ('completed', 'failed')), false),
           COALESCE(pg_catalog.bool_or(COALESCE((e.value ->> 'release')::boolean, false)), false)
      INTO v_ids, v_consume, v_finish, v_release
      FROM pg_catalog.jsonb_array_elements(p_items) AS e;
    -- Leases this worker still holds, locked.
    SELECT COALESCE(pg_catalog.array_agg(x.instance_id), '{}') INTO v_held FROM (
        SELECT q.instance_id FROM df.instance_queue AS q
          JOIN pg_catalog.jsonb_array_elements(p_items) AS e ON e.value ->> 'id' = q.instance_id
         WHERE q.instance_id = ANY (v_ids) AND q.lease_token = (e.value ->> 'token')::uuid
           AND q.lease_expires_at > v_now
         ORDER BY q.instance_id
           FOR UPDATE OF q) AS x;
    -- Their instance rows, locked; those that ended meanwhile (cancelled) need no worker any more.
    SELECT COALESCE(pg_catalog.array_agg(x.id) FILTER (WHERE x.status IN ('completed', 'failed', 'cancelled')), '{}'),
           COALESCE(pg_catalog.array_agg(x.id) FILTER (WHERE x.status NOT IN ('completed', 'failed', 'cancelled')), '{}')
      INTO v_ended, v_live FROM (
        SELECT i.id, i.status FROM df.instances AS i WHERE i.id = ANY (v_held) ORDER BY i.id FOR UPDATE) AS x;
    IF pg_catalog.cardinality(v_ended) > 0 THEN
        DELETE FROM df.attempts AS a WHERE a.instance_id = ANY (v_ended);
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = ANY (v_ended);
    END IF;
    -- Checked again at every attempt: the role may have changed since df.start.
    WITH starting AS (
        SELECT i.id, i.submitted_by FROM df.instances AS i
          JOIN pg_catalog.jsonb_array_elements(p_items) AS e ON e.value ->> 'id' = i.id
         WHERE i.id = ANY (v_live) AND pg_catalog.jsonb_array_length(COALESCE(e.value -> 'attempts', '[]')) > 0
    ), verdict AS MATERIALIZED (  -- once per submitter: the filter below is not pushed under the DISTINCT
        SELECT r.submitted_by, df._submitter_refusal(r.submitted_by) AS message
          FROM (SELECT DISTINCT st.submitted_by FROM starting AS st) AS r
    )
    SELECT COALESCE(pg_catalog.jsonb_object_agg(st.id, vd.message), '{}') INTO v_refused
      FROM starting AS st JOIN verdict AS vd ON vd.submitted_by = st.submitted_by
     WHERE vd.message IS NOT NULL;
    -- Compare-and-swap: every node an item updates must still be at the version it read.
    WITH u AS (
        SELECT e.value ->> 'id' AS instance_id, x.node_id, x.expected_version
          FROM pg_catalog.jsonb_array_elements(p_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'updates', '[]')) AS x(node_id text, expected_version bigint)
         WHERE e.value ->> 'id' = ANY (v_live)
    ), locked AS (
        SELECT n.instance_id, n.id FROM df.nodes AS n
          JOIN u ON n.instance_id = u.instance_id AND n.id = u.node_id AND n.resource_version = u.expected_version
         WHERE n.instance_id = ANY (v_live)
         ORDER BY n.instance_id, n.id
           FOR UPDATE OF n
    )
    SELECT COALESCE(pg_catalog.array_agg(c.instance_id), '{}') INTO v_conflict FROM (
        SELECT u.instance_id FROM u
          LEFT JOIN locked AS l ON l.instance_id = u.instance_id AND l.id = u.node_id
         GROUP BY u.instance_id HAVING pg_catalog.count(l.id) <> pg_catalog.count(*)) AS c;

    SELECT COALESCE(pg_catalog.array_agg(x), '{}') INTO v_ok FROM pg_catalog.unnest(v_live) AS x
     WHERE NOT v_refused ? x AND x <> ALL (v_conflict);
    IF pg_catalog.cardinality(v_ok) = pg_catalog.jsonb_array_length(p_items) THEN
        v_items := p_items;  -- every item goes ahead (the usual case): no copy
    ELSE
        SELECT COALESCE(pg_catalog.jsonb_agg(e.value), '[]') INTO v_items
          FROM pg_catalog.jsonb_array_elements(p_items) AS e WHERE e.value ->> 'id' = ANY (v_ok);
    END IF;

    WITH u AS (
        SELECT e.value ->> 'id' AS instance_id, x.*
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'updates', '[]')) AS x(
                   node_id text, expected_version bigint, status text, result_text text, wake_at timestamptz,
                   state jsonb, status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = u.state, status_details = u.status_details,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM u
         WHERE n.instance_id = ANY (v_ok) AND n.instance_id = u.instance_id AND n.id = u.node_id
           AND n.resource_version = u.expected_version
        RETURNING n.instance_id, n.id, n.resource_version
    )
    SELECT COALESCE(pg_catalog.jsonb_object_agg(d.instance_id, d.versions), '{}') INTO v_versions FROM (
        SELECT done.instance_id, pg_catalog.jsonb_object_agg(done.id, done.resource_version) AS versions
          FROM done GROUP BY done.instance_id) AS d;

    IF v_consume THEN
        UPDATE df.signals AS s SET consumed_by = c.node_id, consumed_at = pg_catalog.clock_timestamp()
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'consume', '[]')) AS c(signal_id bigint, node_id text)
         WHERE s.instance_id = ANY (v_ok) AND s.id = c.signal_id AND s.instance_id = e.value ->> 'id';
    END IF;

    -- A node the engine changed, ended or starts again has no attempt in flight any more.
    DELETE FROM df.attempts AS a USING (
        SELECT e.value ->> 'id' AS instance_id, x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'updates', '[]')) AS x(node_id text)
        UNION
        SELECT e.value ->> 'id', x.value
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_array_elements_text(COALESCE(e.value -> 'ended', '[]')) AS x
        UNION
        SELECT e.value ->> 'id', x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'attempts', '[]')) AS x(node_id text)) AS t
     WHERE a.instance_id = ANY (v_ok) AND a.instance_id = t.instance_id AND a.node_id = t.node_id;
    INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash)
    SELECT e.value ->> 'id', x.node_id, (e.value ->> 'token')::uuid, pg_catalog.decode(x.secret_hash, 'hex'),
           pg_catalog.decode(x.bind_hash, 'hex')
      FROM pg_catalog.jsonb_array_elements(v_items) AS e,
           pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'attempts', '[]')) AS x(node_id text, secret_hash text,
                                                                                      bind_hash text);

    -- Finished instances leave the queue; the others run, and some are given back.
    UPDATE df.instances AS i
       SET status = CASE WHEN e.value ->> 'status' IN ('completed', 'failed') THEN e.value ->> 'status'
                         ELSE 'running' END,
           output = CASE WHEN e.value ->> 'status' IN ('completed', 'failed') THEN e.value ->> 'output'
                         ELSE i.output END,
           execution_count = COALESCE((e.value ->> 'execution_count')::bigint, i.execution_count),
           completed_at = CASE WHEN e.value ->> 'status' = 'completed' THEN pg_catalog.now() ELSE i.completed_at END,
           resource_version = i.resource_version + 1, updated_at = pg_catalog.now()
      FROM pg_catalog.jsonb_array_elements(v_items) AS e
     WHERE i.id = ANY (v_ok) AND i.id = e.value ->> 'id'
       AND (e.value ->> 'status' IN ('completed', 'failed') OR i.status = 'pending'
            OR (e.value ->> 'execution_count')::bigint IS DISTINCT FROM i.execution_count
               AND e.value ->> 'execution_count' IS NOT NULL);
    IF v_release THEN
        UPDATE df.instance_queue AS q
           SET lease_token = NULL, lease_worker = NULL, lease_expires_at = NULL,
               wake_at = CASE WHEN q.nudges <> (e.value ->> 'nudges')::bigint THEN pg_catalog.clock_timestamp()
                              ELSE (e.value ->> 'wake_at')::timestamptz END
          FROM pg_catalog.jsonb_array_elements(v_items) AS e
         WHERE q.instance_id = ANY (v_ok) AND q.instance_id = e.value ->> 'id'
           AND COALESCE((e.value ->> 'release')::boolean, false)
           AND e.value ->> 'status' IS NULL;
    END IF;
    IF v_finish THEN
        DELETE FROM df.instance_queue AS q USING pg_catalog.jsonb_array_elements(v_items) AS e
         WHERE q.instance_id = ANY (v_ok) AND q.instance_id = e.value ->> 'id'
           AND e.value ->> 'status' IN ('completed', 'failed');
    END IF;
    IF v_finish OR v_release THEN
        DELETE FROM df.attempts AS a USING pg_catalog.jsonb_array_elements(v_items) AS e
         WHERE a.instance_id = ANY (v_ok) AND a.instance_id = e.value ->> 'id'
           AND (e.value ->> 'status' IN ('completed', 'failed') OR COALESCE((e.value ->> 'release')::boolean, false));
    END IF;
    IF v_finish AND EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(v_items) AS e
                             WHERE e.value ->> 'status' IN ('completed', 'failed')) THEN
        PERFORM df._notify_done();
    END IF;

    SELECT COALESCE(pg_catalog.jsonb_object_agg(r.id, r.result), '{}') INTO v_results FROM (
        SELECT e.value ->> 'id' AS id, CASE
                   WHEN x.id IS NULL THEN pg_catalog.jsonb_build_object('error', 'lease')
                   WHEN x.id = ANY (v_ended) THEN pg_catalog.jsonb_build_object('status', i.status,
                                                                                'versions', '{}'::jsonb)
                   WHEN v_refused ? x.id THEN pg_catalog.jsonb_build_object('error', 'refused',
                                                                            'message', v_refused ->> x.id)
                   WHEN x.id = ANY (v_conflict) THEN pg_catalog.jsonb_build_object('error', 'conflict')
                   ELSE pg_catalog.jsonb_build_object('status', i.status,
                                                      'versions', COALESCE(v_versions -> x.id, '{}'::jsonb))
               END AS result
          FROM pg_catalog.jsonb_array_elements(p_items) AS e
          LEFT JOIN pg_catalog.unnest(v_held) AS x(id) ON x.id = e.value ->> 'id'
          LEFT JOIN df.instances AS i ON i.id = x.id AND i.id = ANY (v_held)) AS r;
    RETURN pg_catalog.jsonb_build_object('now', df._now(), 'results', v_results);
END
$$;

-- Called on the SUBMITTER's connection, first in a step's transaction: binds
-- each attempt to this backend (df.in_workflow() and the checkpoint check
-- it), proven by a one-use bind secret (not the checkpoint's secret).  Only a
-- session of the instance's submitter, under a live lease, can bind.  In a
-- transaction (p_autocommit false) the binding never outlives it: the
-- checkpoint deletes the attempt in the same transaction, and a rollback
-- undoes the binding; so only an autocommit bind (a statement that cannot
-- run in a transaction block) records the backend's start time, which tells
-- a later session that reuses the pid apart.
CREATE FUNCTION df._bind_v1(p_instance_ids text[], p_node_ids text[], p_secrets text[],
                            p_autocommit boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_bound integer;
BEGIN
    -- Each secret hashed once (MATERIALIZED), not once per row it is compared with.
    WITH b AS MATERIALIZED (
        SELECT x.instance_id, x.node_id, pg_catalog.sha256(pg_catalog.convert_to(x.secret, 'UTF8')) AS hash
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_secrets)) AS x(instance_id, node_id, secret)
    ), q AS MATERIALIZED (
        -- The live leases and the instances of this session's role, each table read once by its keys
        -- (0.3.0): "= ANY" bounds the read whatever the statistics say (joined by key instead, a merge
        -- join could walk the whole index), and it is evaluated once, not at every lookup of a loop.
        SELECT q.instance_id, q.lease_token FROM df.instance_queue AS q
         WHERE q.instance_id = ANY (p_instance_ids) AND q.lease_expires_at > pg_catalog.clock_timestamp()
    ), i AS MATERIALIZED (
        -- IS NOT DISTINCT FROM (the column is NOT NULL): never an index condition, so the planner finds
        -- the instance by id, not by scanning every instance of the role in idx_instances_submitted_by.
        SELECT i.id FROM df.instances AS i
         WHERE i.id = ANY (p_instance_ids)
           AND i.submitted_by IS NOT DISTINCT FROM pg_catalog.quote_ident(session_user)::regrole
    )
    UPDATE df.attempts AS a
       SET backend_pid = pg_catalog.pg_backend_pid(), bind_hash = NULL,
           backend_start = CASE WHEN p_autocommit THEN
               (SELECT s.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS s) END
      FROM b, q, i
     WHERE a.instance_id = b.instance_id AND a.node_id = b.node_id
       AND a.bind_hash = b.hash AND a.backend_pid IS NULL
       AND q.instance_id = b.instance_id AND q.lease_token = a.lease_token
       AND i.id = b.instance_id;
    GET DIAGNOSTICS v_bound = ROW_COUNT;
    IF v_bound IS DISTINCT FROM pg_catalog.cardinality(p_instance_ids) THEN
        RAISE EXCEPTION 'durable: attempt refused' USING ERRCODE = 'DF014';
    END IF;
END
$$;

-- The common start of the step checkpoints (0.3.0): the transaction must
-- still be the one the steps began in; a caller that does not hold every
-- attempt it names (its secret, on this backend) is refused before it takes
-- or waits for any lock; then the queue and instance rows are locked in the
-- worker's order (p_exclusive, for a checkpoint that also writes decisions:
-- FOR UPDATE; otherwise KEY SHARE and SHARE: a takeover waits, heartbeats do
-- not, and df.cancel is ordered against it), and the attempts are deleted,
-- which checks each against its secret, this backend, a live lease and a
-- running instance of this session's role.  Raises DF014 unless every
-- attempt checks out.
CREATE FUNCTION df._take_attempts_v1(p_xid text, p_instance_ids text[], p_node_ids text[], p_secrets text[],
                                     p_exclusive boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_n     integer := pg_catalog.cardinality(p_instance_ids);
    v_count integer;
BEGIN
    IF pg_catalog.pg_current_xact_id()::text IS DISTINCT FROM p_xid THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the step ended its transaction' USING ERRCODE = 'DF014';
    END IF;
    SELECT pg_catalog.count(*) INTO v_count
      FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                      pg_catalog.unnest(p_secrets)) AS x(instance_id, node_id, secret)
      JOIN df.attempts AS a ON a.instance_id = x.instance_id AND a.node_id = x.node_id
     WHERE a.secret_hash = pg_catalog.sha256(pg_catalog.convert_to(x.secret, 'UTF8'))
       AND a.backend_pid = pg_catalog.pg_backend_pid();
    IF v_count IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    IF p_exclusive THEN
        PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = ANY (p_instance_ids)
          ORDER BY q.instance_id FOR UPDATE;
        PERFORM 1 FROM df.instances AS i WHERE i.id = ANY (p_instance_ids) ORDER BY i.id FOR UPDATE;
    ELSE
        PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = ANY (p_instance_ids)
          ORDER BY q.instance_id FOR KEY SHARE;
        PERFORM 1 FROM df.instances AS i WHERE i.id = ANY (p_instance_ids) ORDER BY i.id FOR SHARE;
    END IF;
    WITH c AS MATERIALIZED (
        SELECT x.instance_id, x.node_id, pg_catalog.sha256(pg_catalog.convert_to(x.secret, 'UTF8')) AS hash
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_secrets)) AS x(instance_id, node_id, secret)
    ), q AS MATERIALIZED (  -- each table read once by its keys (see df._bind_v1)
        SELECT q.instance_id, q.lease_token FROM df.instance_queue AS q
         WHERE q.instance_id = ANY (p_instance_ids) AND q.lease_expires_at > pg_catalog.clock_timestamp()
    ), i AS MATERIALIZED (
        SELECT i.id FROM df.instances AS i
         WHERE i.id = ANY (p_instance_ids) AND i.status IN ('pending', 'running')
           -- Not an index condition (see df._bind_v1): the instances are found by id.
           AND i.submitted_by IS NOT DISTINCT FROM pg_catalog.quote_ident(session_user)::regrole
    )
    DELETE FROM df.attempts AS a
     USING c, q, i
     WHERE a.instance_id = c.instance_id AND a.node_id = c.node_id
       AND a.secret_hash = c.hash
       AND a.backend_pid = pg_catalog.pg_backend_pid()
       AND q.instance_id = c.instance_id AND q.lease_token = a.lease_token
       AND i.id = c.instance_id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
END
$$;

-- Called on the SUBMITTER's connection, in the steps' own transaction, right
-- after their statements: records every result of the transaction or none.
-- The transaction must still be the one the steps began in (p_xid), each
-- attempt's secret must match, on the backend that bound it, under a live
-- lease, for a running node of a live instance of this session's role, at
-- the version the node had when the attempt started.  Locks in the worker's
-- order: queue rows (KEY SHARE: a takeover waits, heartbeats do not), then
-- instance rows (SHARE: ordered against df.cancel), then attempts and nodes.
-- Returns the nodes' new resource_versions, in argument order.
CREATE FUNCTION df._checkpoint_v2(p_xid text, p_instance_ids text[], p_node_ids text[], p_secrets text[],
                                  p_results text[], p_details jsonb[], p_versions bigint[])
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_n        integer := pg_catalog.cardinality(p_instance_ids);
    v_versions bigint[];
BEGIN
    PERFORM df._take_attempts_v1(p_xid, p_instance_ids, p_node_ids, p_secrets, false);
    WITH done AS (
        UPDATE df.nodes AS n
           SET status = 'completed', result_text = c.result_text, result = c.result_text::jsonb,
               status_details = c.details, wake_at = NULL,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_results), pg_catalog.unnest(p_details),
                          pg_catalog.unnest(p_versions)) WITH ORDINALITY
               AS c(instance_id, node_id, result_text, details, expected_version, ord)
         WHERE n.instance_id = ANY (p_instance_ids) AND n.instance_id = c.instance_id AND n.id = c.node_id
           AND n.status = 'running' AND n.resource_version = c.expected_version
        RETURNING c.ord, n.resource_version
    )
    SELECT pg_catalog.array_agg(done.resource_version ORDER BY done.ord) INTO v_versions FROM done;
    IF pg_catalog.cardinality(v_versions) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    RETURN v_versions;
END
$$;

-- The default mode's step transaction, with the decision that follows the
-- step.  Checks and records the step's result as df._checkpoint_v2 does for
-- one step (raising unless the transaction, the secret, the backend, the live
-- lease and the node's version check out), then writes the engine's next
-- decision for the instance, which the worker made from the step's result
-- before committing: p_next {"updates": [node updates, CAS on
-- expected_version], "attempts": [{node_id, bind_hash, secret_hash} (hex)],
-- "status": null or the instance's final status, "output"}.  The decision is
-- written only if every node it updates is still at the version the worker
-- read and the submitter may still start steps; otherwise the step's result
-- alone is recorded and the worker writes the decision itself.  A caller that
-- does not hold the attempt is refused before any lock is taken; then it locks
-- in the worker's order (queue row, instance row, nodes in id order), as
-- df._advance_v2 does, and checks again.  Returns {"versions": [the step
-- node's new version], "next": null | {"status", "versions": {node id: new
-- version}, "now"}}.
CREATE FUNCTION df._checkpoint_next_v1(p_xid text, p_instance_id text, p_node_id text, p_secret text,
                                       p_result text, p_details jsonb, p_version bigint, p_next jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_status   text := p_next ->> 'status';
    v_updates  jsonb := COALESCE(p_next -> 'updates', '[]');
    v_attempts jsonb := COALESCE(p_next -> 'attempts', '[]');
    v_hash     bytea := pg_catalog.sha256(pg_catalog.convert_to(p_secret, 'UTF8'));
    -- Only the instance's end or the next steps' start, never the step's own node.
    v_fold     boolean := p_next IS NOT NULL
                          AND (p_next ->> 'status' IN ('completed', 'failed')
                               OR p_next ->> 'status' IS NULL AND pg_catalog.jsonb_array_length(v_attempts) > 0)
                          AND NOT v_updates @> pg_catalog.jsonb_build_array(
                                                   pg_catalog.jsonb_build_object('node_id', p_node_id));
    v_token    uuid;
    v_role     regrole;
    v_own      integer;
    v_matched  integer;
    v_versions jsonb;
BEGIN
    IF pg_catalog.pg_current_xact_id()::text IS DISTINCT FROM p_xid THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the step ended its transaction' USING ERRCODE = 'DF014';
    END IF;
    -- Nobody but the holder of the attempt gets to wait for (or hold) the instance's locks.
    IF NOT EXISTS (SELECT 1 FROM df.attempts AS a
                    WHERE a.instance_id = p_instance_id AND a.node_id = p_node_id AND a.secret_hash = v_hash
                      AND a.backend_pid = pg_catalog.pg_backend_pid()) THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    SELECT q.lease_token INTO v_token FROM df.instance_queue AS q
     WHERE q.instance_id = p_instance_id AND q.lease_expires_at > pg_catalog.clock_timestamp()
       FOR UPDATE;
    SELECT i.submitted_by INTO v_role FROM df.instances AS i
     WHERE i.id = p_instance_id AND i.status IN ('pending', 'running')
       AND i.submitted_by = pg_catalog.quote_ident(session_user)::regrole
       FOR UPDATE;
    -- Deleting the attempt checks it: its secret, on this backend, under the live lease of a live
    -- instance of this session's role.
    DELETE FROM df.attempts AS a
     WHERE a.instance_id = p_instance_id AND a.node_id = p_node_id
       AND a.secret_hash = v_hash
       AND a.backend_pid = pg_catalog.pg_backend_pid() AND a.lease_token = v_token AND v_role IS NOT NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    -- The step's node (still running this attempt) and every node the decision changes, at the
    -- versions the worker read, locked.
    SELECT pg_catalog.count(*) FILTER (WHERE x.own), pg_catalog.count(*) FILTER (WHERE NOT x.own)
      INTO v_own, v_matched FROM (
        SELECT w.own FROM df.nodes AS n
          JOIN (SELECT p_node_id AS node_id, p_version AS expected_version, true AS own
                UNION ALL
                SELECT u.node_id, u.expected_version, false
                  FROM pg_catalog.jsonb_to_recordset(CASE WHEN v_fold THEN v_updates ELSE '[]' END)
                       AS u(node_id text, expected_version bigint)) AS w
            ON n.id = w.node_id AND n.resource_version = w.expected_version
         WHERE n.instance_id = p_instance_id AND (n.status = 'running' OR NOT w.own)
         ORDER BY n.id
           FOR UPDATE OF n) AS x;
    IF v_own <> 1 THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    v_fold := v_fold AND v_matched = pg_catalog.jsonb_array_length(v_updates)
              AND (pg_catalog.jsonb_array_length(v_attempts) = 0 OR df._submitter_refusal(v_role) IS NULL);
    WITH u AS (
        SELECT p_node_id AS node_id, true AS own, 'completed' AS status, p_result AS result_text,
               NULL::timestamptz AS wake_at, NULL::jsonb AS state, p_details AS status_details
        UNION ALL
        SELECT x.node_id, false, x.status, x.result_text, x.wake_at, x.state, x.status_details
          FROM pg_catalog.jsonb_to_recordset(CASE WHEN v_fold THEN v_updates ELSE '[]' END) AS x(
                   node_id text, status text, result_text text, wake_at timestamptz, state jsonb,
                   status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = CASE WHEN u.own THEN n.state ELSE u.state END,
               status_details = u.status_details,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM u
         WHERE n.instance_id = p_instance_id AND n.id = u.node_id
        RETURNING n.id, n.resource_version
    )
    SELECT pg_catalog.jsonb_object_agg(done.id, done.resource_version) INTO v_versions FROM done;
    IF NOT v_fold THEN
        RETURN pg_catalog.jsonb_build_object('versions', pg_catalog.jsonb_build_array(v_versions -> p_node_id),
                                             'next', NULL);
    END IF;
    IF v_status IN ('completed', 'failed') THEN
        UPDATE df.instances AS i
           SET status = v_status, output = p_next ->> 'output',
               completed_at = CASE WHEN v_status = 'completed' THEN pg_catalog.now() ELSE i.completed_at END,
               resource_version = i.resource_version + 1, updated_at = pg_catalog.now()
         WHERE i.id = p_instance_id;
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id;
        DELETE FROM df.attempts AS a WHERE a.instance_id = p_instance_id;
        PERFORM df._notify_done();
    ELSE
        -- A node the decision changes or starts has no attempt in flight any more (one an earlier
        -- holder of the lease left goes); then the next steps' attempts.
        DELETE FROM df.attempts AS a
         WHERE a.instance_id = p_instance_id
           AND a.node_id IN (SELECT x.node_id FROM pg_catalog.jsonb_to_recordset(v_updates) AS x(node_id text)
                             UNION ALL
                             SELECT x.node_id FROM pg_catalog.jsonb_to_recordset(v_attempts) AS x(node_id text));
        INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash)
        SELECT p_instance_id, x.node_id, v_token, pg_catalog.decode(x.secret_hash, 'hex'),
               pg_catalog.decode(x.bind_hash, 'hex')
          FROM pg_catalog.jsonb_to_recordset(v_attempts) AS x(node_id text, secret_hash text, bind_hash text);
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'versions', pg_catalog.jsonb_build_array(v_versions -> p_node_id),
        'next', pg_catalog.jsonb_build_object('status', COALESCE(v_status, 'running'),
                                              'versions', v_versions - p_node_id, 'now', df._now()));
END
$$;

-- The batched mode's checkpoint with the decisions that follow its steps
-- (0.3.0): df._checkpoint_v2 for every step of the transaction (all or
-- none: any step that does not check out refuses the whole checkpoint), and
-- for each step whose p_nexts entry is not NULL, the engine's next decision
-- for its instance in the shape df._checkpoint_next_v1 takes ({"updates",
-- "attempts", "status", "output"}).  A decision is written only for an
-- instance named once in the batch, that only starts the next steps or ends
-- the instance (never touching the step's own node), when every node it
-- updates is still at the version the worker read and the submitter may
-- still start steps; otherwise its entry in "next" is NULL and the worker
-- writes it itself.  A caller that does not hold every attempt is refused
-- before any lock is taken; then it locks in the worker's order (queue rows,
-- instance rows, nodes in (instance, id) order).  Returns {"versions": [the
-- step nodes' new versions, in argument order], "next": [per step: NULL |
-- {"status", "versions": {node id: new version}, "now"}]}.
CREATE FUNCTION df._checkpoint_next_v2(p_xid text, p_instance_ids text[], p_node_ids text[], p_secrets text[],
                                       p_results text[], p_details jsonb[], p_versions bigint[], p_nexts jsonb[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_n        integer := pg_catalog.cardinality(p_instance_ids);
    v_count    integer;
    v_items    jsonb;      -- [{"id", "next"}]: the decisions to write
    v_matched  jsonb;      -- instance id -> how many of its decision's nodes are at the expected version
    v_own      bigint[];
    v_written  jsonb;      -- instance id -> {node id: new version}, for the decisions' nodes
    v_ended    text[];
    v_now      timestamptz;
BEGIN
    IF v_n IS NULL OR v_n = 0
       OR pg_catalog.cardinality(p_node_ids) IS DISTINCT FROM v_n OR pg_catalog.cardinality(p_secrets) IS DISTINCT FROM v_n
       OR pg_catalog.cardinality(p_results) IS DISTINCT FROM v_n OR pg_catalog.cardinality(p_details) IS DISTINCT FROM v_n
       OR pg_catalog.cardinality(p_versions) IS DISTINCT FROM v_n OR pg_catalog.cardinality(p_nexts) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the arguments do not line up' USING ERRCODE = 'DF014';
    END IF;
    PERFORM df._take_attempts_v1(p_xid, p_instance_ids, p_node_ids, p_secrets, true);

    -- The decisions that may be written: only the instance's end or the next steps' start, never a
    -- step's own node, one per instance named once; a step starts only if the submitter may still
    -- start steps (one submitter: this session's role, checked above).
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', x.instance_id, 'next', x.nxt))
      INTO v_items
      FROM (SELECT y.*, pg_catalog.count(*) OVER (PARTITION BY y.instance_id) AS named
              FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                              pg_catalog.unnest(p_nexts)) AS y(instance_id, node_id, nxt)) AS x
     WHERE x.named = 1 AND pg_catalog.jsonb_typeof(x.nxt) = 'object'
       AND pg_catalog.jsonb_typeof(COALESCE(x.nxt -> 'updates', '[]')) = 'array'
       AND pg_catalog.jsonb_typeof(COALESCE(x.nxt -> 'attempts', '[]')) = 'array'
       AND (x.nxt ->> 'status' IN ('completed', 'failed')
            OR x.nxt ->> 'status' IS NULL AND pg_catalog.jsonb_array_length(COALESCE(x.nxt -> 'attempts', '[]')) > 0)
       AND NOT COALESCE(x.nxt -> 'updates', '[]') @> pg_catalog.jsonb_build_array(
                                                        pg_catalog.jsonb_build_object('node_id', x.node_id));
    IF v_items IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_catalog.jsonb_array_elements(v_items) AS e
             WHERE pg_catalog.jsonb_array_length(COALESCE(e.value -> 'next' -> 'attempts', '[]')) > 0) THEN
        IF df._submitter_refusal(pg_catalog.quote_ident(session_user)::regrole) IS NOT NULL THEN
            SELECT pg_catalog.jsonb_agg(e.value) INTO v_items FROM pg_catalog.jsonb_array_elements(v_items) AS e
             WHERE pg_catalog.jsonb_array_length(COALESCE(e.value -> 'next' -> 'attempts', '[]')) = 0;
        END IF;
    END IF;
    v_items := COALESCE(v_items, '[]');

    -- The steps' nodes (still running these attempts) and every node a decision changes, at the
    -- versions the worker read, locked.
    WITH w AS (
        SELECT x.instance_id, x.node_id, x.expected_version, true AS own
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_versions)) AS x(instance_id, node_id, expected_version)
        UNION ALL
        SELECT e.value ->> 'id', u.node_id, u.expected_version, false
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'updates', '[]'))
               AS u(node_id text, expected_version bigint)
    ), locked AS (
        SELECT w.instance_id, w.own FROM df.nodes AS n
          JOIN w ON n.instance_id = w.instance_id AND n.id = w.node_id AND n.resource_version = w.expected_version
         WHERE n.instance_id = ANY (p_instance_ids) AND (n.status = 'running' OR NOT w.own)
         ORDER BY n.instance_id, n.id
           FOR UPDATE OF n
    )
    SELECT COALESCE(pg_catalog.sum(l.n) FILTER (WHERE l.own), 0),
           COALESCE(pg_catalog.jsonb_object_agg(l.instance_id, l.n) FILTER (WHERE NOT l.own), '{}')
      INTO v_count, v_matched
      FROM (SELECT locked.instance_id, locked.own, pg_catalog.count(*) AS n
              FROM locked GROUP BY locked.instance_id, locked.own) AS l;
    IF v_count IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    SELECT COALESCE(pg_catalog.jsonb_agg(e.value), '[]') INTO v_items
      FROM pg_catalog.jsonb_array_elements(v_items) AS e
     WHERE COALESCE((v_matched ->> (e.value ->> 'id'))::integer, 0)
           = pg_catalog.jsonb_array_length(COALESCE(e.value -> 'next' -> 'updates', '[]'));

    WITH u AS (
        SELECT x.instance_id, x.node_id, true AS own, 'completed' AS status, x.result_text,
               NULL::timestamptz AS wake_at, NULL::jsonb AS state, x.details AS status_details, x.ord
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_results), pg_catalog.unnest(p_details)) WITH ORDINALITY
               AS x(instance_id, node_id, result_text, details, ord)
        UNION ALL
        SELECT e.value ->> 'id', x.node_id, false, x.status, x.result_text, x.wake_at, x.state,
               x.status_details, NULL
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'updates', '[]')) AS x(
                   node_id text, status text, result_text text, wake_at timestamptz, state jsonb,
                   status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = CASE WHEN u.own THEN n.state ELSE u.state END,
               status_details = u.status_details,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM u
         WHERE n.instance_id = ANY (p_instance_ids) AND n.instance_id = u.instance_id AND n.id = u.node_id
        RETURNING n.instance_id, n.id, n.resource_version, u.own, u.ord
    )
    SELECT (SELECT pg_catalog.array_agg(d.resource_version ORDER BY d.ord) FROM done AS d WHERE d.own),
           COALESCE((SELECT pg_catalog.jsonb_object_agg(g.instance_id, g.versions) FROM (
                         SELECT d.instance_id, pg_catalog.jsonb_object_agg(d.id, d.resource_version) AS versions
                           FROM done AS d WHERE NOT d.own GROUP BY d.instance_id) AS g), '{}')
      INTO v_own, v_written;

    -- Instances a decision ends leave the queue; the others start their next steps.
    WITH e AS (
        SELECT x.value ->> 'id' AS id, x.value -> 'next' AS nxt FROM pg_catalog.jsonb_array_elements(v_items) AS x
         WHERE x.value -> 'next' ->> 'status' IN ('completed', 'failed')
    ), ended AS (
        UPDATE df.instances AS i
           SET status = e.nxt ->> 'status', output = e.nxt ->> 'output',
               completed_at = CASE WHEN e.nxt ->> 'status' = 'completed' THEN pg_catalog.now() ELSE i.completed_at END,
               resource_version = i.resource_version + 1, updated_at = pg_catalog.now()
          FROM e
         WHERE i.id = ANY (p_instance_ids) AND i.id = e.id
        RETURNING i.id::text
    )
    SELECT pg_catalog.array_agg(ended.id) INTO v_ended FROM ended;
    IF v_ended IS NOT NULL THEN
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = ANY (v_ended);
        DELETE FROM df.attempts AS a WHERE a.instance_id = ANY (v_ended);
        PERFORM df._notify_done();
    END IF;
    -- A node a decision changes or starts has no attempt in flight any more (one an earlier holder
    -- of the lease left goes); then the next steps' attempts, under the instance's lease.
    DELETE FROM df.attempts AS a USING (
        SELECT e.value ->> 'id' AS instance_id, x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'updates', '[]')) AS x(node_id text)
         WHERE e.value -> 'next' ->> 'status' IS NULL
        UNION ALL
        SELECT e.value ->> 'id', x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'attempts', '[]')) AS x(node_id text)
         WHERE e.value -> 'next' ->> 'status' IS NULL) AS t
     WHERE a.instance_id = ANY (p_instance_ids) AND a.instance_id = t.instance_id AND a.node_id = t.node_id;
    INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash)
    SELECT q.instance_id, x.node_id, q.lease_token, pg_catalog.decode(x.secret_hash, 'hex'),
           pg_catalog.decode(x.bind_hash, 'hex')
      FROM pg_catalog.jsonb_array_elements(v_items) AS e
      JOIN df.instance_queue AS q ON q.instance_id = e.value ->> 'id',
           pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'attempts', '[]'))
           AS x(node_id text, secret_hash text, bind_hash text)
     WHERE q.instance_id = ANY (p_instance_ids) AND e.value -> 'next' ->> 'status' IS NULL;

    v_now := df._now();
    RETURN pg_catalog.jsonb_build_object('versions', pg_catalog.to_jsonb(v_own), 'next', (
        SELECT pg_catalog.jsonb_agg(CASE WHEN f.value IS NULL THEN NULL ELSE pg_catalog.jsonb_build_object(
                   'status', COALESCE(f.value -> 'next' ->> 'status', 'running'),
                   'versions', COALESCE(v_written -> t.instance_id, '{}'),
                   'now', v_now) END ORDER BY t.ord)
          FROM pg_catalog.unnest(p_instance_ids) WITH ORDINALITY AS t(instance_id, ord)
          LEFT JOIN pg_catalog.jsonb_array_elements(v_items) AS f ON f.value ->> 'id' = t.instance_id));
END
$$;

-- Run by the worker on a SUBMITTER's connection between two steps of one
-- transaction (the opt-in batched mode), with the submitter's own rights:
-- nothing one step left in its session reaches the next (what DISCARD ALL
-- does between transactions, as far as it can be done inside one), then
-- the next step's timeout and string syntax, as the login role.
CREATE FUNCTION df._step_reset_v1(p_timeout text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE 'CLOSE ALL';
    EXECUTE 'DEALLOCATE ALL';
    RESET ALL;
    EXECUTE 'DISCARD TEMP';
    EXECUTE 'DISCARD SEQUENCES';
    EXECUTE 'UNLISTEN *';
    PERFORM pg_catalog.pg_advisory_unlock_all();
    PERFORM pg_catalog.set_config('statement_timeout', p_timeout, true),
            pg_catalog.set_config('standard_conforming_strings', 'on', true),
            pg_catalog.set_config('role', 'none', true);
END
$$;

REVOKE EXECUTE ON FUNCTION df._take_attempts_v1(text, text[], text[], text[], boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df._snapshot(text[], jsonb), df._claim_v2(uuid, integer), df._load_v2(text[]),
    df._nudges_v2(text[]), df._advance_v2(uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._claim_v2(uuid, integer), df._load_v2(text[]), df._nudges_v2(text[]),
    df._advance_v2(uuid, jsonb) TO durable_worker;

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
