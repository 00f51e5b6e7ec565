-- e2e: the worker runs every node type but HTTP (and signals: 45_signals_cancel.sql) through psql,
-- as the submitting role, with a live worker.  Expected values come from PGD_REFERENCE.md 2.4-2.9
-- and CONTRACT.md section 5, never from our own output.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.expect(label text, got text, want text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF got IS DISTINCT FROM want THEN
        RAISE EXCEPTION '%: got %, want %', label, pg_catalog.to_json(got), pg_catalog.to_json(want);
    END IF;
END
$$;

-- Instances by name: each df.start commits on its own (psql autocommit), so the worker sees it.
CREATE TEMP TABLE runs (name text PRIMARY KEY, id text NOT NULL);
CREATE FUNCTION pg_temp.id(p_name text) RETURNS text
LANGUAGE sql AS $$ SELECT r.id FROM runs AS r WHERE r.name = p_name $$;
-- Wait for an instance to end and check how it ended; returns its output (column order kept).
CREATE FUNCTION pg_temp.ended(p_name text, p_want text DEFAULT 'completed') RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text := df.await_instance(pg_temp.id(p_name), 60);
    v_output text := (SELECT i.output FROM df.instance_info(pg_temp.id(p_name)) AS i);
BEGIN
    IF v_status <> p_want THEN
        RAISE EXCEPTION '%: ended %, want % (output: %)', p_name, v_status, p_want, v_output;
    END IF;
    RETURN v_output;
END
$$;
-- Poll until a statement-level condition holds (pg_stat_activity is re-read every round).
CREATE FUNCTION pg_temp.wait_for(label text, cond text, timeout_s double precision DEFAULT 20) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_deadline timestamptz := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => timeout_s);
    v_ok boolean;
BEGIN
    LOOP
        PERFORM pg_catalog.pg_stat_clear_snapshot();
        EXECUTE 'SELECT (' || cond || ')' INTO v_ok;
        EXIT WHEN v_ok;
        IF pg_catalog.clock_timestamp() > v_deadline THEN
            RAISE EXCEPTION 'timed out waiting for %', label;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.02);
    END LOOP;
END
$$;

CREATE TABLE public.effects (n int);
CREATE TABLE public.counter (name text PRIMARY KEY, n int NOT NULL);
INSERT INTO public.counter VALUES ('loop', 0), ('cond', 0), ('outer', 0), ('inner', 0), ('nested', 0);
CREATE TABLE public.seen (o int, i int);
CREATE TABLE public.t (n int);
INSERT INTO public.t SELECT g FROM generate_series(1, 1000) AS g;
DELETE FROM public.t WHERE n % 2 = 0;
CREATE TABLE public.log (step text);
CREATE PROCEDURE public.two_commits() LANGUAGE plpgsql AS $p$
BEGIN
    INSERT INTO public.log VALUES ('first');
    COMMIT;
    INSERT INTO public.log VALUES ('second');
    COMMIT;
END $p$;
DO $$ BEGIN PERFORM df.setvar('greeting', '''hello'''); END $$;

-- The real clock: the schedule wait started first, checked last (at most a minute).
INSERT INTO runs VALUES ('schedule', df.start(df.wait_for_schedule('* * * * *')
    ~> 'SELECT extract(second FROM now()) < 15 AS soon_after_the_minute'));

-- ---------------------------------------------------------------------------
-- Every node type, end to end.
-- ---------------------------------------------------------------------------
INSERT INTO runs VALUES ('sql', df.start($q$SELECT 42 AS answer, 1.50::numeric AS num,
    timestamptz '2024-06-15 12:30:00+00' AS ts, 'x'::text AS t, true AS b, NULL::int AS z,
    date '2024-06-15' AS d, '{"k":[1,2]}'::jsonb AS j$q$));
INSERT INTO runs VALUES ('then', df.start('SELECT 1 AS a' ~> 'SELECT 2 AS b'));
INSERT INTO runs VALUES ('named', df.start('SELECT 5 AS n' |=> 'n' ~> 'SELECT $n * 2 AS doubled'));
INSERT INTO runs VALUES ('if', df.start(df.if('SELECT true', 'SELECT 1 AS t', 'SELECT 2 AS e')));
INSERT INTO runs VALUES ('ifop', df.start('SELECT 0' ?> 'SELECT 1 AS t' !> 'SELECT 2 AS e'));
INSERT INTO runs VALUES ('if_rows', df.start('SELECT 1 AS x WHERE false' |=> 'r'
    ~> df.if_rows('r', 'SELECT 1 AS yes', 'SELECT 2 AS no')));
INSERT INTO runs VALUES ('join', df.start('SELECT 1 AS a' & 'SELECT 2 AS b'));
INSERT INTO runs VALUES ('join3', df.start(df.join3('SELECT 1 AS a', df.sleep(0), 'SELECT 3 AS c')));
INSERT INTO runs VALUES ('race', df.start('SELECT 1 AS fast' | df.sleep(30)));
INSERT INTO runs VALUES ('sleep', df.start(df.sleep(1)));
INSERT INTO runs VALUES ('loop_break', df.start(df.loop(
    ('UPDATE public.counter SET n = n + 1 WHERE name = ''loop'' RETURNING n' |=> 'c')
    ~> df.if('SELECT $c >= 3', df.break('{"status": "done"}'), 'SELECT 0'))));
INSERT INTO runs VALUES ('loop_cond', df.start(df.loop(
    'UPDATE public.counter SET n = n + 1 WHERE name = ''cond'' RETURNING n' |=> 'c', 'SELECT $c < 3')));
-- A loop containing a join and a race, breaking from inside the join (with a branch still waiting).
INSERT INTO runs VALUES ('nested', df.start(df.loop(
    ('UPDATE public.counter SET n = n + 1 WHERE name = ''nested'' RETURNING n' |=> 'k')
    ~> (('SELECT $k AS seen' | df.sleep(30))
        & df.if('SELECT $k >= 2', df.wait_for_signal('never') & df.break('two'), 'SELECT 0'))
) |=> 'l' ~> 'SELECT $l AS got'));
-- Nested loops: the inner loop's named result is used by the outer body and condition.
INSERT INTO runs VALUES ('nested_loops', df.start(df.loop(
    ('UPDATE public.counter SET n = n + 1 WHERE name = ''outer'' RETURNING n' |=> 'o')
    ~> (df.loop('UPDATE public.counter SET n = n + 1 WHERE name = ''inner'' RETURNING n' |=> 'i',
                'SELECT $i % 3 <> 0') |=> 'inner')
    ~> 'INSERT INTO public.seen VALUES ($o, $inner) RETURNING o, i',
    'SELECT $o < 2')));
INSERT INTO runs VALUES ('vars', df.start(
    'SELECT {greeting} AS g, ''{sys_instance_id}'' AS id, ''{sys_label}'' AS l', 'e2e-label'));
-- Twenty steps in a row, each effect once.
CREATE AGGREGATE pg_temp.chain(text) (SFUNC = df.seq, STYPE = text);
INSERT INTO runs VALUES ('twenty', df.start(
    (SELECT pg_temp.chain(pg_catalog.format('INSERT INTO public.effects VALUES (%s)', 100 + g) ORDER BY g)
       FROM generate_series(1, 20) AS g)));

-- Failures.
INSERT INTO runs VALUES ('fail', df.start('SELECT 1/0' ~> 'INSERT INTO public.effects VALUES (-1)'));
INSERT INTO runs VALUES ('break_outside', df.start(df.break()));
INSERT INTO runs VALUES ('multi', df.start('SELECT 1; SELECT 2'));
INSERT INTO runs VALUES ('tx_control', df.start('COMMIT'));
INSERT INTO runs VALUES ('unsupported', df.start('SELECT interval ''1 day'' AS x'));

-- As the submitter, inside a workflow.
INSERT INTO runs VALUES ('whoami', df.start(
    'SELECT current_user::text AS u, session_user::text AS s, df.in_workflow() AS w'));
INSERT INTO runs VALUES ('setvar_in_step', df.start('SELECT df.setvar(''k'', ''v'')'));

-- Statements that cannot run in a transaction block, and a step in a named database.
INSERT INTO runs VALUES ('vacuum', df.start('VACUUM public.t' ~> 'SELECT 1 AS after'));
INSERT INTO runs VALUES ('procedure', df.start('CALL public.two_commits()'
    ~> 'SELECT count(*)::int AS c FROM public.log'));
INSERT INTO runs VALUES ('database', df.start('SELECT current_database()::text AS db', database => current_database()));

DO $$
BEGIN
    PERFORM pg_temp.expect('sql', pg_temp.ended('sql'),
        '{"rows":[{"answer":42,"num":"1.50","ts":"2024-06-15T12:30:00+00:00","t":"x","b":true,"z":null,'
        '"d":"2024-06-15","j":{"k":[1,2]}}],"row_count":1}');
    PERFORM pg_temp.expect('sql result', df.result(pg_temp.id('sql'))::jsonb::text,
        '{"rows": [{"b": true, "d": "2024-06-15", "j": {"k": [1, 2]}, "t": "x", "z": null, "ts": "2024-06-15T12:30:00+00:00", "num": "1.50", "answer": 42}], "row_count": 1}');
    PERFORM pg_temp.expect('then', pg_temp.ended('then'), '{"rows":[{"b":2}],"row_count":1}');
    PERFORM pg_temp.expect('then result', df.result(pg_temp.id('then')), '{"rows": [{"b": 2}], "row_count": 1}');
    PERFORM pg_temp.expect('named', pg_temp.ended('named'), '{"rows":[{"doubled":10}],"row_count":1}');
    PERFORM pg_temp.expect('if', pg_temp.ended('if'), '{"rows":[{"t":1}],"row_count":1}');
    PERFORM pg_temp.expect('ifop', pg_temp.ended('ifop'), '{"rows":[{"e":2}],"row_count":1}');
    PERFORM pg_temp.expect('if_rows', pg_temp.ended('if_rows'), '{"rows":[{"no":2}],"row_count":1}');
    PERFORM pg_temp.expect('join', pg_temp.ended('join')::jsonb::text,
        '[{"rows": [{"a": 1}], "row_count": 1}, {"rows": [{"b": 2}], "row_count": 1}]');
    PERFORM pg_temp.expect('join3', pg_temp.ended('join3')::jsonb::text,
        '[{"rows": [{"a": 1}], "row_count": 1}, {"slept": true, "seconds": 0}, {"rows": [{"c": 3}], "row_count": 1}]');
    PERFORM pg_temp.expect('race', pg_temp.ended('race'), '{"rows":[{"fast":1}],"row_count":1}');
    PERFORM pg_temp.expect('sleep', pg_temp.ended('sleep')::jsonb::text, '{"slept": true, "seconds": 1}');
    PERFORM pg_temp.expect('loop_break', pg_temp.ended('loop_break')::jsonb::text, '{"status": "done"}');
    PERFORM pg_temp.expect('loop_break n', (SELECT n FROM public.counter WHERE name = 'loop')::text, '3');
    PERFORM pg_temp.expect('loop_cond', pg_temp.ended('loop_cond'), '{"rows":[{"n":3}],"row_count":1}');
    PERFORM pg_temp.expect('nested', pg_temp.ended('nested'), '{"rows":[{"got":"two"}],"row_count":1}');
    PERFORM pg_temp.expect('nested_loops', pg_temp.ended('nested_loops'), '{"rows":[{"o":2,"i":6}],"row_count":1}');
    PERFORM pg_temp.expect('nested_loops seen', (SELECT string_agg(o || ':' || i, ',' ORDER BY o) FROM public.seen), '1:3,2:6');
    PERFORM pg_temp.expect('vars', pg_temp.ended('vars'),
        pg_catalog.format('{"rows":[{"g":"hello","id":"%s","l":"e2e-label"}],"row_count":1}', pg_temp.id('vars')));
    PERFORM pg_temp.ended('twenty');
    PERFORM pg_temp.expect('twenty effects',
        (SELECT count(*) || '/' || count(DISTINCT n) FROM public.effects WHERE n > 100), '20/20');
END $$;

DO $$
BEGIN
    -- The loop broke in its second round.
    PERFORM pg_temp.expect('nested rounds', (SELECT n FROM public.counter WHERE name = 'nested')::text, '2');
    -- A failed step fails its ancestors, skips the rest, and the output carries the error.
    PERFORM pg_temp.ended('fail', 'failed');
    IF (SELECT output FROM df.instance_info(pg_temp.id('fail'))) NOT LIKE '%division by zero%' THEN
        RAISE EXCEPTION 'fail output: %', (SELECT output FROM df.instance_info(pg_temp.id('fail')));
    END IF;
    PERFORM pg_temp.expect('fail result', df.result(pg_temp.id('fail')), NULL);
    PERFORM pg_temp.expect('fail effect', (SELECT count(*) FROM public.effects WHERE n = -1)::text, '0');
    PERFORM pg_temp.expect('fail nodes', (SELECT string_agg(node_type || ':' || status || ':' || inferred_status, ',' ORDER BY node_type, query)
                                            FROM df.instance_nodes(pg_temp.id('fail'))),
        'SQL:pending:skipped,SQL:failed:failed,THEN:failed:failed');
    PERFORM pg_temp.ended('break_outside', 'failed');
    IF (SELECT output FROM df.instance_info(pg_temp.id('break_outside'))) NOT LIKE 'df.break() was called outside of a loop.%' THEN
        RAISE EXCEPTION 'break_outside output: %', (SELECT output FROM df.instance_info(pg_temp.id('break_outside')));
    END IF;
    PERFORM pg_temp.ended('multi', 'failed');
    IF (SELECT output FROM df.instance_info(pg_temp.id('multi'))) NOT LIKE '%cannot insert multiple commands into a prepared statement%' THEN
        RAISE EXCEPTION 'multi output: %', (SELECT output FROM df.instance_info(pg_temp.id('multi')));
    END IF;
    PERFORM pg_temp.ended('tx_control', 'failed');
    PERFORM pg_temp.ended('unsupported', 'failed');
    IF (SELECT output FROM df.instance_info(pg_temp.id('unsupported'))) NOT LIKE 'Unsupported column type ''INTERVAL'' for column ''x''.%' THEN
        RAISE EXCEPTION 'unsupported output: %', (SELECT output FROM df.instance_info(pg_temp.id('unsupported')));
    END IF;
    PERFORM pg_temp.expect('await failed', df.await_instance(pg_temp.id('fail'), 5), 'failed');
END $$;

DO $$
BEGIN
    PERFORM pg_temp.expect('whoami', pg_temp.ended('whoami'),
        pg_catalog.format('{"rows":[{"u":"%s","s":"%s","w":true}],"row_count":1}', current_user, current_user));
    PERFORM pg_temp.expect('in_workflow outside', df.in_workflow()::text, 'false');
    PERFORM pg_temp.ended('setvar_in_step', 'failed');
    IF (SELECT output FROM df.instance_info(pg_temp.id('setvar_in_step'))) NOT LIKE 'df.setvar() cannot be called inside a workflow%' THEN
        RAISE EXCEPTION 'setvar_in_step output: %', (SELECT output FROM df.instance_info(pg_temp.id('setvar_in_step')));
    END IF;
    PERFORM pg_temp.expect('setvar_in_step var', df.getvar('k'), NULL);
    PERFORM pg_temp.expect('vacuum', pg_temp.ended('vacuum'), '{"rows":[{"after":1}],"row_count":1}');
    PERFORM pg_temp.expect('procedure', pg_temp.ended('procedure'), '{"rows":[{"c":2}],"row_count":1}');
    PERFORM pg_temp.expect('procedure log', (SELECT string_agg(step, ',' ORDER BY step) FROM public.log), 'first,second');
    PERFORM pg_temp.expect('database', pg_temp.ended('database'),
        pg_catalog.format('{"rows":[{"db":"%s"}],"row_count":1}', current_database()));
END $$;

-- CREATE INDEX CONCURRENTLY waits for every older snapshot in the database, df.await_instance's
-- (held for the whole call) included: wait for it from a procedure that commits between polls.
CREATE PROCEDURE pg_temp.settle(p_id text, INOUT p_status text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_deadline timestamptz := pg_catalog.clock_timestamp() + interval '30 seconds';
BEGIN
    LOOP
        p_status := df.status(p_id);
        EXIT WHEN p_status IN ('completed', 'failed', 'cancelled') OR pg_catalog.clock_timestamp() > v_deadline;
        COMMIT;
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
END
$$;
INSERT INTO runs VALUES ('cic', df.start('CREATE INDEX CONCURRENTLY t_n_idx ON public.t (n)'));
SELECT pg_temp.id('cic') AS cic_id \gset
CALL pg_temp.settle(:'cic_id', NULL) \gset cic_
DO $$
BEGIN
    PERFORM pg_temp.expect('cic', df.status(pg_temp.id('cic')), 'completed');
    PERFORM pg_temp.expect('cic valid', (SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.t_n_idx'::regclass)::text, 'true');
END $$;

-- Last, the schedule: it fired at a minute boundary.
DO $$
BEGIN
    PERFORM pg_temp.expect('schedule', pg_temp.ended('schedule'), '{"rows":[{"soon_after_the_minute":true}],"row_count":1}');
    PERFORM pg_temp.expect('schedule node', (SELECT result FROM df.instance_nodes(pg_temp.id('schedule')) WHERE node_type = 'WAIT_SCHEDULE')::jsonb::text,
        '{"scheduled": true}');
END $$;
