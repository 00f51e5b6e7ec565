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
