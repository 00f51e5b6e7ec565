-- e2e: the workflow DSL byte for byte (PGD_FIXTURES.md sections 1 and 2,
-- PGD_REFERENCE.md 1.6).  Run as an ordinary LOGIN role granted
-- df.grant_usage (the HTTP cases run when it also has include_http):
--     psql -X -v ON_ERROR_STOP=1 -f e2e/sql/10_dsl.sql
-- Each assertion is a DO block that raises on a mismatch.  Our SQLSTATEs are
-- DF001/DF002 where pg_durable says XX000 (P0001 for X10); X10b keeps 22P02.
\set ON_ERROR_STOP 1

-- ----- Envelopes (E1-E33) -----
-- E1
DO $$
DECLARE
    got text;
BEGIN
    got := df.sql('SELECT 1');
    IF got IS DISTINCT FROM '{"node_type":"SQL","query":"SELECT 1"}' THEN
        RAISE EXCEPTION 'E1: got %', got;
    END IF;
END
$$;
-- E2
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' ~> 'SELECT 2';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'E2: got %', got;
    END IF;
END
$$;
-- E3
DO $$
DECLARE
    got text;
BEGIN
    got := df.seq(df.sql('SELECT 1'), 'SELECT 2');
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'E3: got %', got;
    END IF;
END
$$;
-- E4
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}' THEN
        RAISE EXCEPTION 'E4: got %', got;
    END IF;
END
$$;
-- E5
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 42 AS answer' |=> 'r';
    IF got IS DISTINCT FROM '{"node_type":"SQL","query":"SELECT 42 AS answer","result_name":"r"}' THEN
        RAISE EXCEPTION 'E5: got %', got;
    END IF;
END
$$;
-- E5b
DO $$
DECLARE
    got text;
BEGIN
    got := df.as('SELECT 42 AS answer','r');
    IF got IS DISTINCT FROM '{"node_type":"SQL","query":"SELECT 42 AS answer","result_name":"r"}' THEN
        RAISE EXCEPTION 'E5b: got %', got;
    END IF;
END
$$;
-- E6
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' ~> 'SELECT 2' |=> 'last';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"result_name":"last"}' THEN
        RAISE EXCEPTION 'E6: got %', got;
    END IF;
END
$$;
-- E7
DO $$
DECLARE
    got text;
BEGIN
    got := df.as(df.as('SELECT 1','a'),'b');
    IF got IS DISTINCT FROM '{"node_type":"SQL","query":"SELECT 1","result_name":"b"}' THEN
        RAISE EXCEPTION 'E7: got %', got;
    END IF;
END
$$;
-- E8
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' & 'SELECT 2';
    IF got IS DISTINCT FROM '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'E8: got %', got;
    END IF;
END
$$;
-- E8b
DO $$
DECLARE
    got text;
BEGIN
    got := df.join('SELECT 1', 'SELECT 2');
    IF got IS DISTINCT FROM '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'E8b: got %', got;
    END IF;
END
$$;
-- E9
DO $$
DECLARE
    got text;
BEGIN
    got := df.join3('SELECT 1','SELECT 2','SELECT 3');
    IF got IS DISTINCT FROM '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"extra_nodes":[{"node_type":"SQL","query":"SELECT 3"}]}' THEN
        RAISE EXCEPTION 'E9: got %', got;
    END IF;
END
$$;
-- E10
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' | df.sleep(5);
    IF got IS DISTINCT FROM '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}}' THEN
        RAISE EXCEPTION 'E10: got %', got;
    END IF;
END
$$;
-- E10b
DO $$
DECLARE
    got text;
BEGIN
    got := df.race('SELECT 1', df.sleep(5));
    IF got IS DISTINCT FROM '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}}' THEN
        RAISE EXCEPTION 'E10b: got %', got;
    END IF;
END
$$;
-- E11
DO $$
DECLARE
    got text;
BEGIN
    got := df.if('SELECT true','SELECT 1','SELECT 2');
    IF got IS DISTINCT FROM '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"condition_node":{"node_type":"SQL","query":"SELECT true"}}' THEN
        RAISE EXCEPTION 'E11: got %', got;
    END IF;
END
$$;
-- E12
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT true' ?> 'SELECT 1' !> 'SELECT 2';
    IF got IS DISTINCT FROM '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"condition_node":{"node_type":"SQL","query":"SELECT true"}}' THEN
        RAISE EXCEPTION 'E12: got %', got;
    END IF;
END
$$;
-- E13
DO $$
DECLARE
    got text;
BEGIN
    got := df.if_rows('r','SELECT 1','SELECT 2');
    IF got IS DISTINCT FROM '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"query":"{\"condition_type\":\"result_has_rows\",\"result_name\":\"r\"}"}' THEN
        RAISE EXCEPTION 'E13: got %', got;
    END IF;
END
$$;
-- E14
DO $$
DECLARE
    got text;
BEGIN
    got := df.loop('SELECT 1');
    IF got IS DISTINCT FROM '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"}}' THEN
        RAISE EXCEPTION 'E14: got %', got;
    END IF;
END
$$;
-- E14b
DO $$
DECLARE
    got text;
BEGIN
    got := @> 'SELECT 1';
    IF got IS DISTINCT FROM '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"}}' THEN
        RAISE EXCEPTION 'E14b: got %', got;
    END IF;
END
$$;
-- E14c
DO $$
DECLARE
    got text;
BEGIN
    got := df.loop('SELECT 1', NULL);
    IF got IS DISTINCT FROM '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"}}' THEN
        RAISE EXCEPTION 'E14c: got %', got;
    END IF;
END
$$;
-- E15
DO $$
DECLARE
    got text;
BEGIN
    got := df.loop('SELECT 1','SELECT false');
    IF got IS DISTINCT FROM '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"},"condition_node":{"node_type":"SQL","query":"SELECT false"}}' THEN
        RAISE EXCEPTION 'E15: got %', got;
    END IF;
END
$$;
-- E16
DO $$
DECLARE
    got text;
BEGIN
    got := df.break();
    IF got IS DISTINCT FROM '{"node_type":"BREAK","query":"{\"break_value\":null}"}' THEN
        RAISE EXCEPTION 'E16: got %', got;
    END IF;
END
$$;
-- E16b
DO $$
DECLARE
    got text;
BEGIN
    got := df.break(NULL);
    IF got IS DISTINCT FROM '{"node_type":"BREAK","query":"{\"break_value\":null}"}' THEN
        RAISE EXCEPTION 'E16b: got %', got;
    END IF;
END
$$;
-- E17
DO $$
DECLARE
    got text;
BEGIN
    got := df.break('{"status": "done"}');
    IF got IS DISTINCT FROM '{"node_type":"BREAK","query":"{\"break_value\":\"{\\\"status\\\": \\\"done\\\"}\"}"}' THEN
        RAISE EXCEPTION 'E17: got %', got;
    END IF;
END
$$;
-- E18
DO $$
DECLARE
    got text;
BEGIN
    got := df.break('finished');
    IF got IS DISTINCT FROM '{"node_type":"BREAK","query":"{\"break_value\":\"finished\"}"}' THEN
        RAISE EXCEPTION 'E18: got %', got;
    END IF;
END
$$;
-- E19
DO $$
DECLARE
    got text;
BEGIN
    got := df.sleep(0);
    IF got IS DISTINCT FROM '{"node_type":"SLEEP","query":"0"}' THEN
        RAISE EXCEPTION 'E19: got %', got;
    END IF;
END
$$;
-- E20
DO $$
DECLARE
    got text;
BEGIN
    got := df.sleep(30);
    IF got IS DISTINCT FROM '{"node_type":"SLEEP","query":"30"}' THEN
        RAISE EXCEPTION 'E20: got %', got;
    END IF;
END
$$;
-- E21
DO $$
DECLARE
    got text;
BEGIN
    got := df.wait_for_schedule('*/5 * * * *');
    IF got IS DISTINCT FROM '{"node_type":"WAIT_SCHEDULE","query":"{\"cron_expr\":\"*/5 * * * *\"}"}' THEN
        RAISE EXCEPTION 'E21: got %', got;
    END IF;
END
$$;
-- E22
DO $$
DECLARE
    got text;
BEGIN
    got := df.wait_for_signal('go');
    IF got IS DISTINCT FROM '{"node_type":"SIGNAL","query":"{\"signal_name\":\"go\",\"timeout_seconds\":null}"}' THEN
        RAISE EXCEPTION 'E22: got %', got;
    END IF;
END
$$;
-- E22b
DO $$
DECLARE
    got text;
BEGIN
    got := df.wait_for_signal('go', NULL);
    IF got IS DISTINCT FROM '{"node_type":"SIGNAL","query":"{\"signal_name\":\"go\",\"timeout_seconds\":null}"}' THEN
        RAISE EXCEPTION 'E22b: got %', got;
    END IF;
END
$$;
-- E23
DO $$
DECLARE
    got text;
BEGIN
    got := df.wait_for_signal('approve', 3600);
    IF got IS DISTINCT FROM '{"node_type":"SIGNAL","query":"{\"signal_name\":\"approve\",\"timeout_seconds\":3600}"}' THEN
        RAISE EXCEPTION 'E23: got %', got;
    END IF;
END
$$;
-- E24
DO $$
DECLARE
    got text;
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'E24 skipped: no include_http';
        RETURN;
    END IF;
    got := df.http('https://example.com/hook');
    IF got IS DISTINCT FROM '{"node_type":"HTTP","query":"{\"url\":\"https://example.com/hook\",\"method\":\"POST\",\"body\":null,\"headers\":null,\"timeout_seconds\":30}"}' THEN
        RAISE EXCEPTION 'E24: got %', got;
    END IF;
END
$$;
-- E25
DO $$
DECLARE
    got text;
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'E25 skipped: no include_http';
        RETURN;
    END IF;
    got := df.http('https://api.github.com/x','get',NULL,'{"X-Api-Key":"k1","Accept":"application/json"}',10);
    IF got IS DISTINCT FROM '{"node_type":"HTTP","query":"{\"url\":\"https://api.github.com/x\",\"method\":\"GET\",\"body\":null,\"headers\":{\"Accept\":\"application/json\",\"X-Api-Key\":\"k1\"},\"timeout_seconds\":10}"}' THEN
        RAISE EXCEPTION 'E25: got %', got;
    END IF;
END
$$;
-- E26
DO $$
DECLARE
    got text;
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'E26 skipped: no include_http';
        RETURN;
    END IF;
    got := df.http('https://fn.azurewebsites.net/api/f','POST','{"a":1}');
    IF got IS DISTINCT FROM '{"node_type":"HTTP","query":"{\"url\":\"https://fn.azurewebsites.net/api/f\",\"method\":\"POST\",\"body\":\"{\\\"a\\\":1}\",\"headers\":null,\"timeout_seconds\":30}"}' THEN
        RAISE EXCEPTION 'E26: got %', got;
    END IF;
END
$$;
-- E27
DO $$
DECLARE
    got text;
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http_multipart(text,text,jsonb,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'E27 skipped: no include_http';
        RETURN;
    END IF;
    got := df.http_multipart('https://fn.azurewebsites.net/api/up','POST',
      '[{"name":"file","filename":"a.txt","content_type":"text/plain","data_b64":"aGk="}]');
    IF got IS DISTINCT FROM '{"node_type":"HTTP_MULTIPART","query":"{\"url\":\"https://fn.azurewebsites.net/api/up\",\"method\":\"POST\",\"parts\":[{\"name\":\"file\",\"data_b64\":\"aGk=\",\"filename\":\"a.txt\",\"content_type\":\"text/plain\"}],\"headers\":null,\"timeout_seconds\":30}"}' THEN
        RAISE EXCEPTION 'E27: got %', got;
    END IF;
END
$$;
-- E28
DO $$
DECLARE
    got text;
BEGIN
    got := df.loop(df.join(df.race('SELECT 1', df.sleep(5)), 'SELECT 2'));
    IF got IS DISTINCT FROM '{"node_type":"LOOP","left_node":{"node_type":"JOIN","left_node":{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}},"right_node":{"node_type":"SQL","query":"SELECT 2"}}}' THEN
        RAISE EXCEPTION 'E28: got %', got;
    END IF;
END
$$;
-- E29
DO $$
DECLARE
    got text;
BEGIN
    got := df.sql(E'it''s "q" \\ / é😀\n\t\x01');
    IF got IS DISTINCT FROM '{"node_type":"SQL","query":"it''s \"q\" \\ / é😀\n\t\u0001"}' THEN
        RAISE EXCEPTION 'E29: got %', got;
    END IF;
END
$$;
-- E30
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT true' ?> 'SELECT 1';
    IF got IS DISTINCT FROM '{"condition": "SELECT true", "_partial_if": true, "then_branch": "SELECT 1"}' THEN
        RAISE EXCEPTION 'E30: got %', got;
    END IF;
END
$$;
-- E30b
DO $$
DECLARE
    got text;
BEGIN
    got := df.sql('SELECT true') ?> 'SELECT 1';
    IF got IS DISTINCT FROM '{"condition": "{\"node_type\":\"SQL\",\"query\":\"SELECT true\"}", "_partial_if": true, "then_branch": "SELECT 1"}' THEN
        RAISE EXCEPTION 'E30b: got %', got;
    END IF;
END
$$;
-- E31
DO $$
DECLARE
    got text;
BEGIN
    got := '{"a":1}' ~> 'SELECT 2';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\"a\":1}"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'E31: got %', got;
    END IF;
END
$$;
-- E32
DO $$
DECLARE
    got text;
BEGIN
    got := '{"node_type":"FOO"}' ~> 'SELECT 2';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\"node_type\":\"FOO\"}"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'E32: got %', got;
    END IF;
END
$$;
-- E33
DO $$
DECLARE
    got text;
BEGIN
    got := df.as((df.sql('a') ~> 'b')::jsonb::text, 'x');
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"query": "a", "node_type": "SQL"},"right_node":{"query": "b", "node_type": "SQL"},"result_name":"x"}' THEN
        RAISE EXCEPTION 'E33: got %', got;
    END IF;
END
$$;

-- ----- Precedence (PGD_REFERENCE.md 1.6) -----
-- then-names
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' ~> 'SELECT 2' |=> 'a' ~> 'SELECT 3';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"result_name":"a"},"right_node":{"node_type":"SQL","query":"SELECT 3"}}' THEN
        RAISE EXCEPTION 'then-names: got %', got;
    END IF;
END
$$;
-- parens-name-right
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' ~> ('SELECT 2' |=> 'b');
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2","result_name":"b"}}' THEN
        RAISE EXCEPTION 'parens-name-right: got %', got;
    END IF;
END
$$;
-- join-then-race
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' & 'SELECT 2' | 'SELECT 3';
    IF got IS DISTINCT FROM '{"node_type":"RACE","left_node":{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}' THEN
        RAISE EXCEPTION 'join-then-race: got %', got;
    END IF;
END
$$;
-- race-then-join
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 1' | 'SELECT 2' & 'SELECT 3';
    IF got IS DISTINCT FROM '{"node_type":"JOIN","left_node":{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}' THEN
        RAISE EXCEPTION 'race-then-join: got %', got;
    END IF;
END
$$;
-- seq-is-condition
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT 3' ~> 'SELECT true' ?> 'SELECT 1' !> 'SELECT 2';
    IF got IS DISTINCT FROM '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"condition_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 3"},"right_node":{"node_type":"SQL","query":"SELECT true"}}}' THEN
        RAISE EXCEPTION 'seq-is-condition: got %', got;
    END IF;
END
$$;
-- if-then-seq
DO $$
DECLARE
    got text;
BEGIN
    got := 'SELECT true' ?> 'SELECT 1' !> 'SELECT 2' ~> 'SELECT 3';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},"condition_node":{"node_type":"SQL","query":"SELECT true"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}' THEN
        RAISE EXCEPTION 'if-then-seq: got %', got;
    END IF;
END
$$;
-- loop-prefix-binds-tight
DO $$
DECLARE
    got text;
BEGIN
    got := @> 'SELECT 1' ~> 'SELECT 2';
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"}},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'loop-prefix-binds-tight: got %', got;
    END IF;
END
$$;
-- loop-prefix-parens
DO $$
DECLARE
    got text;
BEGIN
    got := @> ('SELECT 1' ~> 'SELECT 2');
    IF got IS DISTINCT FROM '{"node_type":"LOOP","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}}' THEN
        RAISE EXCEPTION 'loop-prefix-parens: got %', got;
    END IF;
END
$$;
-- loop-named
DO $$
DECLARE
    got text;
BEGIN
    got := @> 'SELECT 1' |=> 'l';
    IF got IS DISTINCT FROM '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"},"result_name":"l"}' THEN
        RAISE EXCEPTION 'loop-named: got %', got;
    END IF;
END
$$;

-- ----- Errors (X1-X11) -----
-- X3's third input, '0 9 * * 0', is valid for us on purpose: standard cron
-- counts 0 and 7 as Sunday (CONTRACT.md section 9).
-- X3-sunday
DO $$
DECLARE
    got text;
BEGIN
    got := df.wait_for_schedule('0 9 * * 0');
    IF got IS DISTINCT FROM '{"node_type":"WAIT_SCHEDULE","query":"{\"cron_expr\":\"0 9 * * 0\"}"}' THEN
        RAISE EXCEPTION 'X3-sunday: got %', got;
    END IF;
END
$$;
-- X1
DO $$
BEGIN
    PERFORM 'SELECT 1' |=> '1bad';
    RAISE EXCEPTION 'X1: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.as: result name ''1bad'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*' THEN
        RAISE EXCEPTION 'X1: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X1-as
DO $$
BEGIN
    PERFORM df.as('SELECT 1', '1bad');
    RAISE EXCEPTION 'X1-as: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.as: result name ''1bad'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*' THEN
        RAISE EXCEPTION 'X1-as: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X1-first
DO $$
BEGIN
    PERFORM df.as('{"node_type":"SQL","query":5}', 'bad name');
    RAISE EXCEPTION 'X1-first: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.as: result name ''bad name'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*' THEN
        RAISE EXCEPTION 'X1-first: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X1b
DO $$
BEGIN
    PERFORM df.as('SELECT 1','');
    RAISE EXCEPTION 'X1b: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.as: result name cannot be empty' THEN
        RAISE EXCEPTION 'X1b: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X2
DO $$
BEGIN
    PERFORM df.sleep(-1);
    RAISE EXCEPTION 'X2: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Sleep duration must be non-negative' THEN
        RAISE EXCEPTION 'X2: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X3
DO $$
BEGIN
    PERFORM df.wait_for_schedule('61 * * * *');
    RAISE EXCEPTION 'X3: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Invalid cron expression ''61 * * * *'': Invalid expression: Invalid cron expression.' THEN
        RAISE EXCEPTION 'X3: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X3b
DO $$
BEGIN
    PERFORM df.wait_for_schedule('every minute');
    RAISE EXCEPTION 'X3b: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Invalid cron expression ''every minute'': Invalid expression: Invalid cron expression.' THEN
        RAISE EXCEPTION 'X3b: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X4
DO $$
BEGIN
    PERFORM df.wait_for_signal('');
    RAISE EXCEPTION 'X4: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Signal name cannot be empty' THEN
        RAISE EXCEPTION 'X4: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X4-first
DO $$
BEGIN
    PERFORM df.wait_for_signal('', 0);
    RAISE EXCEPTION 'X4-first: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Signal name cannot be empty' THEN
        RAISE EXCEPTION 'X4-first: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X5
DO $$
BEGIN
    PERFORM df.wait_for_signal('go', 0);
    RAISE EXCEPTION 'X5: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Timeout must be positive' THEN
        RAISE EXCEPTION 'X5: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X5b
DO $$
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'X5b skipped: no include_http';
        RETURN;
    END IF;
    PERFORM df.http('https://example.com/hook','GET',NULL,NULL,0);
    RAISE EXCEPTION 'X5b: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Timeout must be positive' THEN
        RAISE EXCEPTION 'X5b: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X5c
DO $$
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http_multipart(text,text,jsonb,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'X5c skipped: no include_http';
        RETURN;
    END IF;
    PERFORM df.http_multipart('https://fn.azurewebsites.net/api/up','POST','[{"name":"f","data_b64":"aGk="}]',NULL,0);
    RAISE EXCEPTION 'X5c: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Timeout must be positive' THEN
        RAISE EXCEPTION 'X5c: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X6
DO $$
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'X6 skipped: no include_http';
        RETURN;
    END IF;
    PERFORM df.http('https://example.com','fetch');
    RAISE EXCEPTION 'X6: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Invalid HTTP method: fetch. Must be GET, POST, PUT, DELETE, or PATCH' THEN
        RAISE EXCEPTION 'X6: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X6b
DO $$
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http_multipart(text,text,jsonb,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'X6b skipped: no include_http';
        RETURN;
    END IF;
    PERFORM df.http_multipart('https://fn.azurewebsites.net/api/up','GET','[{"name":"f","data_b64":"aGk="}]');
    RAISE EXCEPTION 'X6b: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH' THEN
        RAISE EXCEPTION 'X6b: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X6c
DO $$
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'X6c skipped: no include_http';
        RETURN;
    END IF;
    PERFORM df.http('ftp://h/x');
    RAISE EXCEPTION 'X6c: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Blocked: unsupported URL scheme ''ftp''. Only http and https are allowed.' THEN
        RAISE EXCEPTION 'X6c: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X6c2
DO $$
BEGIN
    IF NOT pg_catalog.has_function_privilege('df.http(text,text,text,jsonb,integer)', 'EXECUTE') THEN
        RAISE NOTICE 'X6c2 skipped: no include_http';
        RETURN;
    END IF;
    PERFORM df.http('example.com');
    RAISE EXCEPTION 'X6c2: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Blocked: unsupported URL scheme ''example.com''. Only http and https are allowed.' THEN
        RAISE EXCEPTION 'X6c2: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X7
DO $$
BEGIN
    PERFORM df._ensure_strict_v1('{"node_type":"FOO"}');
    RAISE EXCEPTION 'X7: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Invalid durable function: Unknown node_type ''FOO''. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL' THEN
        RAISE EXCEPTION 'X7: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X7b
DO $$
BEGIN
    PERFORM (SELECT count(*) FROM df._flatten_v1(df._ensure_strict_v1(
        '{"node_type":"THEN","left_node":{"node_type":"FOO"},"right_node":{"node_type":"SQL","query":"x"}}')));
    RAISE EXCEPTION 'X7b: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF002' OR SQLERRM <> 'Invalid durable function graph: root.left: Unknown node_type ''FOO''. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL' THEN
        RAISE EXCEPTION 'X7b: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X8
DO $$
BEGIN
    PERFORM (SELECT count(*) FROM df._flatten_v1(df._ensure_strict_v1('s1' ~> 's2' ~> 's3' ~> 's4' ~> 's5' ~> 's6' ~> 's7' ~> 's8' ~> 's9' ~> 's10' ~> 's11' ~> 's12' ~> 's13' ~> 's14' ~> 's15' ~> 's16' ~> 's17' ~> 's18' ~> 's19' ~> 's20' ~> 's21' ~> 's22' ~> 's23' ~> 's24' ~> 's25' ~> 's26' ~> 's27' ~> 's28' ~> 's29' ~> 's30' ~> 's31' ~> 's32' ~> 's33' ~> 's34' ~> 's35' ~> 's36' ~> 's37' ~> 's38' ~> 's39' ~> 's40' ~> 's41' ~> 's42' ~> 's43' ~> 's44' ~> 's45' ~> 's46' ~> 's47' ~> 's48' ~> 's49' ~> 's50' ~> 's51' ~> 's52' ~> 's53' ~> 's54' ~> 's55' ~> 's56' ~> 's57' ~> 's58' ~> 's59' ~> 's60' ~> 's61' ~> 's62' ~> 's63' ~> 's64' ~> 's65' ~> 's66' ~> 's67' ~> 's68' ~> 's69' ~> 's70' ~> 's71' ~> 's72' ~> 's73' ~> 's74' ~> 's75' ~> 's76' ~> 's77' ~> 's78' ~> 's79' ~> 's80' ~> 's81' ~> 's82' ~> 's83' ~> 's84' ~> 's85' ~> 's86' ~> 's87' ~> 's88' ~> 's89' ~> 's90' ~> 's91' ~> 's92' ~> 's93' ~> 's94' ~> 's95' ~> 's96' ~> 's97' ~> 's98' ~> 's99' ~> 's100' ~> 's101' ~> 's102' ~> 's103' ~> 's104' ~> 's105' ~> 's106' ~> 's107' ~> 's108' ~> 's109' ~> 's110' ~> 's111' ~> 's112' ~> 's113' ~> 's114' ~> 's115' ~> 's116' ~> 's117' ~> 's118' ~> 's119' ~> 's120' ~> 's121' ~> 's122' ~> 's123' ~> 's124' ~> 's125' ~> 's126' ~> 's127' ~> 's128' ~> 's129' ~> 's130' ~> 's131' ~> 's132' ~> 's133' ~> 's134' ~> 's135' ~> 's136' ~> 's137' ~> 's138' ~> 's139' ~> 's140' ~> 's141' ~> 's142' ~> 's143' ~> 's144' ~> 's145' ~> 's146' ~> 's147' ~> 's148' ~> 's149' ~> 's150' ~> 's151' ~> 's152' ~> 's153' ~> 's154' ~> 's155' ~> 's156' ~> 's157' ~> 's158' ~> 's159' ~> 's160' ~> 's161' ~> 's162' ~> 's163' ~> 's164' ~> 's165' ~> 's166' ~> 's167' ~> 's168' ~> 's169' ~> 's170' ~> 's171' ~> 's172' ~> 's173' ~> 's174' ~> 's175' ~> 's176' ~> 's177' ~> 's178' ~> 's179' ~> 's180' ~> 's181' ~> 's182' ~> 's183' ~> 's184' ~> 's185' ~> 's186' ~> 's187' ~> 's188' ~> 's189' ~> 's190' ~> 's191' ~> 's192' ~> 's193' ~> 's194' ~> 's195' ~> 's196' ~> 's197' ~> 's198' ~> 's199' ~> 's200' ~> 's201' ~> 's202' ~> 's203' ~> 's204' ~> 's205' ~> 's206' ~> 's207' ~> 's208' ~> 's209' ~> 's210' ~> 's211' ~> 's212' ~> 's213' ~> 's214' ~> 's215' ~> 's216' ~> 's217' ~> 's218' ~> 's219' ~> 's220' ~> 's221' ~> 's222' ~> 's223' ~> 's224' ~> 's225' ~> 's226' ~> 's227' ~> 's228' ~> 's229' ~> 's230' ~> 's231' ~> 's232' ~> 's233' ~> 's234' ~> 's235' ~> 's236' ~> 's237' ~> 's238' ~> 's239' ~> 's240' ~> 's241' ~> 's242' ~> 's243' ~> 's244' ~> 's245' ~> 's246' ~> 's247' ~> 's248' ~> 's249' ~> 's250' ~> 's251' ~> 's252' ~> 's253' ~> 's254' ~> 's255' ~> 's256' ~> 's257' ~> 's258')));
    RAISE EXCEPTION 'X8: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF002' OR SQLERRM <> 'Invalid durable function graph: root.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left.left: Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.' THEN
        RAISE EXCEPTION 'X8: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X10
DO $$
BEGIN
    PERFORM df.sql('SELECT 1') !> 'SELECT 2';
    RAISE EXCEPTION 'X10: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'Invalid if-then-else: left side of !> must be a ?> expression' THEN
        RAISE EXCEPTION 'X10: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X10b
DO $$
BEGIN
    PERFORM 'SELECT 1' !> 'SELECT 2';
    RAISE EXCEPTION 'X10b: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> '22P02' OR SQLERRM <> 'invalid input syntax for type json' THEN
        RAISE EXCEPTION 'X10b: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X11
DO $$
BEGIN
    PERFORM df.seq(df.setvar('a','1'), 'SELECT 1');
    RAISE EXCEPTION 'X11: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.setvar cannot be used as a workflow step. Call df.setvar before df.start().' THEN
        RAISE EXCEPTION 'X11: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X11-unsetvar
DO $$
BEGIN
    PERFORM df.seq(df.unsetvar('a'), 'SELECT 1');
    RAISE EXCEPTION 'X11-unsetvar: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.unsetvar cannot be used as a workflow step. Call df.unsetvar before df.start().' THEN
        RAISE EXCEPTION 'X11-unsetvar: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X11-clearvars
DO $$
BEGIN
    PERFORM df.seq('SELECT 1', df.clearvars());
    RAISE EXCEPTION 'X11-clearvars: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.clearvars cannot be used as a workflow step. Call df.clearvars before df.start().' THEN
        RAISE EXCEPTION 'X11-clearvars: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X11-start
DO $$
BEGIN
    PERFORM df._ensure_strict_v1(df.setvar('a','1'));
    RAISE EXCEPTION 'X11-start: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.setvar cannot be used as a workflow step. Call df.setvar before df.start().' THEN
        RAISE EXCEPTION 'X11-start: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X11-op
DO $$
BEGIN
    PERFORM df.setvar('a','1') & 'SELECT 1';
    RAISE EXCEPTION 'X11-op: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.setvar cannot be used as a workflow step. Call df.setvar before df.start().' THEN
        RAISE EXCEPTION 'X11-op: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;
-- X11-loop
DO $$
BEGIN
    PERFORM df.loop('SELECT 1', df.clearvars());
    RAISE EXCEPTION 'X11-loop: no error';
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> 'DF001' OR SQLERRM <> 'df.clearvars cannot be used as a workflow step. Call df.clearvars before df.start().' THEN
        RAISE EXCEPTION 'X11-loop: got % %', SQLSTATE, SQLERRM;
    END IF;
END
$$;

-- X9: a BREAK at the root passes every build-time check.
DO $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM df._flatten_v1(df._ensure_strict_v1(df.break()));
    IF n <> 1 THEN
        RAISE EXCEPTION 'X9: % nodes', n;
    END IF;
END
$$;

-- X11, our side of CONTRACT.md section 9: only the helper's own return value
-- is refused, not every later step argument of the statement (a DO block is
-- one statement; pg_durable would refuse the df.seq below).
DO $$
DECLARE
    got text;
BEGIN
    PERFORM df.setvar('e2e_dsl', '1');
    got := df.seq('SELECT 1', 'SELECT 2');
    PERFORM df.unsetvar('e2e_dsl');
    IF got IS DISTINCT FROM '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}' THEN
        RAISE EXCEPTION 'X11-ours: got %', got;
    END IF;
END
$$;
