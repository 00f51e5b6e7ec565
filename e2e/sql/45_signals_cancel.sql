-- e2e: signals (queued, while waiting, timeouts, broadcast to parallel waits), RACE cancellation of the
-- loser's running SQL, cancel of a running statement, and what finished or foreign instances refuse.
-- Expected values come from PGD_REFERENCE.md 1.2, 2.4, 2.8, 2.9, 3.2 and CONTRACT.md section 5.
-- A signal or cancel is its own statement: the worker sees it once it commits.
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
CREATE TEMP TABLE runs (name text PRIMARY KEY, id text NOT NULL);
CREATE FUNCTION pg_temp.id(p_name text) RETURNS text
LANGUAGE sql AS $$ SELECT r.id FROM runs AS r WHERE r.name = p_name $$;
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
-- How many of an instance's nodes of a type are running.
CREATE FUNCTION pg_temp.running(p_name text, p_type text) RETURNS bigint
LANGUAGE sql AS $$
    SELECT count(*) FROM df.instance_nodes(pg_temp.id(p_name)) AS n WHERE n.node_type = p_type AND n.status = 'running'
$$;
-- Whether one of my backends is running exactly this statement.
CREATE FUNCTION pg_temp.active(p_query text) RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a WHERE a.query = p_query AND a.state = 'active')
$$;
CREATE TABLE public.ticks (n int);

-- ---------------------------------------------------------------------------
-- Signals.
-- ---------------------------------------------------------------------------
-- Sent before the wait starts: queued, consumed by the first wait to start, in send order.
INSERT INTO runs VALUES ('early', df.start(df.sleep(1) ~> (df.wait_for_signal('go') |=> 's') ~> 'SELECT $s.data AS got'));
DO $$ BEGIN PERFORM pg_temp.expect('signal early', df.signal(pg_temp.id('early'), 'go', '{"x": 1}'), 'OK'); END $$;
INSERT INTO runs VALUES ('order', df.start(df.sleep(1) ~> (df.wait_for_signal('q') |=> 'a')
    ~> (df.wait_for_signal('q') |=> 'b') ~> 'SELECT $a.data AS a, $b.data AS b'));
DO $$ BEGIN PERFORM df.signal(pg_temp.id('order'), 'q', 'one'); END $$;
DO $$ BEGIN PERFORM df.signal(pg_temp.id('order'), 'q', 'two'); END $$;
INSERT INTO runs VALUES ('waiting', df.start(df.wait_for_signal('approve')));
INSERT INTO runs VALUES ('timeout', df.start(df.wait_for_signal('never', 1)));
-- Two waits for the same name active at once: one signal reaches both.
INSERT INTO runs VALUES ('broadcast', df.start(df.wait_for_signal('go') & df.wait_for_signal('go')));
INSERT INTO runs VALUES ('cancel_wait', df.start(df.wait_for_signal('never')));
INSERT INTO runs VALUES ('done', df.start('SELECT 1 AS one'));

DO $$
BEGIN
    PERFORM pg_temp.wait_for('waiting', 'pg_temp.running(''waiting'', ''SIGNAL'') = 1');
    PERFORM pg_temp.wait_for('broadcast', 'pg_temp.running(''broadcast'', ''SIGNAL'') = 2');
    PERFORM pg_temp.wait_for('cancel_wait', 'pg_temp.running(''cancel_wait'', ''SIGNAL'') = 1');
END $$;
DO $$ BEGIN PERFORM df.signal(pg_temp.id('waiting'), 'approve', 'yes'); END $$;
DO $$ BEGIN PERFORM df.signal(pg_temp.id('broadcast'), 'go', '{"v": 7}'); END $$;
DO $$ BEGIN
    PERFORM pg_temp.expect('cancel text', df.cancel(pg_temp.id('cancel_wait'), 'enough'),
                           pg_catalog.format('Instance %s cancelled: enough', pg_temp.id('cancel_wait')));
END $$;

DO $$
BEGIN
    PERFORM pg_temp.expect('early', pg_temp.ended('early'), '{"rows":[{"got":"{\"x\":1}"}],"row_count":1}');
    PERFORM pg_temp.expect('order', pg_temp.ended('order'), '{"rows":[{"a":"one","b":"two"}],"row_count":1}');
    PERFORM pg_temp.expect('waiting', pg_temp.ended('waiting')::jsonb::text,
        '{"data": "yes", "timed_out": false, "signal_name": "approve"}');
    PERFORM pg_temp.expect('timeout', pg_temp.ended('timeout')::jsonb::text,
        '{"data": null, "timed_out": true, "signal_name": "never"}');
    PERFORM pg_temp.expect('broadcast', pg_temp.ended('broadcast')::jsonb::text,
        '[{"data": {"v": 7}, "timed_out": false, "signal_name": "go"}, {"data": {"v": 7}, "timed_out": false, "signal_name": "go"}]');
    PERFORM pg_temp.expect('cancel_wait', df.await_instance(pg_temp.id('cancel_wait'), 10), 'cancelled');
    PERFORM pg_temp.expect('cancel_wait result', df.result(pg_temp.id('cancel_wait')), NULL);
    PERFORM pg_temp.ended('done');
END $$;

-- Finished instances: a signal is an error, a cancel changes nothing; unknown ids are not found.
DO $$
DECLARE
    v_result text := df.result(pg_temp.id('done'));
BEGIN
    BEGIN
        PERFORM df.signal(pg_temp.id('done'), 'late');
        RAISE EXCEPTION 'a signal to a finished instance was accepted';
    EXCEPTION WHEN SQLSTATE 'DF008' THEN NULL;
    END;
    PERFORM df.cancel(pg_temp.id('done'), 'too late');
    PERFORM pg_temp.expect('done status', df.status(pg_temp.id('done')), 'completed');
    PERFORM pg_temp.expect('done result', df.result(pg_temp.id('done')), v_result);
    PERFORM df.cancel(pg_temp.id('cancel_wait'), 'again');
    PERFORM pg_temp.expect('cancelled status', df.status(pg_temp.id('cancel_wait')), 'cancelled');
    BEGIN
        PERFORM df.signal(pg_temp.id('cancel_wait'), 'late');
        RAISE EXCEPTION 'a signal to a cancelled instance was accepted';
    EXCEPTION WHEN SQLSTATE 'DF008' THEN NULL;
    END;
    BEGIN
        PERFORM df.signal('deadbeef', 'x');
        RAISE EXCEPTION 'a signal to an unknown instance was accepted';
    EXCEPTION WHEN SQLSTATE 'DF003' THEN
        PERFORM pg_temp.expect('unknown', SQLERRM, 'Instance not found or access denied: deadbeef');
    END;
END $$;

-- ---------------------------------------------------------------------------
-- RACE: the loser's running statement is cancelled in the server and infers as skipped.
-- ---------------------------------------------------------------------------
INSERT INTO runs VALUES ('race_sql', df.start('SELECT pg_sleep(30)' | df.wait_for_signal('win')));
DO $$
BEGIN
    PERFORM pg_temp.wait_for('the losing step', 'pg_temp.active(''SELECT pg_sleep(30)'')');
    PERFORM pg_temp.wait_for('the winning wait', 'pg_temp.running(''race_sql'', ''SIGNAL'') = 1');
END $$;
DO $$ BEGIN PERFORM df.signal(pg_temp.id('race_sql'), 'win', '"first"'); END $$;
DO $$
DECLARE
    v_root text := (SELECT root_node FROM df.instances WHERE id = pg_temp.id('race_sql'));
BEGIN
    PERFORM pg_temp.expect('race_sql', pg_temp.ended('race_sql')::jsonb::text,
        '{"data": "first", "timed_out": false, "signal_name": "win"}');
    PERFORM pg_temp.wait_for('the loser to be cancelled', 'NOT pg_temp.active(''SELECT pg_sleep(30)'')', 5);
    PERFORM pg_temp.expect('race_sql loser',
        (SELECT inferred_status || ':' || inferred_status_from_ancestor_id FROM df.instance_nodes(pg_temp.id('race_sql'))
          WHERE node_type = 'SQL'), 'skipped:' || v_root);
    PERFORM pg_temp.expect('race_sql nodes',
        (SELECT string_agg(node_type || ':' || inferred_status, ',' ORDER BY node_type) FROM df.instance_nodes(pg_temp.id('race_sql'))),
        'RACE:completed,SIGNAL:completed,SQL:skipped');
END $$;

-- A loop racing a signal: the signal wins, the loop is stamped as the reference does and stops.
INSERT INTO runs VALUES ('race_loop', df.start(df.loop('INSERT INTO public.ticks VALUES (1)') | df.wait_for_signal('stop')));
DO $$ BEGIN PERFORM pg_temp.wait_for('three rounds', '(SELECT count(*) FROM public.ticks) >= 3'); END $$;
DO $$ BEGIN PERFORM df.signal(pg_temp.id('race_loop'), 'stop', 'now'); END $$;
DO $$
DECLARE
    v_ticks bigint;
BEGIN
    PERFORM pg_temp.expect('race_loop', pg_temp.ended('race_loop')::jsonb::text,
        '{"data": "now", "timed_out": false, "signal_name": "stop"}');
    PERFORM pg_temp.expect('race_loop loop',
        (SELECT status || ':' || result FROM df.instance_nodes(pg_temp.id('race_loop')) WHERE node_type = 'LOOP'),
        'failed:"Loop branch cancelled after losing RACE"');
    v_ticks := (SELECT count(*) FROM public.ticks);
    PERFORM pg_catalog.pg_sleep(0.3);  -- six padded rounds' worth: none may start after the race ended
    PERFORM pg_temp.expect('race_loop stopped', (SELECT count(*) FROM public.ticks)::text, v_ticks::text);
END $$;

-- ---------------------------------------------------------------------------
-- Cancel reaches a running statement.
-- ---------------------------------------------------------------------------
INSERT INTO runs VALUES ('cancel_sql', df.start('SELECT pg_sleep(31)' ~> 'INSERT INTO public.ticks VALUES (-1)'));
DO $$ BEGIN PERFORM pg_temp.wait_for('the running statement', 'pg_temp.active(''SELECT pg_sleep(31)'')'); END $$;
DO $$ BEGIN PERFORM df.cancel(pg_temp.id('cancel_sql'), 'stop'); END $$;
DO $$
BEGIN
    PERFORM pg_temp.wait_for('the statement to be cancelled', 'NOT pg_temp.active(''SELECT pg_sleep(31)'')', 5);
    PERFORM pg_temp.expect('cancel_sql', df.await_instance(pg_temp.id('cancel_sql'), 5), 'cancelled');
    PERFORM pg_catalog.pg_sleep(0.3);
    PERFORM pg_temp.expect('cancel_sql stays', df.status(pg_temp.id('cancel_sql')), 'cancelled');
    PERFORM pg_temp.expect('cancel_sql effect', (SELECT count(*) FROM public.ticks WHERE n = -1)::text, '0');
END $$;

-- ---------------------------------------------------------------------------
-- Another role sees nothing of my running instance and cannot signal or cancel it.
-- ---------------------------------------------------------------------------
INSERT INTO runs VALUES ('mine', df.start(df.wait_for_signal('forever')));
SELECT pg_temp.id('mine') AS mine \gset
\c - :other
SET client_min_messages = warning;
SET e2e.mine = :'mine';
DO $$
BEGIN
    IF df.status(current_setting('e2e.mine')) IS NOT NULL THEN RAISE EXCEPTION 'another role sees my instance'; END IF;
    BEGIN
        PERFORM df.signal(current_setting('e2e.mine'), 'forever');
        RAISE EXCEPTION 'another role signalled my instance';
    EXCEPTION WHEN SQLSTATE 'DF003' THEN NULL;
    END;
    BEGIN
        PERFORM df.cancel(current_setting('e2e.mine'));
        RAISE EXCEPTION 'another role cancelled my instance';
    EXCEPTION WHEN SQLSTATE 'DF003' THEN NULL;
    END;
END $$;
