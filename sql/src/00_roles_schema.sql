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
