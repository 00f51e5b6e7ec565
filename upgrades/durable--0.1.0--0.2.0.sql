-- durable 0.1.0 -> 0.2.0: compare-and-swap for clients (expected_resource_version on df.cancel and
-- df.signal), instance metadata (labels, annotations, df.set_metadata), df.delete_instance.
-- Applied by `durable upgrade` in one transaction.  Frozen once released.

SET LOCAL ROLE durable_owner;

-- Every instance and node row has had a NOT NULL resource_version since 0.1.0: nothing to backfill.

-- Sessions waiting for instances to finish: a finishing instance notifies only when someone waits.
CREATE TABLE df.waiters (
    pid            integer     NOT NULL PRIMARY KEY,
    backend_start  timestamptz,
    since          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
REVOKE ALL ON df.waiters FROM PUBLIC;

INSERT INTO df.settings (key, value) VALUES ('max_result_bytes', '67108864') ON CONFLICT (key) DO NOTHING;
ALTER TABLE df.instances
    ADD COLUMN labels jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN annotations jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD CONSTRAINT instances_labels_chk CHECK (pg_catalog.jsonb_typeof(labels) = 'object'),
    ADD CONSTRAINT instances_annotations_chk CHECK (pg_catalog.jsonb_typeof(annotations) = 'object');

-- A trailing parameter would add an overload (and make calls ambiguous), a new
-- result column cannot be added in place: drop and re-create, keeping the ACLs.
CREATE TABLE df.upgrade_saved_acl AS
SELECT p.proname::text AS name, p.pronargs::integer AS nargs, p.proacl AS acl
  FROM pg_catalog.pg_proc AS p
 WHERE p.pronamespace = 'df'::regnamespace AND p.proname IN ('cancel', 'signal', 'instance_info', 'list_instances');

DROP FUNCTION df.cancel(text, text);
DROP FUNCTION df._cancel_v1(uuid, text, text);
DROP FUNCTION df.signal(text, text, text);
DROP FUNCTION df._signal_v1(uuid, text, text, text);
DROP FUNCTION df.instance_info(text);
DROP FUNCTION df.list_instances(text, integer);
DROP FUNCTION df.list_instances(text, integer, text, text);

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

CREATE FUNCTION df.instance_info(instance_id text)
RETURNS TABLE(instance_id text, label text, function_name text, function_version text,
              current_execution_id bigint, status text, output text, resource_version bigint,
              labels jsonb, annotations jsonb)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, '1.0.0'::text,
           i.execution_count, i.status,
           CASE WHEN i.status IN ('completed', 'failed') THEN i.output END,
           i.resource_version, i.labels, i.annotations
      FROM df.instances AS i
     WHERE i.id = instance_info.instance_id
$$;

CREATE FUNCTION df.list_instances(status_filter text DEFAULT NULL, limit_count integer DEFAULT 100)
RETURNS TABLE(instance_id text, label text, function_name text, status text, execution_count bigint,
              output text, resource_version bigint, labels jsonb, annotations jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM df._check_list_limit(limit_count);
    RETURN QUERY
    SELECT i.id::text, i.label, 'pg_durable::orchestration::execute-function-graph'::text, i.status,
           i.execution_count, CASE WHEN i.status IN ('completed', 'failed') THEN i.output END,
           i.resource_version, i.labels, i.annotations
      FROM df.instances AS i
     WHERE status_filter IS NULL OR i.status = status_filter
     ORDER BY i.created_at DESC
     LIMIT limit_count;
END
$$;

CREATE FUNCTION df.list_instances(status_filter text, limit_count integer, label_filter text,
                                  after_cursor text DEFAULT NULL)
RETURNS TABLE(instance_id text, label text, function_name text, status text, execution_count bigint,
              output text, created_at timestamptz, completed_at timestamptz, next_cursor text,
              resource_version bigint, labels jsonb, annotations jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_after_ts timestamptz;
    v_after_id text;
    v_next     text;
BEGIN
    PERFORM df._check_list_limit(limit_count);
    IF after_cursor IS NOT NULL THEN
        SELECT c.created_at, c.id INTO v_after_ts, v_after_id FROM df._decode_cursor(after_cursor) AS c;
    END IF;
    RETURN QUERY
    WITH page AS (
        SELECT i.*
          FROM df.instances AS i
         WHERE (status_filter IS NULL OR i.status = status_filter)
           AND (label_filter IS NULL OR i.label = label_filter)
           AND i.created_at IS NOT NULL
           AND (v_after_ts IS NULL OR i.created_at < v_after_ts
                OR (i.created_at = v_after_ts AND i.id > v_after_id))
         ORDER BY i.created_at DESC, i.id ASC
         LIMIT limit_count + 1
    ), numbered AS (
        SELECT p.*, pg_catalog.row_number() OVER (ORDER BY p.created_at DESC, p.id ASC) AS rn,
               pg_catalog.count(*) OVER () AS total
          FROM page AS p
    ), cursor_row AS (
        SELECT CASE WHEN n.total > limit_count THEN df._encode_cursor(n.created_at, n.id) END AS c
          FROM numbered AS n WHERE n.rn = LEAST(n.total, limit_count)
    )
    SELECT n.id::text, n.label, 'pg_durable::orchestration::execute-function-graph'::text, n.status,
           n.execution_count, CASE WHEN n.status IN ('completed', 'failed') THEN n.output END,
           n.created_at, n.completed_at, (SELECT cr.c FROM cursor_row AS cr), n.resource_version,
           n.labels, n.annotations
      FROM numbered AS n
     WHERE n.rn <= limit_count
     ORDER BY n.created_at DESC, n.id ASC;
END
$$;

CREATE OR REPLACE FUNCTION df.version() RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.2.0 (built 2026-11-23T00:00:00Z)'::text $$;

CREATE FUNCTION df._wait_begin_v1() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM df.waiters AS w
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = w.pid);
    INSERT INTO df.waiters (pid, backend_start)
    VALUES (pg_catalog.pg_backend_pid(),
            (SELECT a.backend_start FROM pg_catalog.pg_stat_activity AS a WHERE a.pid = pg_catalog.pg_backend_pid()))
    ON CONFLICT (pid) DO UPDATE SET backend_start = EXCLUDED.backend_start, since = pg_catalog.clock_timestamp();
$$;

CREATE FUNCTION df._wait_end_v1() RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ DELETE FROM df.waiters AS w WHERE w.pid = pg_catalog.pg_backend_pid(); $$;

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

CREATE OR REPLACE FUNCTION df._apply_v1(p_instance_id text, p_token uuid, p_updates jsonb, p_consume jsonb,
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

CREATE FUNCTION df._submitter_refusal_v1(p_instance_id text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df._submitter_refusal(i.submitted_by) FROM df.instances AS i WHERE i.id = p_instance_id $$;

CREATE OR REPLACE FUNCTION df._worker_heartbeat_v1(p_worker uuid, p_idle boolean) RETURNS integer
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

CREATE OR REPLACE FUNCTION df._checkpoint_v1(p_instance_id text, p_node_id text, p_secret text, p_result_text text,
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

CREATE OR REPLACE FUNCTION df._start_v1(p_ticket uuid, p_fut text, p_label text, p_database text, p_mode text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mode      text := pg_catalog.lower(p_mode);
    v_env       jsonb;
    v_graph     jsonb;
    v_caller    regrole;
    v_refusal   text;
    v_base      bigint := (pg_catalog.random() * 4294967296)::bigint % 4294967296;
    v_space     bigint := COALESCE(df._setting('id_space')::bigint, 4294967296);
    v_attempts  integer := COALESCE(df._setting('max_id_attempts')::integer, 10);
    v_id        varchar(8);
    v_try       integer;
BEGIN
    IF v_mode IS NULL OR v_mode NOT IN ('caller', 'new') THEN
        RAISE EXCEPTION 'invalid transaction_mode "%" for df.start(): expected ''caller'' or ''new''', p_mode
            USING ERRCODE = 'DF001';
    END IF;
    IF v_mode = 'new' THEN
        RAISE EXCEPTION 'df.start(): transaction_mode => ''new'' is not supported yet; use ''caller'' (the default)'
            USING ERRCODE = 'DF007';
    END IF;
    v_env := df._ensure_strict_v1(p_fut);
    IF p_database IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database AS d WHERE d.datname = p_database) THEN
        RAISE EXCEPTION 'database "%" does not exist', p_database USING ERRCODE = 'DF001';
    END IF;
    v_caller := df._caller(p_ticket);
    v_refusal := df._submitter_refusal(v_caller);
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION '%', v_refusal USING ERRCODE = 'DF005';
    END IF;

    -- Validate and flatten before anything is written (no temp table: a
    -- caller could plant one with a trigger that would run as the owner).
    SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(f)) INTO v_graph FROM df._flatten_v1(v_env) AS f;

    -- Claim an id: insert-on-conflict-do-nothing, re-rolled on collision.
    FOR v_try IN 1 .. v_attempts LOOP
        v_id := pg_catalog.lpad(pg_catalog.to_hex(((pg_catalog.random() * v_space)::bigint % v_space)), 8, '0');
        INSERT INTO df.instances AS i (id, label, root_node, status, submitted_by, database, transaction_mode)
        VALUES (v_id, p_label, df._node_id(v_base, 1), 'pending', v_caller, p_database, v_mode)
        ON CONFLICT (id) DO NOTHING
        RETURNING i.id INTO v_id;
        EXIT WHEN v_id IS NOT NULL;
    END LOOP;
    IF v_id IS NULL THEN
        -- The detail does not say how many ids are in use: that counts other roles' instances.
        RAISE EXCEPTION 'Failed to create instance: exhausted % attempts to find a free instance id', v_attempts
            USING ERRCODE = 'DF006',
                  DETAIL = pg_catalog.format('The id space holds %s ids and is nearly full '
                                             '(df.metrics() shows how full).', v_space),
                  HINT = 'Delete finished instances to free ids.';
    END IF;

    INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node,
                          submitted_by, database, parent_id, slot)
    SELECT df._node_id(v_base, g.ord), v_id, g.node_type,
           CASE
               WHEN g.cond_ord IS NOT NULL
                   THEN pg_catalog.json_build_object('condition_node', df._node_id(v_base, g.cond_ord))::text
               WHEN COALESCE(pg_catalog.cardinality(g.extra_ords), 0) > 0
                   THEN pg_catalog.json_build_object('extra_nodes',
                        (SELECT pg_catalog.array_agg(df._node_id(v_base, e) ORDER BY k)
                           FROM pg_catalog.unnest(g.extra_ords) WITH ORDINALITY AS x(e, k)))::text
               ELSE g.query
           END,
           g.result_name,
           CASE WHEN g.left_ord IS NOT NULL THEN df._node_id(v_base, g.left_ord) END,
           CASE WHEN g.right_ord IS NOT NULL THEN df._node_id(v_base, g.right_ord) END,
           v_caller, p_database,
           CASE WHEN g.parent_ord IS NOT NULL THEN df._node_id(v_base, g.parent_ord) END,
           g.slot
      FROM pg_catalog.jsonb_to_recordset(v_graph) AS g(ord integer, parent_ord integer, slot text,
               node_type text, query text, result_name text, left_ord integer, right_ord integer,
               cond_ord integer, extra_ords integer[]);

    INSERT INTO df.instance_vars (instance_id, name, value)
    SELECT v_id, v.name, v.value FROM df.vars AS v WHERE v.owner = v_caller AND v.value IS NOT NULL;

    INSERT INTO df.instance_queue (instance_id, wake_at) VALUES (v_id, pg_catalog.clock_timestamp());
    PERFORM df._wake_workers();
    RETURN v_id;
END
$$;

REVOKE EXECUTE ON FUNCTION df._submitter_refusal_v1(text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION df._submitter_refusal_v1(text) TO durable_worker;

-- ---------------------------------------------------------------------------
-- Compare-and-swap for clients (like HTTP If-Match) and instance metadata.
-- Every client-facing mutation takes an optional expected_resource_version:
-- when given, a mismatch raises DF004 naming the current version and changes
-- nothing; when NULL the change applies to the current version.
-- ---------------------------------------------------------------------------

CREATE FUNCTION df._expect_version(p_instance df.instances, p_expected bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_expected IS NOT NULL AND p_expected <> p_instance.resource_version THEN
        RAISE EXCEPTION 'resource_version mismatch for instance %: expected %, current %',
            p_instance.id, p_expected, p_instance.resource_version
            USING ERRCODE = 'DF004',
                  DETAIL = pg_catalog.format('current resource_version: %s', p_instance.resource_version),
                  HINT = 'Read the instance again and retry with its current resource_version.';
    END IF;
END
$$;

-- RFC 7386 JSON merge patch: objects merge key by key, null deletes a key,
-- anything else replaces.
CREATE FUNCTION df._merge_patch(p_target jsonb, p_patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
    v_key    text;
    v_value  jsonb;
BEGIN
    IF pg_catalog.jsonb_typeof(p_patch) IS DISTINCT FROM 'object' THEN
        RETURN p_patch;
    END IF;
    v_result := CASE WHEN pg_catalog.jsonb_typeof(p_target) = 'object' THEN p_target ELSE '{}'::jsonb END;
    FOR v_key, v_value IN SELECT e.key, e.value FROM pg_catalog.jsonb_each(p_patch) AS e LOOP
        IF pg_catalog.jsonb_typeof(v_value) = 'null' THEN
            v_result := v_result - v_key;
        ELSE
            v_result := pg_catalog.jsonb_set(v_result, ARRAY[v_key], df._merge_patch(v_result -> v_key, v_value));
        END IF;
    END LOOP;
    RETURN v_result;
END
$$;

CREATE FUNCTION df._set_metadata_v1(p_ticket uuid, p_instance_id text, p_patch jsonb, p_expected bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r       df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
    v_doc   jsonb;
    v_extra text;
    v_version bigint;
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF pg_catalog.jsonb_typeof(p_patch) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'df.set_metadata: patch must be a JSON object such as {"labels": {"team": "a"}}'
            USING ERRCODE = 'DF001';
    END IF;
    SELECT pg_catalog.string_agg(k, ', ') INTO v_extra
      FROM pg_catalog.jsonb_object_keys(p_patch) AS k WHERE k NOT IN ('labels', 'annotations');
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION 'df.set_metadata: only "labels" and "annotations" can be patched (got %)', v_extra
            USING ERRCODE = 'DF001';
    END IF;
    v_doc := df._merge_patch(pg_catalog.jsonb_build_object('labels', r.labels, 'annotations', r.annotations), p_patch);
    IF pg_catalog.jsonb_typeof(v_doc -> 'labels') IS DISTINCT FROM 'object'
       OR pg_catalog.jsonb_typeof(v_doc -> 'annotations') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'df.set_metadata: labels and annotations must stay JSON objects (use null to delete a key)'
            USING ERRCODE = 'DF001';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.jsonb_each(v_doc -> 'labels') AS e WHERE pg_catalog.jsonb_typeof(e.value) <> 'string') THEN
        RAISE EXCEPTION 'df.set_metadata: label values must be strings' USING ERRCODE = 'DF001';
    END IF;
    UPDATE df.instances AS i SET labels = v_doc -> 'labels', annotations = v_doc -> 'annotations'
     WHERE i.id = r.id
    RETURNING i.resource_version INTO v_version;
    RETURN v_version;
END
$$;

CREATE FUNCTION df.set_metadata(instance_id text, patch jsonb, expected_resource_version bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL OR patch IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN df._set_metadata_v1(df._ticket(), instance_id, patch, expected_resource_version);
END
$$;

CREATE FUNCTION df._delete_instance_v1(p_ticket uuid, p_instance_id text, p_expected bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r df.instances := df._own_instance(df._caller(p_ticket), p_instance_id);
BEGIN
    PERFORM df._expect_version(r, p_expected);
    IF r.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'Instance % is still %: cancel it or wait for it to finish before deleting it', r.id, r.status
            USING ERRCODE = 'DF001';
    END IF;
    DELETE FROM df.instances AS i WHERE i.id = r.id;
    RETURN true;
END
$$;

CREATE FUNCTION df.delete_instance(instance_id text, expected_resource_version bigint DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF instance_id IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN df._delete_instance_v1(df._ticket(), instance_id, expected_resource_version);
END
$$;


DO $acl$
DECLARE
    r     record;
    g     record;
    v_sig text;
BEGIN
    FOR r IN SELECT * FROM df.upgrade_saved_acl AS s WHERE s.acl IS NOT NULL LOOP
        v_sig := CASE r.name || '/' || r.nargs
            WHEN 'cancel/2' THEN 'df.cancel(text, text, bigint)'
            WHEN 'signal/3' THEN 'df.signal(text, text, text, bigint)'
            WHEN 'instance_info/1' THEN 'df.instance_info(text)'
            WHEN 'list_instances/2' THEN 'df.list_instances(text, integer)'
            WHEN 'list_instances/4' THEN 'df.list_instances(text, integer, text, text)'
        END;
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_sig);
        FOR g IN SELECT * FROM pg_catalog.aclexplode(r.acl) AS x
                  WHERE x.privilege_type = 'EXECUTE' AND x.grantee <> 'durable_owner'::regrole LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', v_sig,
                CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END
$acl$;
DROP TABLE df.upgrade_saved_acl;

RESET ROLE;
