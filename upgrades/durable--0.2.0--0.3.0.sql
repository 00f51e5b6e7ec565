-- durable 0.2.0 -> 0.3.0: df.cancel, df.signal, df.set_metadata and df.delete_instance lock the
-- instance's queue row before the instance row, the order the worker uses (a signal could deadlock
-- with the worker applying a decision).  Applied by `durable upgrade` in one transaction.

SET LOCAL ROLE durable_owner;

CREATE OR REPLACE FUNCTION df._own_instance(p_caller regrole, p_instance_id text) RETURNS df.instances
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r df.instances;
BEGIN
    -- Lock order is the worker's: the queue row, then the instance row (else a
    -- signal and the worker's apply deadlock).  Only the caller's own queue
    -- row is ever locked here.
    PERFORM 1 FROM df.instances AS i WHERE i.id = p_instance_id AND i.submitted_by = p_caller;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'DF003';
    END IF;
    PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id FOR NO KEY UPDATE;
    SELECT * INTO r FROM df.instances AS i
     WHERE i.id = p_instance_id AND i.submitted_by = p_caller
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'DF003';
    END IF;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION df.version() RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.3.0 (built 2026-11-23T00:00:00Z)'::text $$;

-- worker: the set-based API (issue 10)
ALTER TABLE df.attempts ADD COLUMN bind_hash bytea;

-- ---------------------------------------------------------------------------
-- 0.3.0: the set-based worker API.  One call claims and reads several
-- instances, one call writes the engine's decisions for many held instances
-- (with the attempts of the steps they start), and a step's own transaction
-- binds its attempt to its backend and checkpoints one or several steps.
-- ---------------------------------------------------------------------------

-- What the engine reads of some instances, with their leases, as one JSON
-- value: {"now": ..., "instances": [{..., "nodes": [...], "signals": [...], "vars": {...}}]}.
CREATE FUNCTION df._snapshot(p_ids text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN pg_catalog.jsonb_build_object('now', df._now(), 'instances', COALESCE((
        SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'id', i.id, 'label', i.label, 'root_node', i.root_node, 'status', i.status,
            'execution_count', i.execution_count, 'database', i.database,
            'submitter', (SELECT r.rolname FROM pg_catalog.pg_roles AS r WHERE r.oid = i.submitted_by::oid),
            'lease_token', q.lease_token, 'nudges', q.nudges,
            'nodes', (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                          'id', n.id, 'node_type', n.node_type, 'query', n.query, 'result_name', n.result_name,
                          'left_node', n.left_node, 'right_node', n.right_node, 'parent_id', n.parent_id,
                          'slot', n.slot, 'status', n.status, 'result_text', n.result_text, 'wake_at', n.wake_at,
                          'state', n.state, 'status_details', n.status_details,
                          'resource_version', n.resource_version))
                        FROM df.nodes AS n WHERE n.instance_id = i.id),
            'signals', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                     'id', s.id, 'signal_name', s.signal_name, 'data', s.data) ORDER BY s.id)
                                   FROM df.signals AS s WHERE s.instance_id = i.id AND s.consumed_at IS NULL),
                                '[]'::jsonb),
            'vars', COALESCE((SELECT pg_catalog.jsonb_object_agg(v.name, v.value)
                                FROM df.instance_vars AS v WHERE v.instance_id = i.id), '{}'::jsonb)))
          FROM df.instances AS i
          LEFT JOIN df.instance_queue AS q ON q.instance_id = i.id
         WHERE i.id = ANY (p_ids)), '[]'::jsonb));
END
$$;

-- Lease up to p_limit due instances nobody holds and read them, with the
-- worker settings (one round trip).
CREATE FUNCTION df._claim_v2(p_worker uuid, p_limit integer) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now   timestamptz := pg_catalog.clock_timestamp();
    v_due   timestamptz := GREATEST(df._now(), pg_catalog.clock_timestamp());
    v_lease interval := pg_catalog.make_interval(secs => COALESCE(df._setting('lease_seconds')::double precision, 30));
    v_ids   text[];
BEGIN
    WITH due AS (
        SELECT q.instance_id
          FROM df.instance_queue AS q
         WHERE q.wake_at <= v_due
           AND (q.lease_expires_at IS NULL OR q.lease_expires_at < v_now)
         ORDER BY q.wake_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE df.instance_queue AS q
           SET lease_token = pg_catalog.gen_random_uuid(), lease_worker = p_worker, claims = q.claims + 1,
               lease_expires_at = v_now + v_lease
          FROM due
         WHERE q.instance_id = due.instance_id
        RETURNING q.instance_id::text
    )
    SELECT pg_catalog.array_agg(c.instance_id) INTO v_ids FROM claimed AS c;
    RETURN df._snapshot(COALESCE(v_ids, '{}'::text[]))
        || pg_catalog.jsonb_build_object('settings', df._worker_settings_v1());
END
$$;

-- Read some held instances again (after a conflict, a nudge or a refused checkpoint).
CREATE FUNCTION df._load_v2(p_ids text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._snapshot(p_ids);
END
$$;

-- How often each of some instances was nudged (cancel, signal) so far.
CREATE FUNCTION df._nudges_v2(p_ids text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN COALESCE((SELECT pg_catalog.jsonb_object_agg(q.instance_id, q.nudges)
                       FROM df.instance_queue AS q WHERE q.instance_id = ANY (p_ids)), '{}'::jsonb);
END
$$;

-- Write the engine's decisions for several held instances in one
-- transaction.  Each item: {"id", "token", "updates": [node updates, CAS on
-- expected_version], "consume": [{signal_id, node_id}], "status", "output",
-- "execution_count", "ended": [node ids whose attempt is over], "attempts":
-- [{node_id, bind_hash, secret_hash} (hex)], "release": bool, "wake_at",
-- "nudges"}.  Items are handled in instance id order (the lock order: queue
-- row, instance row, nodes, attempts) and each on its own: a lost lease
-- ("lease"), a changed node ("conflict") or a refused submitter ("refused")
-- skips that item and writes nothing of it.  Returns {"now", "results":
-- {id: {"status", "versions"} | {"error", "message"}}}.
CREATE FUNCTION df._advance_v2(p_worker uuid, p_items jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    it          jsonb;
    v_id        text;
    q           df.instance_queue;
    v_inst      df.instances;
    v_results   jsonb := '{}'::jsonb;
    v_updates   jsonb;
    v_expected  integer;
    v_locked    integer;
    v_versions  jsonb;
    v_refusal   text;
    v_touched   text[];
    v_status    text;
    v_done      boolean := false;
    v_now       timestamptz := pg_catalog.clock_timestamp();
BEGIN
    FOR it IN SELECT e.value FROM pg_catalog.jsonb_array_elements(p_items) AS e ORDER BY e.value ->> 'id' LOOP
        v_id := it ->> 'id';
        SELECT * INTO q FROM df.instance_queue AS x WHERE x.instance_id = v_id FOR UPDATE;
        IF NOT FOUND OR q.lease_token IS DISTINCT FROM (it ->> 'token')::uuid OR q.lease_expires_at <= v_now THEN
            v_results := v_results || pg_catalog.jsonb_build_object(v_id, pg_catalog.jsonb_build_object('error', 'lease'));
            CONTINUE;
        END IF;
        SELECT * INTO v_inst FROM df.instances AS i WHERE i.id = v_id FOR UPDATE;
        IF v_inst.status IN ('completed', 'failed', 'cancelled') THEN
            DELETE FROM df.attempts AS a WHERE a.instance_id = v_id;
            DELETE FROM df.instance_queue AS x WHERE x.instance_id = v_id;
            v_results := v_results || pg_catalog.jsonb_build_object(v_id,
                pg_catalog.jsonb_build_object('status', v_inst.status, 'versions', '{}'::jsonb));
            CONTINUE;
        END IF;
        IF pg_catalog.jsonb_array_length(COALESCE(it -> 'attempts', '[]'::jsonb)) > 0 THEN
            -- Checked again at every attempt: the role may have changed since df.start.
            v_refusal := df._submitter_refusal(v_inst.submitted_by);
            IF v_refusal IS NOT NULL THEN
                v_results := v_results || pg_catalog.jsonb_build_object(v_id,
                    pg_catalog.jsonb_build_object('error', 'refused', 'message', v_refusal));
                CONTINUE;
            END IF;
        END IF;

        v_updates := COALESCE(it -> 'updates', '[]'::jsonb);
        v_expected := pg_catalog.jsonb_array_length(v_updates);
        v_versions := '{}'::jsonb;
        IF v_expected > 0 THEN
            SELECT pg_catalog.count(*) INTO v_locked FROM (
                SELECT 1 FROM pg_catalog.jsonb_to_recordset(v_updates) AS u(node_id text, expected_version bigint)
                  JOIN df.nodes AS n ON n.instance_id = v_id AND n.id = u.node_id
                                    AND n.resource_version = u.expected_version
                 ORDER BY n.id
                   FOR UPDATE OF n) AS l;
            IF v_locked <> v_expected THEN
                v_results := v_results || pg_catalog.jsonb_build_object(v_id, pg_catalog.jsonb_build_object('error', 'conflict'));
                CONTINUE;
            END IF;
            WITH u AS (
                SELECT * FROM pg_catalog.jsonb_to_recordset(v_updates) AS x(
                    node_id text, expected_version bigint, status text, result_text text, wake_at timestamptz,
                    state jsonb, status_details jsonb)
            ), done AS (
                UPDATE df.nodes AS n
                   SET status = u.status, result_text = u.result_text,
                       result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
                       wake_at = u.wake_at, state = u.state, status_details = u.status_details
                  FROM u
                 WHERE n.instance_id = v_id AND n.id = u.node_id AND n.resource_version = u.expected_version
                RETURNING n.id, n.resource_version
            )
            SELECT COALESCE(pg_catalog.jsonb_object_agg(done.id, done.resource_version), '{}'::jsonb)
              INTO v_versions FROM done;
        END IF;

        UPDATE df.signals AS s SET consumed_by = c.node_id, consumed_at = pg_catalog.clock_timestamp()
          FROM pg_catalog.jsonb_to_recordset(COALESCE(it -> 'consume', '[]'::jsonb)) AS c(signal_id bigint, node_id text)
         WHERE s.id = c.signal_id AND s.instance_id = v_id;

        -- A node the engine changed, ended or starts again has no attempt in flight any more.
        SELECT pg_catalog.array_agg(x.node_id) INTO v_touched FROM (
            SELECT u.node_id FROM pg_catalog.jsonb_to_recordset(v_updates) AS u(node_id text)
            UNION SELECT e.value FROM pg_catalog.jsonb_array_elements_text(COALESCE(it -> 'ended', '[]'::jsonb)) AS e
            UNION SELECT a.node_id FROM pg_catalog.jsonb_to_recordset(COALESCE(it -> 'attempts', '[]'::jsonb))
                                        AS a(node_id text)) AS x;
        IF v_touched IS NOT NULL THEN
            DELETE FROM df.attempts AS a WHERE a.instance_id = v_id AND a.node_id = ANY (v_touched);
        END IF;
        INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash)
        SELECT v_id, a.node_id, q.lease_token, pg_catalog.decode(a.secret_hash, 'hex'), pg_catalog.decode(a.bind_hash, 'hex')
          FROM pg_catalog.jsonb_to_recordset(COALESCE(it -> 'attempts', '[]'::jsonb))
               AS a(node_id text, secret_hash text, bind_hash text);

        v_status := v_inst.status;
        IF it ->> 'status' IN ('completed', 'failed') THEN
            UPDATE df.instances AS i
               SET status = it ->> 'status', output = it ->> 'output',
                   execution_count = (it ->> 'execution_count')::bigint,
                   completed_at = CASE WHEN it ->> 'status' = 'completed' THEN pg_catalog.now() END
             WHERE i.id = v_id;
            DELETE FROM df.instance_queue AS x WHERE x.instance_id = v_id;
            DELETE FROM df.attempts AS a WHERE a.instance_id = v_id;
            v_done := true;
            v_status := it ->> 'status';
        ELSE
            IF v_inst.status = 'pending' OR (it ->> 'execution_count' IS NOT NULL
                                             AND (it ->> 'execution_count')::bigint <> v_inst.execution_count) THEN
                UPDATE df.instances AS i
                   SET status = 'running',
                       execution_count = COALESCE((it ->> 'execution_count')::bigint, i.execution_count)
                 WHERE i.id = v_id;
                v_status := 'running';
            END IF;
            IF (it ->> 'release')::boolean THEN
                UPDATE df.instance_queue AS x
                   SET lease_token = NULL, lease_worker = NULL, lease_expires_at = NULL,
                       wake_at = CASE WHEN x.nudges <> (it ->> 'nudges')::bigint THEN pg_catalog.clock_timestamp()
                                      ELSE (it ->> 'wake_at')::timestamptz END
                 WHERE x.instance_id = v_id;
                DELETE FROM df.attempts AS a WHERE a.instance_id = v_id;
            END IF;
        END IF;
        v_results := v_results || pg_catalog.jsonb_build_object(v_id,
            pg_catalog.jsonb_build_object('status', v_status, 'versions', v_versions));
    END LOOP;
    IF v_done THEN
        PERFORM df._notify_done();
    END IF;
    RETURN pg_catalog.jsonb_build_object('now', df._now(), 'results', v_results);
END
$$;

-- Called on the SUBMITTER's connection, first in a step's transaction: binds
-- each attempt to this backend (df.in_workflow() and the checkpoint check
-- it), proven by a one-use bind secret (not the checkpoint's secret).  Only a
-- session of the instance's submitter, under a live lease, can bind.
CREATE FUNCTION df._bind_v1(p_instance_ids text[], p_node_ids text[], p_secrets text[]) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n     integer := pg_catalog.cardinality(p_instance_ids);
    v_bound integer;
BEGIN
    WITH mine AS (
        SELECT a.instance_id, a.node_id
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids), pg_catalog.unnest(p_secrets)) AS b(instance_id, node_id, secret)
          JOIN df.attempts AS a ON a.instance_id = b.instance_id AND a.node_id = b.node_id
          JOIN df.instance_queue AS q ON q.instance_id = a.instance_id AND q.lease_token = a.lease_token
                                     AND q.lease_expires_at > pg_catalog.clock_timestamp()
          JOIN df.instances AS i ON i.id = a.instance_id
                                AND i.submitted_by = pg_catalog.quote_ident(session_user)::regrole
         WHERE a.bind_hash = pg_catalog.sha256(pg_catalog.convert_to(b.secret, 'UTF8')) AND a.backend_pid IS NULL
    ), bound AS (
        UPDATE df.attempts AS a
           SET backend_pid = pg_catalog.pg_backend_pid(), bind_hash = NULL,
               backend_start = (SELECT s.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS s)
          FROM mine
         WHERE a.instance_id = mine.instance_id AND a.node_id = mine.node_id
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO v_bound FROM bound;
    IF v_bound IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: attempt refused' USING ERRCODE = 'DF014';
    END IF;
END
$$;

-- Called on the SUBMITTER's connection, in the steps' own transaction, right
-- after their statements: records every result of the transaction or none.
-- The transaction must still be the one the steps began in (p_xid), each
-- attempt's secret must match, on this backend, under a live lease, for a
-- running node of a live instance of this session's role, at the version
-- the node had when the attempt started.  Locks in the worker's order: queue
-- rows (KEY SHARE: a takeover waits, heartbeats do not), instance rows
-- (SHARE: ordered against df.cancel), then attempts and nodes.  Returns the
-- nodes' new resource_versions, in argument order.
CREATE FUNCTION df._checkpoint_v2(p_xid text, p_instance_ids text[], p_node_ids text[], p_secrets text[],
                                  p_results text[], p_details jsonb[], p_versions bigint[])
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n        integer := pg_catalog.cardinality(p_instance_ids);
    v_count    integer;
    v_versions bigint[];
BEGIN
    IF pg_catalog.pg_current_xact_id()::text IS DISTINCT FROM p_xid THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the step ended its transaction' USING ERRCODE = 'DF014';
    END IF;
    PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = ANY (p_instance_ids)
      ORDER BY q.instance_id FOR KEY SHARE OF q;
    PERFORM 1 FROM df.instances AS i WHERE i.id = ANY (p_instance_ids) ORDER BY i.id FOR SHARE;
    SELECT pg_catalog.count(*) INTO v_count FROM (
        SELECT 1
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids), pg_catalog.unnest(p_secrets)) AS c(instance_id, node_id, secret)
          JOIN df.attempts AS a ON a.instance_id = c.instance_id AND a.node_id = c.node_id
          JOIN df.instance_queue AS q ON q.instance_id = a.instance_id AND q.lease_token = a.lease_token
                                     AND q.lease_expires_at > pg_catalog.clock_timestamp()
          JOIN df.instances AS i ON i.id = a.instance_id AND i.status IN ('pending', 'running')
                                AND i.submitted_by = pg_catalog.quote_ident(session_user)::regrole
         WHERE a.secret_hash = pg_catalog.sha256(pg_catalog.convert_to(c.secret, 'UTF8'))
           AND a.backend_pid = pg_catalog.pg_backend_pid()
         ORDER BY a.instance_id, a.node_id
           FOR UPDATE OF a) AS ok;
    IF v_count IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    WITH c AS (
        SELECT * FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids), pg_catalog.unnest(p_results), pg_catalog.unnest(p_details), pg_catalog.unnest(p_versions))
               WITH ORDINALITY AS x(instance_id, node_id, result_text, details, expected_version, ord)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = 'completed', result_text = c.result_text, result = c.result_text::jsonb,
               status_details = c.details, wake_at = NULL
          FROM c
         WHERE n.instance_id = c.instance_id AND n.id = c.node_id AND n.status = 'running'
           AND n.resource_version = c.expected_version
        RETURNING c.ord, n.resource_version
    )
    SELECT pg_catalog.array_agg(done.resource_version ORDER BY done.ord) INTO v_versions FROM done;
    IF pg_catalog.cardinality(v_versions) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    DELETE FROM df.attempts AS a
     USING ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids)) AS c(instance_id, node_id)
     WHERE a.instance_id = c.instance_id AND a.node_id = c.node_id;
    RETURN v_versions;
END
$$;

REVOKE EXECUTE ON FUNCTION df._snapshot(text[]), df._claim_v2(uuid, integer), df._load_v2(text[]),
    df._nudges_v2(text[]), df._advance_v2(uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._claim_v2(uuid, integer), df._load_v2(text[]), df._nudges_v2(text[]),
    df._advance_v2(uuid, jsonb) TO durable_worker;

RESET ROLE;
