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
