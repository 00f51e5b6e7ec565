-- Row-level security between two roles, grants, and id collisions.
\set QUIET on
\pset tuples_only on

SELECT current_user AS me \gset
SELECT df.start(df.wait_for_signal('go'), 'mine') AS mine \gset
SELECT set_config('e2e.mine', :'mine', false);
SELECT df.setvar('secret_var', 'only mine');

-- The other role sees none of it and cannot touch it.
\c - :other
SELECT set_config('e2e.mine', :'mine', false);
DO $$
BEGIN
    IF df.status(current_setting('e2e.mine')) IS NOT NULL THEN RAISE EXCEPTION 'other role sees the instance'; END IF;
    IF EXISTS (SELECT 1 FROM df.instances) OR EXISTS (SELECT 1 FROM df.nodes) THEN
        RAISE EXCEPTION 'other role sees rows';
    END IF;
    IF df.getvar('secret_var') IS NOT NULL THEN RAISE EXCEPTION 'other role reads my variable'; END IF;
    BEGIN
        PERFORM df.signal(current_setting('e2e.mine'), 'go');
        RAISE EXCEPTION 'other role signalled my instance';
    EXCEPTION WHEN SQLSTATE 'DF003' THEN NULL;
    END;
    BEGIN
        PERFORM df.cancel(current_setting('e2e.mine'));
        RAISE EXCEPTION 'other role cancelled my instance';
    EXCEPTION WHEN SQLSTATE 'DF003' THEN NULL;
    END;
    BEGIN
        UPDATE df.instances SET status = 'completed';
        RAISE EXCEPTION 'direct write allowed';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        PERFORM * FROM df.settings;
        RAISE EXCEPTION 'settings readable';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
END $$;

-- Back as the owner of the instance: it is untouched and finishes on our signal.
\c - :me
SELECT set_config('e2e.mine', :'mine', false);
SELECT df.signal(:'mine', 'go', '"approved"');
SELECT set_config('e2e.st', df.await_instance(:'mine', 30), false);
DO $$ BEGIN
    IF current_setting('e2e.st') <> 'completed' THEN RAISE EXCEPTION 'mine ended %', current_setting('e2e.st'); END IF;
    IF (df.result(current_setting('e2e.mine')))::jsonb ->> 'data' <> 'approved' THEN RAISE EXCEPTION 'signal data %', df.result(current_setting('e2e.mine')); END IF;
END $$;

-- Grant functions are not for ordinary roles.
DO $$ BEGIN
    PERFORM df.grant_usage(current_user);
    RAISE EXCEPTION 'grant_usage callable';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END $$;

-- Many ids claimed in one go never collide.
DO $$
DECLARE
    v_ids text[] := ARRAY[]::text[];
BEGIN
    FOR i IN 1 .. 200 LOOP
        v_ids := v_ids || df.start('SELECT 1');
    END LOOP;
    IF (SELECT count(DISTINCT x) FROM unnest(v_ids) x) <> 200 THEN RAISE EXCEPTION 'duplicate ids'; END IF;
END $$;
