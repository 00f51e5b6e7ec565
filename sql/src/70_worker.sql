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
