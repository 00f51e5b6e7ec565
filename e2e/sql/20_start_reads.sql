-- df.start and the basic reads, as an ordinary role, with a live worker.
\set QUIET on
\pset tuples_only on

DO $$
DECLARE
    v_id text;
    v_status text;
    r record;
BEGIN
    v_id := df.start('SELECT 42 AS answer', 'e2e-start');
    IF v_id !~ '^[0-9a-f]{8}$' THEN RAISE EXCEPTION 'bad id %', v_id; END IF;
    IF df.status(v_id) NOT IN ('pending', 'running', 'completed') THEN
        RAISE EXCEPTION 'unexpected status %', df.status(v_id);
    END IF;
    SELECT * INTO r FROM df.instance_info(v_id);
    IF r.label <> 'e2e-start' OR r.function_name <> 'pg_durable::orchestration::execute-function-graph' THEN
        RAISE EXCEPTION 'instance_info wrong: %', r;
    END IF;
END $$;

-- df.start is in the caller's transaction: the worker sees it only after COMMIT.
SELECT set_config('e2e.seq_id', df.start('SELECT 1 AS one' ~> 'SELECT 2 AS two', 'e2e-seq'), false);
SELECT set_config('e2e.seq_status', df.await_instance(current_setting('e2e.seq_id'), 30), false);
DO $$ BEGIN
    IF current_setting('e2e.seq_status') <> 'completed' THEN RAISE EXCEPTION 'seq ended %', current_setting('e2e.seq_status'); END IF;
    IF df.result(current_setting('e2e.seq_id')) <> '{"rows": [{"two": 2}], "row_count": 1}' THEN
        RAISE EXCEPTION 'result %', df.result(current_setting('e2e.seq_id'));
    END IF;
    IF (SELECT output FROM df.instance_info(current_setting('e2e.seq_id'))) <> '{"rows":[{"two":2}],"row_count":1}' THEN
        RAISE EXCEPTION 'output %', (SELECT output FROM df.instance_info(current_setting('e2e.seq_id')));
    END IF;
END $$;

-- Unknown ids read as nothing; writes to them say not found.
DO $$
BEGIN
    IF df.status('deadbeef') IS NOT NULL OR df.result('deadbeef') IS NOT NULL THEN
        RAISE EXCEPTION 'unknown id is visible';
    END IF;
    IF EXISTS (SELECT 1 FROM df.instance_info('deadbeef')) THEN RAISE EXCEPTION 'instance_info row'; END IF;
    BEGIN
        PERFORM df.cancel('deadbeef');
        RAISE EXCEPTION 'cancel of an unknown id succeeded';
    EXCEPTION WHEN SQLSTATE 'DF003' THEN NULL;
    END;
END $$;

-- Bad input: a clear error and nothing written.
DO $$
DECLARE
    v_before bigint := (SELECT count(*) FROM df.instances);
BEGIN
    BEGIN
        PERFORM df.start('{"node_type":"FOO"}');
        RAISE EXCEPTION 'unknown node type accepted';
    EXCEPTION WHEN SQLSTATE 'DF001' THEN
        IF SQLERRM NOT LIKE 'Invalid durable function: Unknown node_type ''FOO''.%' THEN RAISE; END IF;
    END;
    BEGIN
        PERFORM df.start('SELECT 1', transaction_mode => 'new');
        RAISE EXCEPTION 'transaction_mode new accepted';
    EXCEPTION WHEN SQLSTATE 'DF007' THEN NULL;
    END;
    IF (SELECT count(*) FROM df.instances) <> v_before THEN RAISE EXCEPTION 'bad input wrote rows'; END IF;
END $$;

-- list_instances, both forms, with paging.
DO $$
DECLARE
    v_cursor text;
    v_seen integer := 0;
    v_pages integer := 0;
    r record;
BEGIN
    FOR i IN 1 .. 5 LOOP PERFORM df.start('SELECT ' || i, 'e2e-page'); END LOOP;
    IF (SELECT count(*) FROM df.list_instances(NULL, 1000)) < 7 THEN RAISE EXCEPTION 'basic list short'; END IF;
    LOOP
        v_pages := v_pages + 1;
        FOR r IN SELECT * FROM df.list_instances(NULL, 2, 'e2e-page', v_cursor) LOOP
            v_seen := v_seen + 1;
            v_cursor := r.next_cursor;
        END LOOP;
        EXIT WHEN v_cursor IS NULL;
    END LOOP;
    IF v_seen <> 5 OR v_pages <> 3 THEN RAISE EXCEPTION 'paging saw % rows in % pages', v_seen, v_pages; END IF;
    BEGIN
        PERFORM * FROM df.list_instances(NULL, 10, NULL, 'zz');
        RAISE EXCEPTION 'bad cursor accepted';
    EXCEPTION WHEN SQLSTATE 'DF010' THEN NULL;
    END;
END $$;

-- version, target_database, run
DO $$ BEGIN
    IF df.version() !~ '^\d+\.\d+\.\d+ \(built ' THEN RAISE EXCEPTION 'version %', df.version(); END IF;
    IF df.target_database() <> current_database() THEN RAISE EXCEPTION 'target_database'; END IF;
    IF df.run() <> 'Triggered run for all pending instances' THEN RAISE EXCEPTION 'run'; END IF;
END $$;
