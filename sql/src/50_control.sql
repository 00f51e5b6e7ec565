-- ---------------------------------------------------------------------------
-- Control: cancel, signal, await_instance / wait_for_completion.
-- ---------------------------------------------------------------------------

-- Lock and return a caller's own instance, or raise "not found or access denied".
CREATE FUNCTION df._own_instance(p_caller regrole, p_instance_id text) RETURNS df.instances
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
REVOKE EXECUTE ON FUNCTION df._own_instance(regrole, text) FROM PUBLIC;

-- Wake the worker holding an instance (it cancels running steps, delivers signals).
CREATE FUNCTION df._nudge_instance(p_instance_id text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_leased boolean;
BEGIN
    UPDATE df.instance_queue AS q SET wake_at = pg_catalog.clock_timestamp(), nudges = q.nudges + 1
     WHERE q.instance_id = p_instance_id
    RETURNING q.lease_expires_at > pg_catalog.clock_timestamp() INTO v_leased;
    IF v_leased THEN
        PERFORM pg_catalog.pg_notify('durable_nudge', '');
    ELSE
        PERFORM df._wake_workers();
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION df._nudge_instance(text) FROM PUBLIC;

CREATE FUNCTION df._cancel_v2(p_ticket uuid, p_instance_id text, p_reason text, p_expected bigint) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF r.status IN ('completed', 'failed', 'cancelled') THEN
        RETURN pg_catalog.format('Instance %s is already %s', r.id, r.status);
    END IF;
    UPDATE df.instances AS i SET status = 'cancelled', output = p_reason WHERE i.id = r.id;
    PERFORM df._nudge_instance(r.id);
    PERFORM df._notify_done();
    RETURN pg_catalog.format('Instance %s cancelled: %s', r.id, p_reason);
END
$$;

-- Not STRICT (a trailing parameter defaulting to NULL): pg_durable's own
-- parameters keep STRICT behaviour by hand.
CREATE FUNCTION df.cancel(instance_id text, reason text DEFAULT 'Cancelled by user',
                          expected_resource_version bigint DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL OR reason IS NULL THEN
        RETURN NULL;
    END IF;
    IF instance_id = '' THEN
        RAISE EXCEPTION 'Instance ID cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._cancel_v2(df._ticket(), instance_id, reason, expected_resource_version);
END
$$;

CREATE FUNCTION df._signal_v2(p_ticket uuid, p_instance_id text, p_name text, p_data text, p_expected bigint)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r      df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
    v_data text;
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF r.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'Failed to send signal: instance % has already finished (%): signal ''%'' was not delivered',
            r.id, r.status, p_name USING ERRCODE = 'DF008';
    END IF;
    -- A JSON payload is kept as sent; any other text travels as a JSON string.
    BEGIN
        PERFORM p_data::json;
        v_data := p_data;
    EXCEPTION WHEN invalid_text_representation THEN
        v_data := pg_catalog.to_json(p_data)::text;
    END;
    INSERT INTO df.signals (instance_id, signal_name, data, submitted_by)
    VALUES (r.id, p_name, v_data, r.submitted_by);
    UPDATE df.instances AS i SET updated_at = pg_catalog.now() WHERE i.id = r.id;  -- delivery bumps the version
    PERFORM df._nudge_instance(r.id);
    RETURN 'OK';
END
$$;

CREATE FUNCTION df.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}',
                          expected_resource_version bigint DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL OR signal_name IS NULL OR signal_data IS NULL THEN
        RETURN NULL;
    END IF;
    IF instance_id = '' THEN
        RAISE EXCEPTION 'Instance ID cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    IF signal_name = '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._signal_v2(df._ticket(), instance_id, signal_name, signal_data, expected_resource_version);
END
$$;

-- Register / unregister the calling session as waiting for instances to
-- finish (the Python client LISTENs on durable_done meanwhile).  Only ever
-- the caller's own backend, so anyone may call them.  PL/pgSQL (0.3.0): as
-- LANGUAGE sql functions with a SET clause they planned their statements over
-- pg_stat_activity again at every call (about 2 ms).
CREATE FUNCTION df._wait_begin_v1() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM df.waiters AS w
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = w.pid);
    INSERT INTO df.waiters (pid, backend_start)
    VALUES (pg_catalog.pg_backend_pid(),
            (SELECT a.backend_start FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = pg_catalog.pg_backend_pid()))
    ON CONFLICT (pid) DO UPDATE SET backend_start = EXCLUDED.backend_start, since = pg_catalog.clock_timestamp();
END
$$;

CREATE FUNCTION df._wait_end_v1() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM df.waiters AS w WHERE w.pid = pg_catalog.pg_backend_pid();
END
$$;

-- An instance finished: wake waiting clients, if there are any (at most one
-- NOTIFY per transaction; the payload tells other roles nothing).
CREATE FUNCTION df._notify_done() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM df.waiters) THEN
        PERFORM pg_catalog.pg_notify('durable_done', '');
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION df._notify_done() FROM PUBLIC;

-- A function cannot receive notifications while it runs, so it polls, with
-- a short interval that grows (10 ms up to 250 ms).
CREATE FUNCTION df.await_instance(instance_id text, timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_deadline timestamptz;
    v_status   text;
    v_mine     boolean;
    v_pause    double precision := 0.01;
BEGIN
    IF df._in_workflow() THEN
        RAISE EXCEPTION 'df.await_instance() cannot be called inside a workflow - a step waiting for an instance '
                        'would hold its worker slot' USING ERRCODE = 'DF013';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    SELECT i.status, i.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned())
      INTO v_status, v_mine
      FROM df.instances AS i WHERE i.id = await_instance.instance_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found: %', instance_id USING ERRCODE = 'DF003';
    END IF;
    IF v_status NOT IN ('completed', 'failed', 'cancelled') THEN
        IF v_mine THEN
            RAISE EXCEPTION 'df.await_instance(): instance % was started in this transaction, which must commit '
                            'before a worker can run it', instance_id USING ERRCODE = 'DF001';
        END IF;
        IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'df.await_instance(): cannot wait inside a % transaction: its snapshot never sees '
                            'the instance finish', pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
    v_deadline := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => timeout_seconds);
    LOOP
        IF v_status IN ('completed', 'failed', 'cancelled') THEN
            -- Remembered so that passing this value to a builder in the same statement is refused.
            RETURN df._note_step_helper_v1('df.await_instance', v_status);
        END IF;
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'Timeout after %s waiting for instance % (status: %). The instance is still running; '
                            'call df.await_instance() again or check df.status().', timeout_seconds, instance_id, v_status
                USING ERRCODE = 'DF011';
        END IF;
        PERFORM pg_catalog.pg_sleep(LEAST(v_pause,
            EXTRACT(epoch FROM v_deadline - pg_catalog.clock_timestamp())::double precision));
        v_pause := LEAST(v_pause * 1.5, 0.25);
        SELECT i.status INTO v_status FROM df.instances AS i WHERE i.id = await_instance.instance_id;
    END LOOP;
END
$$;

CREATE FUNCTION df.wait_for_completion(instance_id text, timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE WARNING 'df.wait_for_completion() is deprecated; use df.await_instance() instead';
    RETURN df.await_instance(instance_id, timeout_seconds);
END
$$;
