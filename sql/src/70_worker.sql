-- ---------------------------------------------------------------------------
-- The worker's internal API.  Revoked from PUBLIC and granted to
-- durable_worker, except the two a step's own (submitter) connection calls,
-- which are guarded by the per-attempt secret instead.
--
-- Fencing: a worker holds an instance through a lease (df.instance_queue
-- lease_token, lease_expires_at, kept alive by heartbeats).  Every write
-- names the token; a worker whose lease expired and was taken over fails
-- with DF014 and writes nothing.  Node writes are compare-and-swap on
-- resource_version (DF004 on mismatch).
-- ---------------------------------------------------------------------------

CREATE FUNCTION df._worker_settings_v1() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT COALESCE(pg_catalog.jsonb_object_agg(s.key, s.value), '{}'::jsonb) FROM df.settings AS s $$;

CREATE FUNCTION df._worker_register_v1(p_worker uuid, p_hostname text, p_pid integer) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO df.workers (worker_id, hostname, pid) VALUES (p_worker, p_hostname, p_pid)
    ON CONFLICT (worker_id) DO UPDATE SET last_seen_at = pg_catalog.clock_timestamp();
$$;

-- Heartbeat: the worker is alive, idle or busy, and keeps its leases.
CREATE FUNCTION df._worker_heartbeat_v1(p_worker uuid, p_idle boolean) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_lease interval := pg_catalog.make_interval(secs => COALESCE(df._setting('lease_seconds')::double precision, 30));
    v_count integer;
BEGIN
    UPDATE df.workers AS w SET last_seen_at = pg_catalog.clock_timestamp(), idle = p_idle
     WHERE w.worker_id = p_worker;
    IF NOT FOUND THEN
        INSERT INTO df.workers (worker_id, idle) VALUES (p_worker, p_idle);
    END IF;
    -- Row by row, skipping rows someone holds locked (a user transaction that
    -- signalled an instance and stays open): one tenant can stall the lease of
    -- its own instance, never the leases of everybody else on this worker.
    -- A skipped row cannot be taken over meanwhile: claims skip locked rows too.
    UPDATE df.instance_queue AS q SET lease_expires_at = pg_catalog.clock_timestamp() + v_lease
     WHERE q.instance_id IN (SELECT x.instance_id FROM df.instance_queue AS x
                              WHERE x.lease_worker = p_worker AND x.lease_expires_at > pg_catalog.clock_timestamp()
                                FOR NO KEY UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

CREATE FUNCTION df._worker_unregister_v1(p_worker uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE df.instance_queue AS q
       SET lease_token = NULL, lease_worker = NULL, lease_expires_at = NULL,
           wake_at = COALESCE(q.wake_at, pg_catalog.clock_timestamp())
     WHERE q.lease_worker = p_worker;
    DELETE FROM df.workers AS w WHERE w.worker_id = p_worker;
$$;

-- Claim up to p_limit due instances nobody holds.  SKIP LOCKED: a row being
-- checkpointed or claimed by someone else is simply not ours this time.
CREATE FUNCTION df._claim_v1(p_worker uuid, p_limit integer)
RETURNS TABLE(instance_id text, lease_token uuid, nudges bigint)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT q.instance_id
          FROM df.instance_queue AS q
         WHERE q.wake_at <= GREATEST(df._now(), pg_catalog.clock_timestamp())
           AND (q.lease_expires_at IS NULL OR q.lease_expires_at < pg_catalog.clock_timestamp())
         ORDER BY q.wake_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE df.instance_queue AS q
       SET lease_token = pg_catalog.gen_random_uuid(), lease_worker = p_worker, claims = q.claims + 1,
           lease_expires_at = pg_catalog.clock_timestamp()
               + pg_catalog.make_interval(secs => COALESCE(df._setting('lease_seconds')::double precision, 30))
      FROM due
     WHERE q.instance_id = due.instance_id
    RETURNING q.instance_id::text, q.lease_token, q.nudges;
$$;

-- Lock the queue row of an instance the caller must hold; DF014 if it does not.
CREATE FUNCTION df._hold_lease(p_instance_id text, p_token uuid) RETURNS df.instance_queue
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q df.instance_queue;
BEGIN
    SELECT * INTO q FROM df.instance_queue AS x WHERE x.instance_id = p_instance_id FOR UPDATE;
    IF NOT FOUND OR q.lease_token IS DISTINCT FROM p_token OR q.lease_expires_at <= pg_catalog.clock_timestamp() THEN
        RAISE EXCEPTION 'durable: the lease on instance % was lost', p_instance_id USING ERRCODE = 'DF014';
    END IF;
    RETURN q;
END
$$;

-- Apply one decision of the engine: node updates (CAS on resource_version),
-- consumed signals, the instance's status.  Returns the instance status
-- after it ('cancelled' tells the worker to stop) and the new node versions.
CREATE FUNCTION df._apply_v1(p_instance_id text, p_token uuid, p_updates jsonb, p_consume jsonb,
                             p_status text, p_output text, p_execution_count bigint)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status   text;
    v_expected integer := COALESCE(pg_catalog.jsonb_array_length(p_updates), 0);
    v_done     integer;
    v_versions jsonb;
BEGIN
    PERFORM df._hold_lease(p_instance_id, p_token);
    SELECT i.status INTO v_status FROM df.instances AS i WHERE i.id = p_instance_id FOR UPDATE;
    IF v_status IN ('completed', 'failed', 'cancelled') THEN
        RETURN pg_catalog.jsonb_build_object('status', v_status, 'versions', '{}'::jsonb);
    END IF;

    WITH u AS (
        SELECT * FROM pg_catalog.jsonb_to_recordset(COALESCE(p_updates, '[]'::jsonb)) AS x(
            node_id text, expected_version bigint, status text, result_text text, wake_at timestamptz,
            state jsonb, status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = u.state, status_details = u.status_details
          FROM u
         WHERE n.instance_id = p_instance_id AND n.id = u.node_id AND n.resource_version = u.expected_version
        RETURNING n.id, n.resource_version
    )
    SELECT pg_catalog.count(*), COALESCE(pg_catalog.jsonb_object_agg(done.id, done.resource_version), '{}'::jsonb)
      INTO v_done, v_versions FROM done;
    IF v_done <> v_expected THEN
        RAISE EXCEPTION 'durable: a node of instance % changed since it was read', p_instance_id
            USING ERRCODE = 'DF004';
    END IF;

    UPDATE df.signals AS s SET consumed_by = c.node_id, consumed_at = pg_catalog.clock_timestamp()
      FROM pg_catalog.jsonb_to_recordset(COALESCE(p_consume, '[]'::jsonb)) AS c(signal_id bigint, node_id text)
     WHERE s.id = c.signal_id AND s.instance_id = p_instance_id;

    IF p_status IN ('completed', 'failed') THEN
        UPDATE df.instances AS i
           SET status = p_status, output = p_output, execution_count = p_execution_count,
               completed_at = CASE WHEN p_status = 'completed' THEN pg_catalog.now() END
         WHERE i.id = p_instance_id;
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id;
        DELETE FROM df.attempts AS a WHERE a.instance_id = p_instance_id;
        PERFORM df._notify_done();
        v_status := p_status;
    ELSIF v_status = 'pending' OR p_execution_count IS DISTINCT FROM
            (SELECT i.execution_count FROM df.instances AS i WHERE i.id = p_instance_id) THEN
        UPDATE df.instances AS i SET status = 'running', execution_count = COALESCE(p_execution_count, i.execution_count)
         WHERE i.id = p_instance_id;
        v_status := 'running';
    END IF;
    RETURN pg_catalog.jsonb_build_object('status', v_status, 'versions', v_versions);
END
$$;

-- Give an instance back: due again at p_wake_at (NULL: only a signal or
-- cancel wakes it), or at once if it was nudged while held.
CREATE FUNCTION df._release_v1(p_instance_id text, p_token uuid, p_wake_at timestamptz, p_nudges bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE df.instance_queue AS q
       SET lease_token = NULL, lease_worker = NULL, lease_expires_at = NULL,
           wake_at = CASE WHEN q.nudges <> p_nudges THEN pg_catalog.clock_timestamp() ELSE p_wake_at END
     WHERE q.instance_id = p_instance_id AND q.lease_token = p_token;
    DELETE FROM df.attempts AS a WHERE a.instance_id = p_instance_id AND a.lease_token = p_token;
    -- A cancelled instance needs no worker any more.
    DELETE FROM df.instance_queue AS q
     USING df.instances AS i
     WHERE q.instance_id = p_instance_id AND i.id = q.instance_id
       AND i.status IN ('completed', 'failed', 'cancelled');
END
$$;

-- The unconsumed signals of an instance, and whether it was nudged.
CREATE FUNCTION df._nudges_v1(p_instance_id text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT q.nudges FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id $$;

-- Start an attempt of a SQL step: a fresh secret (its hash stored here,
-- where no submitter can read it) and the backend that will run it.
CREATE FUNCTION df._begin_attempt_v1(p_instance_id text, p_node_id text, p_token uuid, p_secret_hash bytea,
                                     p_backend_pid integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_refusal text;
BEGIN
    PERFORM df._hold_lease(p_instance_id, p_token);
    -- Checked again at every attempt: the role may have changed since df.start.
    SELECT df._submitter_refusal(i.submitted_by) INTO v_refusal FROM df.instances AS i WHERE i.id = p_instance_id;
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION '%', v_refusal USING ERRCODE = 'DF005';
    END IF;
    INSERT INTO df.attempts AS a (instance_id, node_id, lease_token, secret_hash, backend_pid, backend_start)
    VALUES (p_instance_id, p_node_id, p_token, p_secret_hash, p_backend_pid,
            (SELECT s.backend_start FROM pg_catalog.pg_stat_activity AS s WHERE s.pid = p_backend_pid))
    ON CONFLICT (instance_id, node_id) DO UPDATE
       SET lease_token = EXCLUDED.lease_token, secret_hash = EXCLUDED.secret_hash,
           backend_pid = EXCLUDED.backend_pid, backend_start = EXCLUDED.backend_start,
           started_at = pg_catalog.clock_timestamp();
END
$$;

-- Why an instance's submitter may not run steps (any more), or NULL: asked
-- when a login as the submitter fails, so a role made NOLOGIN or dropped
-- fails the instance instead of being retried forever.
CREATE FUNCTION df._submitter_refusal_v1(p_instance_id text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df._submitter_refusal(i.submitted_by) FROM df.instances AS i WHERE i.id = p_instance_id $$;

-- The secret dies with any attempt that did not checkpoint.
CREATE FUNCTION df._end_attempt_v1(p_instance_id text, p_node_id text, p_token uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM df.attempts AS a
     WHERE a.instance_id = p_instance_id AND a.node_id = p_node_id AND a.lease_token = p_token;
$$;

-- Called on the SUBMITTER's connection, in the step's own transaction, right
-- after the step's statement: the effect and this checkpoint commit together
-- or not at all.  Only the holder of the attempt's secret, on the attempt's
-- backend, under a live lease, for a running node of a live instance, can
-- write it.  Locks the queue row FOR SHARE so that no takeover can claim the
-- instance between this check and the commit.  Compare-and-swap on the
-- version the node had when the attempt started, so a late result can never
-- land on a later run of the same node (a loop's next iteration).  Returns
-- the node's new resource_version.
CREATE FUNCTION df._checkpoint_v1(p_instance_id text, p_node_id text, p_secret text, p_result_text text,
                                  p_status_details jsonb, p_expected_version bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a df.attempts;
    v_version bigint;
BEGIN
    SELECT * INTO a FROM df.attempts AS x
     WHERE x.instance_id = p_instance_id AND x.node_id = p_node_id FOR UPDATE;
    IF NOT FOUND OR a.secret_hash <> pg_catalog.sha256(pg_catalog.convert_to(p_secret, 'UTF8'))
       OR a.backend_pid IS DISTINCT FROM pg_catalog.pg_backend_pid() THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    -- KEY SHARE: a takeover's claim (FOR UPDATE) waits for this transaction,
    -- heartbeats (non-key updates) do not.
    PERFORM 1 FROM df.instance_queue AS q
      WHERE q.instance_id = p_instance_id AND q.lease_token = a.lease_token
        AND q.lease_expires_at > pg_catalog.clock_timestamp()
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the lease was lost' USING ERRCODE = 'DF014';
    END IF;
    -- SHARE on the instance orders this commit against df.cancel's update:
    -- no step effect commits after a cancel returned.  The step must run on a
    -- session of the submitter itself.
    PERFORM 1 FROM df.instances AS i
      WHERE i.id = p_instance_id AND i.status IN ('pending', 'running')
        AND i.submitted_by = pg_catalog.quote_ident(session_user)::regrole
        FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the instance is no longer running, or this session is '
                        'not its submitter' USING ERRCODE = 'DF014';
    END IF;
    UPDATE df.nodes AS n
       SET status = 'completed', result_text = p_result_text, result = p_result_text::jsonb,
           status_details = p_status_details, wake_at = NULL
     WHERE n.instance_id = p_instance_id AND n.id = p_node_id AND n.status = 'running'
       AND n.resource_version = p_expected_version
    RETURNING n.resource_version INTO v_version;
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    DELETE FROM df.attempts AS x WHERE x.instance_id = p_instance_id AND x.node_id = p_node_id;
    RETURN v_version;
END
$$;

-- A step in another database cannot reach df there: it runs at-least-once
-- in autocommit and the worker records its result here, under its lease.
CREATE FUNCTION df._checkpoint_remote_v1(p_instance_id text, p_node_id text, p_token uuid, p_result_text text,
                                         p_status_details jsonb, p_expected_version bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_version bigint;
BEGIN
    PERFORM df._hold_lease(p_instance_id, p_token);
    UPDATE df.nodes AS n
       SET status = 'completed', result_text = p_result_text, result = p_result_text::jsonb,
           status_details = p_status_details, wake_at = NULL
     WHERE n.instance_id = p_instance_id AND n.id = p_node_id AND n.status = 'running'
       AND n.resource_version = p_expected_version
       AND EXISTS (SELECT 1 FROM df.instances AS i WHERE i.id = p_instance_id AND i.status IN ('pending', 'running'))
    RETURNING n.resource_version INTO v_version;
    IF v_version IS NULL THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    DELETE FROM df.attempts AS x WHERE x.instance_id = p_instance_id AND x.node_id = p_node_id;
    RETURN v_version;
END
$$;

-- df._in_workflow() (35_vars.sql) reads df.attempts.backend_pid, recorded by _begin_attempt_v1.

-- Fire a test fault point at most once: disarm it and say whether it was armed.
CREATE FUNCTION df._fire_fault_v1(p_name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_points jsonb;
BEGIN
    SELECT s.value::jsonb INTO v_points FROM df.settings AS s WHERE s.key = 'fault_points' FOR UPDATE;
    IF v_points IS NULL OR NOT v_points ? p_name THEN
        RETURN false;
    END IF;
    UPDATE df.settings AS s SET value = (v_points - p_name)::text WHERE s.key = 'fault_points';
    RETURN true;
END
$$;

REVOKE EXECUTE ON FUNCTION df._submitter_refusal_v1(text), df._checkpoint_remote_v1(text, text, uuid, text, jsonb, bigint), df._fire_fault_v1(text), df._worker_settings_v1(), df._worker_register_v1(uuid, text, integer),
    df._worker_heartbeat_v1(uuid, boolean), df._worker_unregister_v1(uuid), df._claim_v1(uuid, integer),
    df._hold_lease(text, uuid), df._apply_v1(text, uuid, jsonb, jsonb, text, text, bigint),
    df._release_v1(text, uuid, timestamptz, bigint), df._nudges_v1(text),
    df._begin_attempt_v1(text, text, uuid, bytea, integer), df._end_attempt_v1(text, text, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._submitter_refusal_v1(text), df._checkpoint_remote_v1(text, text, uuid, text, jsonb, bigint), df._fire_fault_v1(text), df._worker_settings_v1(), df._worker_register_v1(uuid, text, integer),
    df._worker_heartbeat_v1(uuid, boolean), df._worker_unregister_v1(uuid), df._claim_v1(uuid, integer),
    df._apply_v1(text, uuid, jsonb, jsonb, text, text, bigint),
    df._release_v1(text, uuid, timestamptz, bigint), df._nudges_v1(text),
    df._begin_attempt_v1(text, text, uuid, bytea, integer), df._end_attempt_v1(text, text, uuid)
    TO durable_worker;
GRANT SELECT ON df.instance_vars TO durable_worker;

-- ---------------------------------------------------------------------------
-- 0.3.0: the set-based worker API.  One call claims and reads several
-- instances, one call writes the engine's decisions for many held instances
-- (with the attempts of the steps they start), and a step's own transaction
-- binds its attempt to its backend and checkpoints one or several steps.
-- ---------------------------------------------------------------------------

-- What the engine reads of some instances, with their leases, as one JSON
-- value: {"now": ..., "instances": [{..., "nodes": [...], "signals": [...], "vars": {...}}],
-- "settings": p_settings}.  Built as json, not jsonb (0.3.0): the worker only
-- parses it, and json is built at about a third of jsonb's cost.
CREATE FUNCTION df._snapshot(p_ids text[], p_settings jsonb DEFAULT NULL) RETURNS json
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN pg_catalog.json_build_object('now', df._now(), 'instances', COALESCE((
        WITH n AS (
            SELECT n.instance_id, pg_catalog.json_agg(pg_catalog.json_build_object(
                       'id', n.id, 'node_type', n.node_type, 'query', n.query, 'result_name', n.result_name,
                       'left_node', n.left_node, 'right_node', n.right_node, 'parent_id', n.parent_id,
                       'slot', n.slot, 'status', n.status, 'result_text', n.result_text, 'wake_at', n.wake_at,
                       'state', n.state, 'status_details', n.status_details,
                       'resource_version', n.resource_version)) AS nodes
              FROM df.nodes AS n WHERE n.instance_id = ANY (p_ids) GROUP BY n.instance_id
        ), s AS (
            SELECT s.instance_id, pg_catalog.json_agg(pg_catalog.json_build_object(
                       'id', s.id, 'signal_name', s.signal_name, 'data', s.data) ORDER BY s.id) AS signals
              FROM df.signals AS s WHERE s.instance_id = ANY (p_ids) AND s.consumed_at IS NULL
             GROUP BY s.instance_id
        ), v AS (
            SELECT v.instance_id, pg_catalog.json_object_agg(v.name, v.value) AS vars
              FROM df.instance_vars AS v WHERE v.instance_id = ANY (p_ids) GROUP BY v.instance_id
        )
        SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'id', i.id, 'label', i.label, 'root_node', i.root_node, 'status', i.status,
                   'execution_count', i.execution_count, 'database', i.database,
                   'submitter', pg_catalog.pg_get_userbyid(i.submitted_by::oid),
                   'lease_token', q.lease_token, 'nudges', q.nudges, 'nodes', n.nodes,
                   'signals', COALESCE(s.signals, '[]'::json), 'vars', COALESCE(v.vars, '{}'::json)))
          FROM df.instances AS i
          LEFT JOIN df.instance_queue AS q ON q.instance_id = i.id
          LEFT JOIN n ON n.instance_id = i.id
          LEFT JOIN s ON s.instance_id = i.id
          LEFT JOIN v ON v.instance_id = i.id
         WHERE i.id = ANY (p_ids)), '[]'::json), 'settings', p_settings);
END
$$;

-- Lease up to p_limit due instances nobody holds and read them, with the
-- worker settings (one round trip).
CREATE FUNCTION df._claim_v2(p_worker uuid, p_limit integer) RETURNS json
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
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
    RETURN df._snapshot(COALESCE(v_ids, '{}'::text[]), df._worker_settings_v1());
END
$$;

-- Read some held instances again (after a conflict, a nudge or a refused checkpoint).
CREATE FUNCTION df._load_v2(p_ids text[]) RETURNS json
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
-- transaction, set-based.  Each item: {"id", "token", "updates": [node
-- updates, CAS on expected_version], "consume": [{signal_id, node_id}],
-- "status", "output", "execution_count", "ended": [node ids whose attempt is
-- over], "attempts": [{node_id, bind_hash, secret_hash} (hex)], "release":
-- bool, "wake_at", "nudges"}.  Locks in the worker's order (queue rows,
-- instance rows, nodes, each in id order).  Each item stands alone: a lost
-- lease ("lease"), a changed node ("conflict") or a refused submitter
-- ("refused") writes nothing of that item.  Returns {"now", "results": {id:
-- {"status", "versions"} | {"error", "message"}}}.
CREATE FUNCTION df._advance_v2(p_worker uuid, p_items jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_now       timestamptz := pg_catalog.clock_timestamp();
    v_ids       text[];
    v_held      text[];
    v_ended     text[];
    v_live      text[];
    v_refused   jsonb;
    v_conflict  text[];
    v_ok        text[];
    v_items     jsonb;
    v_versions  jsonb;
    v_results   jsonb;
    -- What some item asks for (0.3.0): a statement no item needs is not run.
    v_consume   boolean;
    v_finish    boolean;
    v_release   boolean;
BEGIN
    -- Every statement names the rows it touches by key (= ANY): index scans, whatever the tables hold.
    SELECT pg_catalog.array_agg(e.value ->> 'id'),
           COALESCE(pg_catalog.bool_or(COALESCE(e.value -> 'consume', '[]') <> '[]'), false),
           COALESCE(pg_catalog.bool_or(e.value ->> 'status' IN ('completed', 'failed')), false),
           COALESCE(pg_catalog.bool_or(COALESCE((e.value ->> 'release')::boolean, false)), false)
      INTO v_ids, v_consume, v_finish, v_release
      FROM pg_catalog.jsonb_array_elements(p_items) AS e;
    -- Leases this worker still holds, locked.
    SELECT COALESCE(pg_catalog.array_agg(x.instance_id), '{}') INTO v_held FROM (
        SELECT q.instance_id FROM df.instance_queue AS q
          JOIN pg_catalog.jsonb_array_elements(p_items) AS e ON e.value ->> 'id' = q.instance_id
         WHERE q.instance_id = ANY (v_ids) AND q.lease_token = (e.value ->> 'token')::uuid
           AND q.lease_expires_at > v_now
         ORDER BY q.instance_id
           FOR UPDATE OF q) AS x;
    -- Their instance rows, locked; those that ended meanwhile (cancelled) need no worker any more.
    SELECT COALESCE(pg_catalog.array_agg(x.id) FILTER (WHERE x.status IN ('completed', 'failed', 'cancelled')), '{}'),
           COALESCE(pg_catalog.array_agg(x.id) FILTER (WHERE x.status NOT IN ('completed', 'failed', 'cancelled')), '{}')
      INTO v_ended, v_live FROM (
        SELECT i.id, i.status FROM df.instances AS i WHERE i.id = ANY (v_held) ORDER BY i.id FOR UPDATE) AS x;
    IF pg_catalog.cardinality(v_ended) > 0 THEN
        DELETE FROM df.attempts AS a WHERE a.instance_id = ANY (v_ended);
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = ANY (v_ended);
    END IF;
    -- Checked again at every attempt: the role may have changed since df.start.
    WITH starting AS (
        SELECT i.id, i.submitted_by FROM df.instances AS i
          JOIN pg_catalog.jsonb_array_elements(p_items) AS e ON e.value ->> 'id' = i.id
         WHERE i.id = ANY (v_live) AND pg_catalog.jsonb_array_length(COALESCE(e.value -> 'attempts', '[]')) > 0
    ), verdict AS MATERIALIZED (  -- once per submitter: the filter below is not pushed under the DISTINCT
        SELECT r.submitted_by, df._submitter_refusal(r.submitted_by) AS message
          FROM (SELECT DISTINCT st.submitted_by FROM starting AS st) AS r
    )
    SELECT COALESCE(pg_catalog.jsonb_object_agg(st.id, vd.message), '{}') INTO v_refused
      FROM starting AS st JOIN verdict AS vd ON vd.submitted_by = st.submitted_by
     WHERE vd.message IS NOT NULL;
    -- Compare-and-swap: every node an item updates must still be at the version it read.
    WITH u AS (
        SELECT e.value ->> 'id' AS instance_id, x.node_id, x.expected_version
          FROM pg_catalog.jsonb_array_elements(p_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'updates', '[]')) AS x(node_id text, expected_version bigint)
         WHERE e.value ->> 'id' = ANY (v_live)
    ), locked AS (
        SELECT n.instance_id, n.id FROM df.nodes AS n
          JOIN u ON n.instance_id = u.instance_id AND n.id = u.node_id AND n.resource_version = u.expected_version
         WHERE n.instance_id = ANY (v_live)
         ORDER BY n.instance_id, n.id
           FOR UPDATE OF n
    )
    SELECT COALESCE(pg_catalog.array_agg(c.instance_id), '{}') INTO v_conflict FROM (
        SELECT u.instance_id FROM u
          LEFT JOIN locked AS l ON l.instance_id = u.instance_id AND l.id = u.node_id
         GROUP BY u.instance_id HAVING pg_catalog.count(l.id) <> pg_catalog.count(*)) AS c;

    SELECT COALESCE(pg_catalog.array_agg(x), '{}') INTO v_ok FROM pg_catalog.unnest(v_live) AS x
     WHERE NOT v_refused ? x AND x <> ALL (v_conflict);
    IF pg_catalog.cardinality(v_ok) = pg_catalog.jsonb_array_length(p_items) THEN
        v_items := p_items;  -- every item goes ahead (the usual case): no copy
    ELSE
        SELECT COALESCE(pg_catalog.jsonb_agg(e.value), '[]') INTO v_items
          FROM pg_catalog.jsonb_array_elements(p_items) AS e WHERE e.value ->> 'id' = ANY (v_ok);
    END IF;

    WITH u AS (
        SELECT e.value ->> 'id' AS instance_id, x.*
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'updates', '[]')) AS x(
                   node_id text, expected_version bigint, status text, result_text text, wake_at timestamptz,
                   state jsonb, status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = u.state, status_details = u.status_details,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM u
         WHERE n.instance_id = ANY (v_ok) AND n.instance_id = u.instance_id AND n.id = u.node_id
           AND n.resource_version = u.expected_version
        RETURNING n.instance_id, n.id, n.resource_version
    )
    SELECT COALESCE(pg_catalog.jsonb_object_agg(d.instance_id, d.versions), '{}') INTO v_versions FROM (
        SELECT done.instance_id, pg_catalog.jsonb_object_agg(done.id, done.resource_version) AS versions
          FROM done GROUP BY done.instance_id) AS d;

    IF v_consume THEN
        UPDATE df.signals AS s SET consumed_by = c.node_id, consumed_at = pg_catalog.clock_timestamp()
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'consume', '[]')) AS c(signal_id bigint, node_id text)
         WHERE s.instance_id = ANY (v_ok) AND s.id = c.signal_id AND s.instance_id = e.value ->> 'id';
    END IF;

    -- A node the engine changed, ended or starts again has no attempt in flight any more.
    DELETE FROM df.attempts AS a USING (
        SELECT e.value ->> 'id' AS instance_id, x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'updates', '[]')) AS x(node_id text)
        UNION
        SELECT e.value ->> 'id', x.value
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_array_elements_text(COALESCE(e.value -> 'ended', '[]')) AS x
        UNION
        SELECT e.value ->> 'id', x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'attempts', '[]')) AS x(node_id text)) AS t
     WHERE a.instance_id = ANY (v_ok) AND a.instance_id = t.instance_id AND a.node_id = t.node_id;
    INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash)
    SELECT e.value ->> 'id', x.node_id, (e.value ->> 'token')::uuid, pg_catalog.decode(x.secret_hash, 'hex'),
           pg_catalog.decode(x.bind_hash, 'hex')
      FROM pg_catalog.jsonb_array_elements(v_items) AS e,
           pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'attempts', '[]')) AS x(node_id text, secret_hash text,
                                                                                      bind_hash text);

    -- Finished instances leave the queue; the others run, and some are given back.
    UPDATE df.instances AS i
       SET status = CASE WHEN e.value ->> 'status' IN ('completed', 'failed') THEN e.value ->> 'status'
                         ELSE 'running' END,
           output = CASE WHEN e.value ->> 'status' IN ('completed', 'failed') THEN e.value ->> 'output'
                         ELSE i.output END,
           execution_count = COALESCE((e.value ->> 'execution_count')::bigint, i.execution_count),
           completed_at = CASE WHEN e.value ->> 'status' = 'completed' THEN pg_catalog.now() ELSE i.completed_at END,
           resource_version = i.resource_version + 1, updated_at = pg_catalog.now()
      FROM pg_catalog.jsonb_array_elements(v_items) AS e
     WHERE i.id = ANY (v_ok) AND i.id = e.value ->> 'id'
       AND (e.value ->> 'status' IN ('completed', 'failed') OR i.status = 'pending'
            OR (e.value ->> 'execution_count')::bigint IS DISTINCT FROM i.execution_count
               AND e.value ->> 'execution_count' IS NOT NULL);
    IF v_release THEN
        UPDATE df.instance_queue AS q
           SET lease_token = NULL, lease_worker = NULL, lease_expires_at = NULL,
               wake_at = CASE WHEN q.nudges <> (e.value ->> 'nudges')::bigint THEN pg_catalog.clock_timestamp()
                              ELSE (e.value ->> 'wake_at')::timestamptz END
          FROM pg_catalog.jsonb_array_elements(v_items) AS e
         WHERE q.instance_id = ANY (v_ok) AND q.instance_id = e.value ->> 'id'
           AND COALESCE((e.value ->> 'release')::boolean, false)
           AND e.value ->> 'status' IS NULL;
    END IF;
    IF v_finish THEN
        DELETE FROM df.instance_queue AS q USING pg_catalog.jsonb_array_elements(v_items) AS e
         WHERE q.instance_id = ANY (v_ok) AND q.instance_id = e.value ->> 'id'
           AND e.value ->> 'status' IN ('completed', 'failed');
    END IF;
    IF v_finish OR v_release THEN
        DELETE FROM df.attempts AS a USING pg_catalog.jsonb_array_elements(v_items) AS e
         WHERE a.instance_id = ANY (v_ok) AND a.instance_id = e.value ->> 'id'
           AND (e.value ->> 'status' IN ('completed', 'failed') OR COALESCE((e.value ->> 'release')::boolean, false));
    END IF;
    IF v_finish AND EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(v_items) AS e
                             WHERE e.value ->> 'status' IN ('completed', 'failed')) THEN
        PERFORM df._notify_done();
    END IF;

    SELECT COALESCE(pg_catalog.jsonb_object_agg(r.id, r.result), '{}') INTO v_results FROM (
        SELECT e.value ->> 'id' AS id, CASE
                   WHEN x.id IS NULL THEN pg_catalog.jsonb_build_object('error', 'lease')
                   WHEN x.id = ANY (v_ended) THEN pg_catalog.jsonb_build_object('status', i.status,
                                                                                'versions', '{}'::jsonb)
                   WHEN v_refused ? x.id THEN pg_catalog.jsonb_build_object('error', 'refused',
                                                                            'message', v_refused ->> x.id)
                   WHEN x.id = ANY (v_conflict) THEN pg_catalog.jsonb_build_object('error', 'conflict')
                   ELSE pg_catalog.jsonb_build_object('status', i.status,
                                                      'versions', COALESCE(v_versions -> x.id, '{}'::jsonb))
               END AS result
          FROM pg_catalog.jsonb_array_elements(p_items) AS e
          LEFT JOIN pg_catalog.unnest(v_held) AS x(id) ON x.id = e.value ->> 'id'
          LEFT JOIN df.instances AS i ON i.id = x.id AND i.id = ANY (v_held)) AS r;
    RETURN pg_catalog.jsonb_build_object('now', df._now(), 'results', v_results);
END
$$;

-- Called on the SUBMITTER's connection, first in a step's transaction: binds
-- each attempt to this backend (df.in_workflow() and the checkpoint check
-- it), proven by a one-use bind secret (not the checkpoint's secret).  Only a
-- session of the instance's submitter, under a live lease, can bind.  In a
-- transaction (p_autocommit false) the binding never outlives it: the
-- checkpoint deletes the attempt in the same transaction, and a rollback
-- undoes the binding; so only an autocommit bind (a statement that cannot
-- run in a transaction block) records the backend's start time, which tells
-- a later session that reuses the pid apart.
CREATE FUNCTION df._bind_v1(p_instance_ids text[], p_node_ids text[], p_secrets text[],
                            p_autocommit boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_bound integer;
BEGIN
    -- Each secret hashed once (MATERIALIZED), not once per row it is compared with.
    WITH b AS MATERIALIZED (
        SELECT x.instance_id, x.node_id, pg_catalog.sha256(pg_catalog.convert_to(x.secret, 'UTF8')) AS hash
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_secrets)) AS x(instance_id, node_id, secret)
    ), q AS MATERIALIZED (
        -- The live leases and the instances of this session's role, each table read once by its keys
        -- (0.3.0): "= ANY" bounds the read whatever the statistics say (joined by key instead, a merge
        -- join could walk the whole index), and it is evaluated once, not at every lookup of a loop.
        SELECT q.instance_id, q.lease_token FROM df.instance_queue AS q
         WHERE q.instance_id = ANY (p_instance_ids) AND q.lease_expires_at > pg_catalog.clock_timestamp()
    ), i AS MATERIALIZED (
        -- IS NOT DISTINCT FROM (the column is NOT NULL): never an index condition, so the planner finds
        -- the instance by id, not by scanning every instance of the role in idx_instances_submitted_by.
        SELECT i.id FROM df.instances AS i
         WHERE i.id = ANY (p_instance_ids)
           AND i.submitted_by IS NOT DISTINCT FROM pg_catalog.quote_ident(session_user)::regrole
    )
    UPDATE df.attempts AS a
       SET backend_pid = pg_catalog.pg_backend_pid(), bind_hash = NULL,
           backend_start = CASE WHEN p_autocommit THEN
               (SELECT s.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS s) END
      FROM b, q, i
     WHERE a.instance_id = b.instance_id AND a.node_id = b.node_id
       AND a.bind_hash = b.hash AND a.backend_pid IS NULL
       AND q.instance_id = b.instance_id AND q.lease_token = a.lease_token
       AND i.id = b.instance_id;
    GET DIAGNOSTICS v_bound = ROW_COUNT;
    IF v_bound IS DISTINCT FROM pg_catalog.cardinality(p_instance_ids) THEN
        RAISE EXCEPTION 'durable: attempt refused' USING ERRCODE = 'DF014';
    END IF;
END
$$;

-- The common start of the step checkpoints (0.3.0): the transaction must
-- still be the one the steps began in; a caller that does not hold every
-- attempt it names (its secret, on this backend) is refused before it takes
-- or waits for any lock; then the queue and instance rows are locked in the
-- worker's order (p_exclusive, for a checkpoint that also writes decisions:
-- FOR UPDATE; otherwise KEY SHARE and SHARE: a takeover waits, heartbeats do
-- not, and df.cancel is ordered against it), and the attempts are deleted,
-- which checks each against its secret, this backend, a live lease and a
-- running instance of this session's role.  Raises DF014 unless every
-- attempt checks out.
CREATE FUNCTION df._take_attempts_v1(p_xid text, p_instance_ids text[], p_node_ids text[], p_secrets text[],
                                     p_exclusive boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_n     integer := pg_catalog.cardinality(p_instance_ids);
    v_count integer;
BEGIN
    IF pg_catalog.pg_current_xact_id()::text IS DISTINCT FROM p_xid THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the step ended its transaction' USING ERRCODE = 'DF014';
    END IF;
    SELECT pg_catalog.count(*) INTO v_count
      FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                      pg_catalog.unnest(p_secrets)) AS x(instance_id, node_id, secret)
      JOIN df.attempts AS a ON a.instance_id = x.instance_id AND a.node_id = x.node_id
     WHERE a.secret_hash = pg_catalog.sha256(pg_catalog.convert_to(x.secret, 'UTF8'))
       AND a.backend_pid = pg_catalog.pg_backend_pid();
    IF v_count IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    IF p_exclusive THEN
        PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = ANY (p_instance_ids)
          ORDER BY q.instance_id FOR UPDATE;
        PERFORM 1 FROM df.instances AS i WHERE i.id = ANY (p_instance_ids) ORDER BY i.id FOR UPDATE;
    ELSE
        PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = ANY (p_instance_ids)
          ORDER BY q.instance_id FOR KEY SHARE;
        PERFORM 1 FROM df.instances AS i WHERE i.id = ANY (p_instance_ids) ORDER BY i.id FOR SHARE;
    END IF;
    WITH c AS MATERIALIZED (
        SELECT x.instance_id, x.node_id, pg_catalog.sha256(pg_catalog.convert_to(x.secret, 'UTF8')) AS hash
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_secrets)) AS x(instance_id, node_id, secret)
    ), q AS MATERIALIZED (  -- each table read once by its keys (see df._bind_v1)
        SELECT q.instance_id, q.lease_token FROM df.instance_queue AS q
         WHERE q.instance_id = ANY (p_instance_ids) AND q.lease_expires_at > pg_catalog.clock_timestamp()
    ), i AS MATERIALIZED (
        SELECT i.id FROM df.instances AS i
         WHERE i.id = ANY (p_instance_ids) AND i.status IN ('pending', 'running')
           -- Not an index condition (see df._bind_v1): the instances are found by id.
           AND i.submitted_by IS NOT DISTINCT FROM pg_catalog.quote_ident(session_user)::regrole
    )
    DELETE FROM df.attempts AS a
     USING c, q, i
     WHERE a.instance_id = c.instance_id AND a.node_id = c.node_id
       AND a.secret_hash = c.hash
       AND a.backend_pid = pg_catalog.pg_backend_pid()
       AND q.instance_id = c.instance_id AND q.lease_token = a.lease_token
       AND i.id = c.instance_id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
END
$$;

-- Called on the SUBMITTER's connection, in the steps' own transaction, right
-- after their statements: records every result of the transaction or none.
-- The transaction must still be the one the steps began in (p_xid), each
-- attempt's secret must match, on the backend that bound it, under a live
-- lease, for a running node of a live instance of this session's role, at
-- the version the node had when the attempt started.  Locks in the worker's
-- order: queue rows (KEY SHARE: a takeover waits, heartbeats do not), then
-- instance rows (SHARE: ordered against df.cancel), then attempts and nodes.
-- Returns the nodes' new resource_versions, in argument order.
CREATE FUNCTION df._checkpoint_v2(p_xid text, p_instance_ids text[], p_node_ids text[], p_secrets text[],
                                  p_results text[], p_details jsonb[], p_versions bigint[])
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_n        integer := pg_catalog.cardinality(p_instance_ids);
    v_versions bigint[];
BEGIN
    PERFORM df._take_attempts_v1(p_xid, p_instance_ids, p_node_ids, p_secrets, false);
    WITH done AS (
        UPDATE df.nodes AS n
           SET status = 'completed', result_text = c.result_text, result = c.result_text::jsonb,
               status_details = c.details, wake_at = NULL,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_results), pg_catalog.unnest(p_details),
                          pg_catalog.unnest(p_versions)) WITH ORDINALITY
               AS c(instance_id, node_id, result_text, details, expected_version, ord)
         WHERE n.instance_id = ANY (p_instance_ids) AND n.instance_id = c.instance_id AND n.id = c.node_id
           AND n.status = 'running' AND n.resource_version = c.expected_version
        RETURNING c.ord, n.resource_version
    )
    SELECT pg_catalog.array_agg(done.resource_version ORDER BY done.ord) INTO v_versions FROM done;
    IF pg_catalog.cardinality(v_versions) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    RETURN v_versions;
END
$$;

-- The default mode's step transaction, with the decision that follows the
-- step.  Checks and records the step's result as df._checkpoint_v2 does for
-- one step (raising unless the transaction, the secret, the backend, the live
-- lease and the node's version check out), then writes the engine's next
-- decision for the instance, which the worker made from the step's result
-- before committing: p_next {"updates": [node updates, CAS on
-- expected_version], "attempts": [{node_id, bind_hash, secret_hash} (hex)],
-- "status": null or the instance's final status, "output"}.  The decision is
-- written only if every node it updates is still at the version the worker
-- read and the submitter may still start steps; otherwise the step's result
-- alone is recorded and the worker writes the decision itself.  A caller that
-- does not hold the attempt is refused before any lock is taken; then it locks
-- in the worker's order (queue row, instance row, nodes in id order), as
-- df._advance_v2 does, and checks again.  Returns {"versions": [the step
-- node's new version], "next": null | {"status", "versions": {node id: new
-- version}, "now"}}.
CREATE FUNCTION df._checkpoint_next_v1(p_xid text, p_instance_id text, p_node_id text, p_secret text,
                                       p_result text, p_details jsonb, p_version bigint, p_next jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_status   text := p_next ->> 'status';
    v_updates  jsonb := COALESCE(p_next -> 'updates', '[]');
    v_attempts jsonb := COALESCE(p_next -> 'attempts', '[]');
    v_hash     bytea := pg_catalog.sha256(pg_catalog.convert_to(p_secret, 'UTF8'));
    -- Only the instance's end or the next steps' start, never the step's own node.
    v_fold     boolean := p_next IS NOT NULL
                          AND (p_next ->> 'status' IN ('completed', 'failed')
                               OR p_next ->> 'status' IS NULL AND pg_catalog.jsonb_array_length(v_attempts) > 0)
                          AND NOT v_updates @> pg_catalog.jsonb_build_array(
                                                   pg_catalog.jsonb_build_object('node_id', p_node_id));
    v_token    uuid;
    v_role     regrole;
    v_own      integer;
    v_matched  integer;
    v_versions jsonb;
BEGIN
    IF pg_catalog.pg_current_xact_id()::text IS DISTINCT FROM p_xid THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the step ended its transaction' USING ERRCODE = 'DF014';
    END IF;
    -- Nobody but the holder of the attempt gets to wait for (or hold) the instance's locks.
    IF NOT EXISTS (SELECT 1 FROM df.attempts AS a
                    WHERE a.instance_id = p_instance_id AND a.node_id = p_node_id AND a.secret_hash = v_hash
                      AND a.backend_pid = pg_catalog.pg_backend_pid()) THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    SELECT q.lease_token INTO v_token FROM df.instance_queue AS q
     WHERE q.instance_id = p_instance_id AND q.lease_expires_at > pg_catalog.clock_timestamp()
       FOR UPDATE;
    SELECT i.submitted_by INTO v_role FROM df.instances AS i
     WHERE i.id = p_instance_id AND i.status IN ('pending', 'running')
       AND i.submitted_by = pg_catalog.quote_ident(session_user)::regrole
       FOR UPDATE;
    -- Deleting the attempt checks it: its secret, on this backend, under the live lease of a live
    -- instance of this session's role.
    DELETE FROM df.attempts AS a
     WHERE a.instance_id = p_instance_id AND a.node_id = p_node_id
       AND a.secret_hash = v_hash
       AND a.backend_pid = pg_catalog.pg_backend_pid() AND a.lease_token = v_token AND v_role IS NOT NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'durable: checkpoint refused' USING ERRCODE = 'DF014';
    END IF;
    -- The step's node (still running this attempt) and every node the decision changes, at the
    -- versions the worker read, locked.
    SELECT pg_catalog.count(*) FILTER (WHERE x.own), pg_catalog.count(*) FILTER (WHERE NOT x.own)
      INTO v_own, v_matched FROM (
        SELECT w.own FROM df.nodes AS n
          JOIN (SELECT p_node_id AS node_id, p_version AS expected_version, true AS own
                UNION ALL
                SELECT u.node_id, u.expected_version, false
                  FROM pg_catalog.jsonb_to_recordset(CASE WHEN v_fold THEN v_updates ELSE '[]' END)
                       AS u(node_id text, expected_version bigint)) AS w
            ON n.id = w.node_id AND n.resource_version = w.expected_version
         WHERE n.instance_id = p_instance_id AND (n.status = 'running' OR NOT w.own)
         ORDER BY n.id
           FOR UPDATE OF n) AS x;
    IF v_own <> 1 THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    v_fold := v_fold AND v_matched = pg_catalog.jsonb_array_length(v_updates)
              AND (pg_catalog.jsonb_array_length(v_attempts) = 0 OR df._submitter_refusal(v_role) IS NULL);
    WITH u AS (
        SELECT p_node_id AS node_id, true AS own, 'completed' AS status, p_result AS result_text,
               NULL::timestamptz AS wake_at, NULL::jsonb AS state, p_details AS status_details
        UNION ALL
        SELECT x.node_id, false, x.status, x.result_text, x.wake_at, x.state, x.status_details
          FROM pg_catalog.jsonb_to_recordset(CASE WHEN v_fold THEN v_updates ELSE '[]' END) AS x(
                   node_id text, status text, result_text text, wake_at timestamptz, state jsonb,
                   status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = CASE WHEN u.own THEN n.state ELSE u.state END,
               status_details = u.status_details,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM u
         WHERE n.instance_id = p_instance_id AND n.id = u.node_id
        RETURNING n.id, n.resource_version
    )
    SELECT pg_catalog.jsonb_object_agg(done.id, done.resource_version) INTO v_versions FROM done;
    IF NOT v_fold THEN
        RETURN pg_catalog.jsonb_build_object('versions', pg_catalog.jsonb_build_array(v_versions -> p_node_id),
                                             'next', NULL);
    END IF;
    IF v_status IN ('completed', 'failed') THEN
        UPDATE df.instances AS i
           SET status = v_status, output = p_next ->> 'output',
               completed_at = CASE WHEN v_status = 'completed' THEN pg_catalog.now() ELSE i.completed_at END,
               resource_version = i.resource_version + 1, updated_at = pg_catalog.now()
         WHERE i.id = p_instance_id;
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id;
        DELETE FROM df.attempts AS a WHERE a.instance_id = p_instance_id;
        PERFORM df._notify_done();
    ELSE
        -- A node the decision changes or starts has no attempt in flight any more (one an earlier
        -- holder of the lease left goes); then the next steps' attempts.
        DELETE FROM df.attempts AS a
         WHERE a.instance_id = p_instance_id
           AND a.node_id IN (SELECT x.node_id FROM pg_catalog.jsonb_to_recordset(v_updates) AS x(node_id text)
                             UNION ALL
                             SELECT x.node_id FROM pg_catalog.jsonb_to_recordset(v_attempts) AS x(node_id text));
        INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash)
        SELECT p_instance_id, x.node_id, v_token, pg_catalog.decode(x.secret_hash, 'hex'),
               pg_catalog.decode(x.bind_hash, 'hex')
          FROM pg_catalog.jsonb_to_recordset(v_attempts) AS x(node_id text, secret_hash text, bind_hash text);
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'versions', pg_catalog.jsonb_build_array(v_versions -> p_node_id),
        'next', pg_catalog.jsonb_build_object('status', COALESCE(v_status, 'running'),
                                              'versions', v_versions - p_node_id, 'now', df._now()));
END
$$;

-- The batched mode's checkpoint with the decisions that follow its steps
-- (0.3.0): df._checkpoint_v2 for every step of the transaction (all or
-- none: any step that does not check out refuses the whole checkpoint), and
-- for each step whose p_nexts entry is not NULL, the engine's next decision
-- for its instance in the shape df._checkpoint_next_v1 takes ({"updates",
-- "attempts", "status", "output"}).  A decision is written only for an
-- instance named once in the batch, that only starts the next steps or ends
-- the instance (never touching the step's own node), when every node it
-- updates is still at the version the worker read and the submitter may
-- still start steps; otherwise its entry in "next" is NULL and the worker
-- writes it itself.  A caller that does not hold every attempt is refused
-- before any lock is taken; then it locks in the worker's order (queue rows,
-- instance rows, nodes in (instance, id) order).  Returns {"versions": [the
-- step nodes' new versions, in argument order], "next": [per step: NULL |
-- {"status", "versions": {node id: new version}, "now"}]}.
CREATE FUNCTION df._checkpoint_next_v2(p_xid text, p_instance_ids text[], p_node_ids text[], p_secrets text[],
                                       p_results text[], p_details jsonb[], p_versions bigint[], p_nexts jsonb[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_n        integer := pg_catalog.cardinality(p_instance_ids);
    v_count    integer;
    v_items    jsonb;      -- [{"id", "next"}]: the decisions to write
    v_matched  jsonb;      -- instance id -> how many of its decision's nodes are at the expected version
    v_own      bigint[];
    v_written  jsonb;      -- instance id -> {node id: new version}, for the decisions' nodes
    v_ended    text[];
    v_now      timestamptz;
BEGIN
    IF v_n IS NULL OR v_n = 0
       OR pg_catalog.cardinality(p_node_ids) IS DISTINCT FROM v_n OR pg_catalog.cardinality(p_secrets) IS DISTINCT FROM v_n
       OR pg_catalog.cardinality(p_results) IS DISTINCT FROM v_n OR pg_catalog.cardinality(p_details) IS DISTINCT FROM v_n
       OR pg_catalog.cardinality(p_versions) IS DISTINCT FROM v_n OR pg_catalog.cardinality(p_nexts) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the arguments do not line up' USING ERRCODE = 'DF014';
    END IF;
    PERFORM df._take_attempts_v1(p_xid, p_instance_ids, p_node_ids, p_secrets, true);

    -- The decisions that may be written: only the instance's end or the next steps' start, never a
    -- step's own node, one per instance named once; a step starts only if the submitter may still
    -- start steps (one submitter: this session's role, checked above).
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', x.instance_id, 'next', x.nxt))
      INTO v_items
      FROM (SELECT y.*, pg_catalog.count(*) OVER (PARTITION BY y.instance_id) AS named
              FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                              pg_catalog.unnest(p_nexts)) AS y(instance_id, node_id, nxt)) AS x
     WHERE x.named = 1 AND pg_catalog.jsonb_typeof(x.nxt) = 'object'
       AND pg_catalog.jsonb_typeof(COALESCE(x.nxt -> 'updates', '[]')) = 'array'
       AND pg_catalog.jsonb_typeof(COALESCE(x.nxt -> 'attempts', '[]')) = 'array'
       AND (x.nxt ->> 'status' IN ('completed', 'failed')
            OR x.nxt ->> 'status' IS NULL AND pg_catalog.jsonb_array_length(COALESCE(x.nxt -> 'attempts', '[]')) > 0)
       AND NOT COALESCE(x.nxt -> 'updates', '[]') @> pg_catalog.jsonb_build_array(
                                                        pg_catalog.jsonb_build_object('node_id', x.node_id));
    IF v_items IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_catalog.jsonb_array_elements(v_items) AS e
             WHERE pg_catalog.jsonb_array_length(COALESCE(e.value -> 'next' -> 'attempts', '[]')) > 0) THEN
        IF df._submitter_refusal(pg_catalog.quote_ident(session_user)::regrole) IS NOT NULL THEN
            SELECT pg_catalog.jsonb_agg(e.value) INTO v_items FROM pg_catalog.jsonb_array_elements(v_items) AS e
             WHERE pg_catalog.jsonb_array_length(COALESCE(e.value -> 'next' -> 'attempts', '[]')) = 0;
        END IF;
    END IF;
    v_items := COALESCE(v_items, '[]');

    -- The steps' nodes (still running these attempts) and every node a decision changes, at the
    -- versions the worker read, locked.
    WITH w AS (
        SELECT x.instance_id, x.node_id, x.expected_version, true AS own
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_versions)) AS x(instance_id, node_id, expected_version)
        UNION ALL
        SELECT e.value ->> 'id', u.node_id, u.expected_version, false
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'updates', '[]'))
               AS u(node_id text, expected_version bigint)
    ), locked AS (
        SELECT w.instance_id, w.own FROM df.nodes AS n
          JOIN w ON n.instance_id = w.instance_id AND n.id = w.node_id AND n.resource_version = w.expected_version
         WHERE n.instance_id = ANY (p_instance_ids) AND (n.status = 'running' OR NOT w.own)
         ORDER BY n.instance_id, n.id
           FOR UPDATE OF n
    )
    SELECT COALESCE(pg_catalog.sum(l.n) FILTER (WHERE l.own), 0),
           COALESCE(pg_catalog.jsonb_object_agg(l.instance_id, l.n) FILTER (WHERE NOT l.own), '{}')
      INTO v_count, v_matched
      FROM (SELECT locked.instance_id, locked.own, pg_catalog.count(*) AS n
              FROM locked GROUP BY locked.instance_id, locked.own) AS l;
    IF v_count IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'durable: checkpoint refused: the node is no longer running this attempt'
            USING ERRCODE = 'DF014';
    END IF;
    SELECT COALESCE(pg_catalog.jsonb_agg(e.value), '[]') INTO v_items
      FROM pg_catalog.jsonb_array_elements(v_items) AS e
     WHERE COALESCE((v_matched ->> (e.value ->> 'id'))::integer, 0)
           = pg_catalog.jsonb_array_length(COALESCE(e.value -> 'next' -> 'updates', '[]'));

    WITH u AS (
        SELECT x.instance_id, x.node_id, true AS own, 'completed' AS status, x.result_text,
               NULL::timestamptz AS wake_at, NULL::jsonb AS state, x.details AS status_details, x.ord
          FROM ROWS FROM (pg_catalog.unnest(p_instance_ids), pg_catalog.unnest(p_node_ids),
                          pg_catalog.unnest(p_results), pg_catalog.unnest(p_details)) WITH ORDINALITY
               AS x(instance_id, node_id, result_text, details, ord)
        UNION ALL
        SELECT e.value ->> 'id', x.node_id, false, x.status, x.result_text, x.wake_at, x.state,
               x.status_details, NULL
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'updates', '[]')) AS x(
                   node_id text, status text, result_text text, wake_at timestamptz, state jsonb,
                   status_details jsonb)
    ), done AS (
        UPDATE df.nodes AS n
           SET status = u.status, result_text = u.result_text,
               result = CASE WHEN u.result_text IS NULL THEN NULL ELSE u.result_text::jsonb END,
               wake_at = u.wake_at, state = CASE WHEN u.own THEN n.state ELSE u.state END,
               status_details = u.status_details,
               resource_version = n.resource_version + 1, updated_at = pg_catalog.now()
          FROM u
         WHERE n.instance_id = ANY (p_instance_ids) AND n.instance_id = u.instance_id AND n.id = u.node_id
        RETURNING n.instance_id, n.id, n.resource_version, u.own, u.ord
    )
    SELECT (SELECT pg_catalog.array_agg(d.resource_version ORDER BY d.ord) FROM done AS d WHERE d.own),
           COALESCE((SELECT pg_catalog.jsonb_object_agg(g.instance_id, g.versions) FROM (
                         SELECT d.instance_id, pg_catalog.jsonb_object_agg(d.id, d.resource_version) AS versions
                           FROM done AS d WHERE NOT d.own GROUP BY d.instance_id) AS g), '{}')
      INTO v_own, v_written;

    -- Instances a decision ends leave the queue; the others start their next steps.
    WITH e AS (
        SELECT x.value ->> 'id' AS id, x.value -> 'next' AS nxt FROM pg_catalog.jsonb_array_elements(v_items) AS x
         WHERE x.value -> 'next' ->> 'status' IN ('completed', 'failed')
    ), ended AS (
        UPDATE df.instances AS i
           SET status = e.nxt ->> 'status', output = e.nxt ->> 'output',
               completed_at = CASE WHEN e.nxt ->> 'status' = 'completed' THEN pg_catalog.now() ELSE i.completed_at END,
               resource_version = i.resource_version + 1, updated_at = pg_catalog.now()
          FROM e
         WHERE i.id = ANY (p_instance_ids) AND i.id = e.id
        RETURNING i.id::text
    )
    SELECT pg_catalog.array_agg(ended.id) INTO v_ended FROM ended;
    IF v_ended IS NOT NULL THEN
        DELETE FROM df.instance_queue AS q WHERE q.instance_id = ANY (v_ended);
        DELETE FROM df.attempts AS a WHERE a.instance_id = ANY (v_ended);
        PERFORM df._notify_done();
    END IF;
    -- A node a decision changes or starts has no attempt in flight any more (one an earlier holder
    -- of the lease left goes); then the next steps' attempts, under the instance's lease.
    DELETE FROM df.attempts AS a USING (
        SELECT e.value ->> 'id' AS instance_id, x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'updates', '[]')) AS x(node_id text)
         WHERE e.value -> 'next' ->> 'status' IS NULL
        UNION ALL
        SELECT e.value ->> 'id', x.node_id
          FROM pg_catalog.jsonb_array_elements(v_items) AS e,
               pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'attempts', '[]')) AS x(node_id text)
         WHERE e.value -> 'next' ->> 'status' IS NULL) AS t
     WHERE a.instance_id = ANY (p_instance_ids) AND a.instance_id = t.instance_id AND a.node_id = t.node_id;
    INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash)
    SELECT q.instance_id, x.node_id, q.lease_token, pg_catalog.decode(x.secret_hash, 'hex'),
           pg_catalog.decode(x.bind_hash, 'hex')
      FROM pg_catalog.jsonb_array_elements(v_items) AS e
      JOIN df.instance_queue AS q ON q.instance_id = e.value ->> 'id',
           pg_catalog.jsonb_to_recordset(COALESCE(e.value -> 'next' -> 'attempts', '[]'))
           AS x(node_id text, secret_hash text, bind_hash text)
     WHERE q.instance_id = ANY (p_instance_ids) AND e.value -> 'next' ->> 'status' IS NULL;

    v_now := df._now();
    RETURN pg_catalog.jsonb_build_object('versions', pg_catalog.to_jsonb(v_own), 'next', (
        SELECT pg_catalog.jsonb_agg(CASE WHEN f.value IS NULL THEN NULL ELSE pg_catalog.jsonb_build_object(
                   'status', COALESCE(f.value -> 'next' ->> 'status', 'running'),
                   'versions', COALESCE(v_written -> t.instance_id, '{}'),
                   'now', v_now) END ORDER BY t.ord)
          FROM pg_catalog.unnest(p_instance_ids) WITH ORDINALITY AS t(instance_id, ord)
          LEFT JOIN pg_catalog.jsonb_array_elements(v_items) AS f ON f.value ->> 'id' = t.instance_id));
END
$$;

-- Run by the worker on a SUBMITTER's connection between two steps of one
-- transaction (the opt-in batched mode), with the submitter's own rights:
-- nothing one step left in its session reaches the next (what DISCARD ALL
-- does between transactions, as far as it can be done inside one), then
-- the next step's timeout and string syntax, as the login role.
CREATE FUNCTION df._step_reset_v1(p_timeout text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE 'CLOSE ALL';
    EXECUTE 'DEALLOCATE ALL';
    RESET ALL;
    EXECUTE 'DISCARD TEMP';
    EXECUTE 'DISCARD SEQUENCES';
    EXECUTE 'UNLISTEN *';
    PERFORM pg_catalog.pg_advisory_unlock_all();
    PERFORM pg_catalog.set_config('statement_timeout', p_timeout, true),
            pg_catalog.set_config('standard_conforming_strings', 'on', true),
            pg_catalog.set_config('role', 'none', true);
END
$$;

REVOKE EXECUTE ON FUNCTION df._take_attempts_v1(text, text[], text[], text[], boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df._snapshot(text[], jsonb), df._claim_v2(uuid, integer), df._load_v2(text[]),
    df._nudges_v2(text[]), df._advance_v2(uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._claim_v2(uuid, integer), df._load_v2(text[]), df._nudges_v2(text[]),
    df._advance_v2(uuid, jsonb) TO durable_worker;
