-- e2e: monitoring (df.explain, df.instance_nodes, df.instance_executions, df.metrics)
-- Run with psql -v ON_ERROR_STOP=1 as an ordinary LOGIN role granted
-- df.grant_usage(role, include_http => true), against a live worker.
-- Expected texts come from PGD_FIXTURES.md section 3 and PGD_REFERENCE.md 3.2/3.4.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- A tiny assertion helper for this session.
CREATE FUNCTION pg_temp.expect(label text, got text, want text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF got IS DISTINCT FROM want THEN
        RAISE EXCEPTION '%: got %, want %', label, pg_catalog.to_json(got), pg_catalog.to_json(want);
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Dry runs: PGD_FIXTURES 3, byte for byte (padding included).
-- ---------------------------------------------------------------------------
DO $$
BEGIN
    PERFORM pg_temp.expect('G1', df.explain(df.as('SELECT count(*) FROM orders','n') ~> 'SELECT $n * 2'),
        E'SQL: SELECT count(*) FROM orders |=> ''n''    \n→ SQL: SELECT $n * 2                        ');
    PERFORM pg_temp.expect('G2', df.explain(df.if('SELECT true','SELECT 1','SELECT 2')),
        E'IF                          \n    ? condition:            \n      └─SQL: SELECT true    \n    ✓ then:                 \n      └─SQL: SELECT 1       \n    ✗ else:                 \n      └─SQL: SELECT 2       ');
    PERFORM pg_temp.expect('G3', df.explain(df.join3('SELECT 1', df.sleep(5), 'SELECT 3')),
        E'JOIN (3)                 \n    ║ branch 1:          \n      ├─SQL: SELECT 1    \n    ║ branch 2:          \n      ├─SLEEP 5s         \n    ║ branch 3:          \n      └─SQL: SELECT 3    ');
    PERFORM pg_temp.expect('G4', df.explain(df.loop(df.race('SELECT poll()', df.sleep(30)) ~> 'SELECT log_it()', 'SELECT more()')),
        E'LOOP (while)                        \n    ↻ body:                         \n      └─RACE                        \n          ║ branch 1:               \n            ├─SQL: SELECT poll()    \n          ║ branch 2:               \n            └─SLEEP 30s             \n      → SQL: SELECT log_it()        \n    ? while:                        \n      └─SQL: SELECT more()          ');
    PERFORM pg_temp.expect('sql', df.explain('SELECT 1'), 'SQL: SELECT 1    ');
    PERFORM pg_temp.expect('then-name', df.explain('SELECT 1' ~> 'SELECT 2' |=> 'last'),
        E'SQL: SELECT 1      \n→ SQL: SELECT 2    ');
    PERFORM pg_temp.expect('if_rows', df.explain(df.if_rows('r', df.wait_for_signal('approve',3600), df.break('a very long break value here'))),
        E'IF                                      \n    ✓ then:                             \n      └─SIGNAL ''approve'' (3600s)        \n    ✗ else:                             \n      └─BREAK ''a very long break...''    ');
    PERFORM pg_temp.expect('http', df.explain(df.http('https://example.com/hook/with/a/very/long/path/segment') ~> df.wait_for_schedule('*/5 * * * *')),
        E'HTTP POST https://example.com/hook/with/a/very/...    \n→ WAIT ''*/5 * * * *''                                  ');
    PERFORM pg_temp.expect('cut', df.explain(df.sql('SELECT id, name, email FROM customers WHERE region = 42 ORDER BY id')),
        'SQL: SELECT id, name, email FROM customers WHERE reg...    ');
    -- The same expressions passed as text are evaluated by explain itself.
    PERFORM pg_temp.expect('G2 text', df.explain($x$df.if('SELECT true','SELECT 1','SELECT 2')$x$),
        df.explain(df.if('SELECT true','SELECT 1','SELECT 2')));
    -- CONTRACT.md 9: cut by characters, never an error on multi-byte text.
    PERFORM pg_temp.expect('multibyte', df.explain('SELECT ''' || pg_catalog.repeat('é', 60) || ''''),
        'SQL: SELECT ''' || pg_catalog.repeat('é', 39) || '...    ');
    -- Dispatch texts.
    PERFORM pg_temp.expect('hello', df.explain('hello'),
        E'Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.\nHint: DSL expressions use df.*() functions and operators like ~>, |=>, &, |.');
    PERFORM pg_temp.expect('not found', df.explain('deadbeef'), 'Instance ''deadbeef'' not found');
    PERFORM pg_temp.expect('null', df.explain('df.sql(NULL)'), 'Expression returned NULL');
    PERFORM pg_temp.expect('graph error',
        df.explain('{"node_type":"THEN","left_node":{"node_type":"FOO"},"right_node":{"node_type":"SQL","query":"x"}}'),
        'Invalid durable function graph: root.left: Unknown node_type ''FOO''. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL');
END
$$;

-- Explaining df.start(...) starts nothing.
CREATE TEMP TABLE e2e_before AS SELECT pg_catalog.count(*) AS n FROM df.instances;
DO $$
BEGIN
    PERFORM pg_temp.expect('explain start', df.explain($x$df.start('SELECT 1' ~> 'SELECT 2')$x$),
        E'SQL: SELECT 1      \n→ SQL: SELECT 2    ');
    IF (SELECT pg_catalog.count(*) FROM df.instances) <> (SELECT n FROM e2e_before) THEN
        RAISE EXCEPTION 'df.explain(df.start(...)) started an instance';
    END IF;
END
$$;

-- metrics is not for ordinary roles.
DO $$
BEGIN
    PERFORM * FROM df.metrics();
    RAISE EXCEPTION 'df.metrics() should need a grant';
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$$;

-- ---------------------------------------------------------------------------
-- A real run: the untaken IF arm reads skipped, everything else completed.
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE e2e_run AS
SELECT df.start(df.if('SELECT true', 'SELECT 1 AS one', 'SELECT 2 AS two'), 'e2e-monitoring') AS id;

DO $$
DECLARE
    v_id text := (SELECT id FROM e2e_run);
    v_if text;
    r record;
    v_explain text;
BEGIN
    PERFORM pg_temp.expect('await', df.await_instance(v_id, 60), 'completed');

    SELECT n.node_id INTO v_if FROM df.instance_nodes(v_id) AS n WHERE n.node_type = 'IF';
    FOR r IN SELECT n.* FROM df.instance_nodes(v_id) AS n LOOP
        IF r.query = 'SELECT 2 AS two' THEN
            PERFORM pg_temp.expect('else arm', r.inferred_status || '/' || r.inferred_status_from_ancestor_id,
                                   'skipped/' || v_if);
            PERFORM pg_temp.expect('else arm stored', r.status, 'pending');
        ELSE
            PERFORM pg_temp.expect('node ' || r.node_id, r.inferred_status, 'completed');
            PERFORM pg_temp.expect('node stamped ' || r.node_id,
                                   ((r.status_details::jsonb ->> 'execution_id') LIKE v_id || '::1%')::text, 'true');
        END IF;
        IF r.resource_version IS NULL THEN
            RAISE EXCEPTION 'resource_version missing';
        END IF;
    END LOOP;
    IF (SELECT pg_catalog.count(*) FROM df.instance_nodes(v_id)) <> 4 THEN
        RAISE EXCEPTION 'expected 4 nodes';
    END IF;
    IF (SELECT pg_catalog.count(*) FROM df.instance_nodes(v_id, 1) AS c WHERE c.execution_id = 1) <> 4 THEN
        RAISE EXCEPTION 'compat form: expected 4 rows with execution_id 1';
    END IF;

    v_explain := df.explain(v_id);
    PERFORM pg_temp.expect('explain', pg_catalog.regexp_replace(v_explain, ' +(\n|$)', '\1', 'g'),
        'Instance: ' || v_id || E' (e2e-monitoring)\nStatus:   ✓ Completed\n'
        || E'Output:   {"rows":[{"one":1}],"row_count":1}\n\n'
        || E'IF ✓\n    ? condition:\n      └─SQL: SELECT true ✓\n    ✓ then:\n      └─SQL: SELECT 1 AS one ✓\n'
        || E'    ✗ else:\n      └─SQL: SELECT 2 AS two ⊘');

    SELECT e.* INTO r FROM df.instance_executions(v_id) AS e;
    PERFORM pg_temp.expect('execution', r.execution_id || ' ' || r.status || ' ' || r.output,
                           '1 Completed {"rows":[{"one":1}],"row_count":1}');
    IF r.duration_ms IS NULL OR r.duration_ms < 0 OR r.event_count < 8 THEN
        RAISE EXCEPTION 'execution numbers: % events, % ms', r.event_count, r.duration_ms;
    END IF;
    BEGIN
        PERFORM * FROM df.instance_executions(v_id, 0);
        RAISE EXCEPTION 'limit 0 accepted';
    EXCEPTION WHEN SQLSTATE 'DF009' THEN
        NULL;
    END;
END
$$;

\echo 60_monitoring: ok
