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
