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
