-- e2e: variables (PGD_REFERENCE.md 1.3).  Run as an ordinary LOGIN role
-- granted df.grant_usage:
--     psql -X -v ON_ERROR_STOP=1 -f e2e/sql/15_vars.sql
-- Each assertion is a DO block that raises on a mismatch.  Self-contained: it
-- starts and ends with df.clearvars(), touching only this role's variables.
\set ON_ERROR_STOP 1

-- Start clean.
DO $$
BEGIN
    IF df.clearvars() IS DISTINCT FROM 'OK' THEN
        RAISE EXCEPTION 'clearvars did not return OK';
    END IF;
END
$$;

-- Not inside a workflow: this session is no step.
DO $$
BEGIN
    IF df.in_workflow() IS DISTINCT FROM false THEN
        RAISE EXCEPTION 'in_workflow: got %', df.in_workflow();
    END IF;
END
$$;

-- An unknown name reads as NULL.
DO $$
BEGIN
    IF df.getvar('e2e_region') IS NOT NULL THEN
        RAISE EXCEPTION 'getvar of an unset name: got %', df.getvar('e2e_region');
    END IF;
END
$$;

-- setvar returns OK and getvar reads the value back verbatim.
DO $$
DECLARE
    got text;
BEGIN
    got := df.setvar('e2e_region', E'eu-west \'1\' é');
    IF got IS DISTINCT FROM 'OK' THEN
        RAISE EXCEPTION 'setvar returned %', got;
    END IF;
    got := df.getvar('e2e_region');
    IF got IS DISTINCT FROM E'eu-west \'1\' é' THEN
        RAISE EXCEPTION 'getvar: got %', got;
    END IF;
END
$$;

-- setvar overwrites.
DO $$
DECLARE
    got text;
BEGIN
    PERFORM df.setvar('e2e_region', 'us-east');
    got := df.getvar('e2e_region');
    IF got IS DISTINCT FROM 'us-east' THEN
        RAISE EXCEPTION 'overwrite: got %', got;
    END IF;
END
$$;

-- The row is this role's own, in df.vars.
DO $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM df.vars
     WHERE name = 'e2e_region' AND value = 'us-east' AND owner = quote_ident(current_user)::regrole;
    IF n <> 1 THEN
        RAISE EXCEPTION 'df.vars row: found %', n;
    END IF;
END
$$;

-- STRICT: a NULL argument gives NULL and changes nothing.
DO $$
BEGIN
    IF df.setvar('e2e_region', NULL) IS NOT NULL OR df.setvar(NULL, 'x') IS NOT NULL
       OR df.getvar(NULL) IS NOT NULL OR df.unsetvar(NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'NULL arguments must give NULL';
    END IF;
    IF df.getvar('e2e_region') IS DISTINCT FROM 'us-east' THEN
        RAISE EXCEPTION 'a NULL call changed the value: %', df.getvar('e2e_region');
    END IF;
END
$$;

-- unsetvar removes one name, returns OK, and is fine for an unknown name.
DO $$
BEGIN
    PERFORM df.setvar('e2e_other', '2');
    IF df.unsetvar('e2e_region') IS DISTINCT FROM 'OK' OR df.unsetvar('e2e_never_set') IS DISTINCT FROM 'OK' THEN
        RAISE EXCEPTION 'unsetvar did not return OK';
    END IF;
    IF df.getvar('e2e_region') IS NOT NULL OR df.getvar('e2e_other') IS DISTINCT FROM '2' THEN
        RAISE EXCEPTION 'unsetvar removed the wrong rows';
    END IF;
END
$$;

-- A setter's result is no workflow step (fixture X11).
DO $$
BEGIN
    PERFORM df.seq(df.setvar('e2e_x11', '1'), 'SELECT 1');
    RAISE EXCEPTION 'X11: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001'
       OR SQLERRM <> 'df.setvar cannot be used as a workflow step. Call df.setvar before df.start().' THEN
        RAISE EXCEPTION 'X11: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;

-- The failed statement left nothing behind.
DO $$
BEGIN
    IF df.getvar('e2e_x11') IS NOT NULL THEN
        RAISE EXCEPTION 'X11 statement was not rolled back';
    END IF;
END
$$;

-- clearvars removes every variable of this role.
DO $$
DECLARE
    n bigint;
BEGIN
    PERFORM df.setvar('e2e_a', '1');
    PERFORM df.setvar('e2e_b', '2');
    IF df.clearvars() IS DISTINCT FROM 'OK' THEN
        RAISE EXCEPTION 'clearvars did not return OK';
    END IF;
    SELECT count(*) INTO n FROM df.vars;
    IF n <> 0 THEN
        RAISE EXCEPTION 'clearvars left % rows', n;
    END IF;
END
$$;
