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

-- start rate and list page (issue 10)
CREATE OR REPLACE FUNCTION df._setting(p_key text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT s.value FROM df.settings AS s WHERE s.key = p_key);
END
$$;

CREATE OR REPLACE FUNCTION df._flatten_v1(fut jsonb)
RETURNS TABLE(ord integer, parent_ord integer, slot text, depth integer, path text, node_type text, query text,
              result_name text, left_ord integer, right_ord integer, cond_ord integer, extra_ords integer[])
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The nodes still to visit, with what their rows need from their parent; the top is [v_top].
    s_node jsonb[] := ARRAY[fut];
    s_parent integer[] := ARRAY[NULL::integer];
    s_slot text[] := ARRAY[NULL::text];
    s_path text[] := ARRAY['root'];
    s_depth integer[] := ARRAY[0];
    v_top integer := 1;
    v_n integer := 0;
    -- The node being visited.
    v jsonb;
    v_parent integer;
    v_slot text;
    v_path text;
    v_depth integer;
    v_ntj jsonb;
    v_nt text;
    v_q text;
    v_rn text;
    v_xj jsonb;
    v_has_l boolean;
    v_has_r boolean;
    v_has_c boolean;
    v_extra integer;
    v_err text;
    i integer;
    -- The output columns by ord.
    a_parent integer[] := '{}';
    a_slot text[] := '{}';
    a_depth integer[] := '{}';
    a_path text[] := '{}';
    a_type text[] := '{}';
    a_query text[] := '{}';
    a_name text[] := '{}';
    a_left integer[] := '{}';
    a_right integer[] := '{}';
    a_cond integer[] := '{}';
    a_extra text[] := '{}';             -- comma lists, in ord order
BEGIN
    WHILE v_top > 0 LOOP
        v := s_node[v_top];
        v_parent := s_parent[v_top];
        v_slot := s_slot[v_top];
        v_path := s_path[v_top];
        v_depth := s_depth[v_top];
        v_top := v_top - 1;
        v_n := v_n + 1;

        v_ntj := v -> 'node_type';
        v_nt := v ->> 'node_type';
        v_q := v ->> 'query';
        v_rn := v ->> 'result_name';
        v_xj := v -> 'extra_nodes';
        v_has_l := COALESCE(v ? 'left_node' AND NOT v @> '{"left_node": null}', false);
        v_has_r := COALESCE(v ? 'right_node' AND NOT v @> '{"right_node": null}', false);
        v_has_c := COALESCE(v ? 'condition_node' AND NOT v @> '{"condition_node": null}', false);
        v_extra := CASE WHEN pg_catalog.jsonb_typeof(v_xj) = 'array' THEN pg_catalog.jsonb_array_length(v_xj) ELSE 0 END;
        -- A valid SQL leaf or THEN node (what most graphs are made of) skips
        -- the full check, which finds nothing wrong with either.  Not for the
        -- walk's own speed: PL/pgSQL builds an expression's state the first
        -- time it runs in each transaction, a start is mostly a transaction of
        -- its own, and building that CASE cost more than walking a small graph
        -- (0.3.0).  Anything else, or anything NULL here, takes the full check.
        -- v_err is NULL here: a node it was set for raised below.
        IF (v_depth <= 256 AND v_xj IS NULL AND NOT v_has_c AND v_rn IS NULL
                AND CASE v_nt WHEN 'SQL' THEN NOT (v_has_l OR v_has_r)
                                             AND pg_catalog.jsonb_typeof(v -> 'query') = 'string'
                              WHEN 'THEN' THEN v_has_l AND v_has_r AND NOT v ? 'query'
                              ELSE false END) IS NOT TRUE THEN
            v_err := CASE
                WHEN v_depth > 256 THEN
                    'Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into '
                    'multiple instances.'
                WHEN pg_catalog.jsonb_typeof(v) <> 'object' THEN
                    CASE WHEN v_slot = 'condition' THEN 'condition_node must be a Durofut JSON object'
                         WHEN v_slot LIKE 'extra%' THEN 'extra_nodes entries must be Durofut JSON objects'
                         ELSE 'Durofut children must be JSON objects' END
                WHEN v_ntj IS NULL THEN
                    'Malformed Durofut JSON: missing field `node_type`'
                WHEN pg_catalog.jsonb_typeof(v_ntj) <> 'string' THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1(v_ntj::text) || ', expected a string'
                WHEN v_xj IS NOT NULL AND pg_catalog.jsonb_typeof(v_xj) <> 'array' THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1(v_xj::text) || ', expected a sequence'
                WHEN pg_catalog.jsonb_typeof(v -> 'query') NOT IN ('string', 'null') THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1((v -> 'query')::text)
                    || ', expected a string'
                WHEN pg_catalog.jsonb_typeof(v -> 'result_name') NOT IN ('string', 'null') THEN
                    'Malformed Durofut JSON: invalid type: ' || df._serde_unexpected_v1((v -> 'result_name')::text)
                    || ', expected a string'
                WHEN v_nt NOT IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP',
                                  'HTTP_MULTIPART', 'SIGNAL') THEN
                    'Unknown node_type ''' || v_nt || '''. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, '
                    'SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL'
                WHEN v_has_c AND v_nt NOT IN ('IF', 'LOOP') THEN
                    'condition_node is only allowed on IF and LOOP nodes'
                WHEN v_extra > 0 AND v_nt <> 'JOIN' THEN
                    'extra_nodes is only allowed on JOIN nodes'
                WHEN v_nt IN ('THEN', 'RACE', 'JOIN', 'IF') AND NOT (v_has_l AND v_has_r) THEN
                    v_nt || ' node requires left_node and right_node'
                WHEN v_nt = 'IF' AND NOT v_has_c AND NOT df._is_if_rows_config_v1(v_q) THEN
                    'IF node requires condition_node or a result_has_rows query'
                WHEN v_nt = 'LOOP' AND NOT v_has_l THEN
                    'LOOP node requires left_node'
                WHEN v_nt = 'LOOP' AND v_has_r THEN
                    'LOOP node must not have right_node'
                WHEN v_nt NOT IN ('THEN', 'RACE', 'JOIN', 'IF', 'LOOP') AND (v_has_l OR v_has_r) THEN
                    v_nt || ' node must not have left_node or right_node'
                WHEN v_nt NOT IN ('THEN', 'RACE', 'JOIN', 'IF', 'LOOP') AND v_q IS NULL THEN
                    v_nt || ' node requires a query'
                WHEN v_rn = '' THEN
                    'result name cannot be empty'
                WHEN v_rn !~ '^[a-zA-Z_][a-zA-Z0-9_]*$' THEN
                    'result name ''' || v_rn || ''' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*'
                END;
        END IF;
        IF v_err IS NOT NULL THEN
            RAISE EXCEPTION 'Invalid durable function graph: %: %', v_path, v_err USING ERRCODE = 'DF002';
        END IF;
        IF v_n > 10000 THEN
            RAISE EXCEPTION 'Invalid durable function graph: root: Workflow exceeds maximum node count of 10000. '
                            'Simplify the workflow or break it into multiple instances.'
                USING ERRCODE = 'DF002';
        END IF;

        a_parent[v_n] := v_parent;
        a_slot[v_n] := v_slot;
        a_depth[v_n] := v_depth;
        a_path[v_n] := v_path;
        a_type[v_n] := v_nt;
        a_query[v_n] := CASE WHEN v_nt IN ('SQL', 'BREAK', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP', 'HTTP_MULTIPART', 'SIGNAL')
                                  OR (v_nt = 'IF' AND NOT v_has_c) THEN v_q END;
        a_name[v_n] := v_rn;
        IF v_slot = 'left' THEN
            a_left[v_parent] := v_n;
        ELSIF v_slot = 'right' THEN
            a_right[v_parent] := v_n;
        ELSIF v_slot = 'condition' THEN
            a_cond[v_parent] := v_n;
        ELSIF v_slot LIKE 'extra%' THEN
            a_extra[v_parent] := COALESCE(a_extra[v_parent] || ',', '') || v_n;
        END IF;

        -- The children, pushed last first so that they pop in pre-order.  An extra node that could
        -- only pop after the 10,001st node is never pushed: a wide extra_nodes costs no more memory
        -- than the nodes the walk can reach.
        FOR i IN REVERSE LEAST(v_extra, 10001 - v_n) .. 1 LOOP
            v_top := v_top + 1;
            s_node[v_top] := v_xj -> (i - 1);
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'extra' || i;
            s_path[v_top] := v_path || '.extra_nodes[' || (i - 1) || ']';
            s_depth[v_top] := v_depth + 1;
        END LOOP;
        IF v_has_c THEN
            v_top := v_top + 1;
            s_node[v_top] := v -> 'condition_node';
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'condition';
            s_path[v_top] := v_path || '.condition_node';
            s_depth[v_top] := v_depth + 1;
        END IF;
        IF v_has_r THEN
            v_top := v_top + 1;
            s_node[v_top] := v -> 'right_node';
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'right';
            s_path[v_top] := v_path || '.right';
            s_depth[v_top] := v_depth + 1;
        END IF;
        IF v_has_l THEN
            v_top := v_top + 1;
            s_node[v_top] := v -> 'left_node';
            s_parent[v_top] := v_n;
            s_slot[v_top] := 'left';
            s_path[v_top] := v_path || '.left';
            s_depth[v_top] := v_depth + 1;
        END IF;
    END LOOP;
    FOR i IN 1 .. v_n LOOP
        ord := i;
        parent_ord := a_parent[i];
        slot := a_slot[i];
        depth := a_depth[i];
        path := a_path[i];
        node_type := a_type[i];
        query := a_query[i];
        result_name := a_name[i];
        left_ord := a_left[i];
        right_ord := a_right[i];
        cond_ord := a_cond[i];
        extra_ords := pg_catalog.string_to_array(a_extra[i], ',')::integer[];
        RETURN NEXT;
    END LOOP;
END
$$;

DROP FUNCTION df._node_id(bigint, integer);

CREATE OR REPLACE FUNCTION df._start_v1(p_ticket uuid, p_fut text, p_label text, p_database text, p_mode text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mode      text := pg_catalog.lower(p_mode);
    v_env       jsonb;
    v_caller    regrole;
    v_refusal   text;
    v_base      bigint := (pg_catalog.random() * 4294967296)::bigint % 4294967296;
    v_space     bigint := COALESCE(df._setting('id_space')::bigint, 4294967296);
    v_attempts  integer := COALESCE(df._setting('max_id_attempts')::integer, 10);
    v_version   bigint;
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

    -- Claim an id: insert-on-conflict-do-nothing, re-rolled on collision.
    -- Every row of the instance starts at one version (0.3.0: the rows'
    -- version trigger then has nothing to do; one clock read, not one per
    -- row).  The root is node 1 (ids below).
    v_version := df._initial_version();
    FOR v_try IN 1 .. v_attempts LOOP
        v_id := pg_catalog.lpad(pg_catalog.to_hex(((pg_catalog.random() * v_space)::bigint % v_space)), 8, '0');
        INSERT INTO df.instances AS i (id, label, root_node, status, submitted_by, database, transaction_mode,
                                       resource_version)
        VALUES (v_id, p_label, pg_catalog.lpad(pg_catalog.to_hex((v_base + 2654435761) % 4294967296), 8, '0'),
                'pending', v_caller, p_database, v_mode, v_version)
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

    -- The graph is validated and flattened by the same statement that writes
    -- its rows (0.3.0: no pass to collect them first); an invalid graph
    -- raises there, and the caller's transaction loses the instance row too.
    -- No temp table anywhere: a caller could plant one with a trigger that
    -- would run as the owner.  Node ids: a random base walked by an odd
    -- multiplier modulo 2^32 is a bijection, so the ids of one instance are
    -- distinct and look random.  Node k (pre-order, from 1) is
    -- lpad(to_hex((base + k * 2654435761) % 2^32), 8, '0'), written out: a
    -- function call per id cost more than the rest of the row.
    INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node,
                          submitted_by, database, parent_id, slot, resource_version)
    SELECT pg_catalog.lpad(pg_catalog.to_hex((v_base + f.ord::bigint * 2654435761) % 4294967296), 8, '0'),
           v_id,
           f.node_type,
           CASE
           WHEN f.cond_ord IS NOT NULL
               THEN pg_catalog.json_build_object('condition_node', pg_catalog.lpad(pg_catalog.to_hex(
                        (v_base + f.cond_ord::bigint * 2654435761) % 4294967296), 8, '0'))::text
           WHEN COALESCE(pg_catalog.cardinality(f.extra_ords), 0) > 0
               THEN pg_catalog.json_build_object('extra_nodes',
                    (SELECT pg_catalog.array_agg(pg_catalog.lpad(pg_catalog.to_hex(
                                (v_base + x.e::bigint * 2654435761) % 4294967296), 8, '0') ORDER BY x.k)
                       FROM pg_catalog.unnest(f.extra_ords) WITH ORDINALITY AS x(e, k)))::text
           ELSE f.query
           END,
           f.result_name,
           pg_catalog.lpad(pg_catalog.to_hex((v_base + f.left_ord::bigint * 2654435761) % 4294967296), 8, '0'),
           pg_catalog.lpad(pg_catalog.to_hex((v_base + f.right_ord::bigint * 2654435761) % 4294967296), 8, '0'),
           v_caller,
           p_database,
           pg_catalog.lpad(pg_catalog.to_hex((v_base + f.parent_ord::bigint * 2654435761) % 4294967296), 8, '0'),
           f.slot,
           v_version
      FROM df._flatten_v1(v_env) AS f;

    INSERT INTO df.instance_vars (instance_id, name, value)
    SELECT v_id, v.name, v.value FROM df.vars AS v WHERE v.owner = v_caller AND v.value IS NOT NULL;

    INSERT INTO df.instance_queue (instance_id, wake_at) VALUES (v_id, pg_catalog.clock_timestamp());
    PERFORM df._wake_workers();
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION df.list_instances(status_filter text, limit_count integer, label_filter text,
                                  after_cursor text DEFAULT NULL)
RETURNS TABLE(instance_id text, label text, function_name text, status text, execution_count bigint,
              output text, created_at timestamptz, completed_at timestamptz, next_cursor text,
              resource_version bigint, labels jsonb, annotations jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan
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
           AND i.created_at <= COALESCE(v_after_ts, 'infinity'::timestamptz)
           AND (v_after_ts IS NULL OR i.created_at < v_after_ts OR i.id > v_after_id)
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
AS $$ SELECT '0.3.0 (built 2026-11-23T00:00:00Z)'::text $$;

-- worker: the set-based API (issue 10)
ALTER TABLE df.attempts ADD COLUMN bind_hash bytea;
DROP INDEX df.idx_attempts_backend;
ALTER TABLE df.attempts SET (fillfactor = 50);
ALTER TABLE df.waiters SET UNLOGGED;
-- Room on each page for the updates a step makes (HOT: no index entries); rows already stored keep
-- their pages until they are rewritten.
ALTER TABLE df.nodes SET (fillfactor = 60);
ALTER TABLE df.instance_queue SET (fillfactor = 50);

-- PL/pgSQL (0.3.0): its plan is cached; a LANGUAGE sql function with a SET
-- clause is planned again at every call, and the worker's calls use it often.
CREATE OR REPLACE FUNCTION df._now() RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN COALESCE((SELECT s.value::timestamptz FROM df.settings AS s WHERE s.key = 'fake_now'), pg_catalog.now());
END
$$;

CREATE OR REPLACE FUNCTION df._in_workflow() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The backend's start time guards against a pid reused by a later session.  An attempt bound in
    -- the step's own transaction (0.3.0) records no start time: it counts only in that transaction.
    RETURN EXISTS (
        SELECT 1 FROM df.attempts AS a
         WHERE a.backend_pid = pg_catalog.pg_backend_pid()
           AND (a.backend_start IS NOT DISTINCT FROM (SELECT s.backend_start FROM pg_catalog.pg_stat_activity AS s
                                                       WHERE s.pid = pg_catalog.pg_backend_pid())
                OR (a.backend_start IS NULL AND a.bind_hash IS NULL
                    AND a.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()))));
END
$$;

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

-- start rate (issue 10): the root's common case parsed once, a walk instead of a recursive CTE,
-- one read of the role.
CREATE OR REPLACE FUNCTION df._ensure_strict_v1(fut text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
    v jsonb;
    v_members bigint;
    v_drop text[];
BEGIN
    IF fut IS NULL THEN
        RAISE EXCEPTION 'Invalid durable function: fut cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    -- The common case first (0.3.0): an envelope as the operators write it,
    -- JSON whose root repeats no member and whose fields have the types serde
    -- wants.  Less what the strict parse below leaves out (unknown and null
    -- members, an empty extra_nodes), its jsonb is the envelope that parse
    -- would build.  Anything else, even what only jsonb rejects, takes the
    -- strict parse for its exact verdict.
    IF pg_catalog.left(fut, 1) = '{' THEN
        BEGIN
            v := fut::jsonb;
        EXCEPTION WHEN OTHERS THEN
            v := NULL;
        END;
        IF pg_catalog.jsonb_typeof(v -> 'node_type') = 'string'
           AND v ->> 'node_type' IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE',
                                     'HTTP', 'HTTP_MULTIPART', 'SIGNAL')
           AND COALESCE(pg_catalog.jsonb_typeof(v -> 'query'), 'null') IN ('string', 'null')
           AND COALESCE(pg_catalog.jsonb_typeof(v -> 'result_name'), 'null') IN ('string', 'null')
           AND COALESCE(pg_catalog.jsonb_typeof(v -> 'extra_nodes'), 'array') = 'array' THEN
            SELECT pg_catalog.count(*),
                   pg_catalog.array_agg(e.key) FILTER (
                       WHERE e.key NOT IN ('node_type', 'left_node', 'right_node', 'condition_node', 'extra_nodes',
                                           'query', 'result_name')
                          OR e.value = 'null'::jsonb OR (e.key = 'extra_nodes' AND e.value = '[]'::jsonb))
              INTO v_members, v_drop
              FROM pg_catalog.jsonb_each(v) AS e;
            IF v_members = (SELECT pg_catalog.count(*) FROM pg_catalog.json_object_keys(fut::json)) THEN
                RETURN CASE WHEN v_drop IS NULL THEN v ELSE v - v_drop END;
            END IF;
        END IF;
    END IF;
    SELECT * INTO p FROM df._parse_durofut_v1(fut);
    IF p.kind = 'envelope' THEN
        RETURN df._durofut_json_v1(p.node_type, p.left_node, p.right_node, p.condition_node, p.extra_nodes,
                                   p.query, p.result_name)::jsonb;
    ELSIF p.kind = 'malformed' THEN
        RAISE EXCEPTION 'Invalid durable function: Malformed Durofut JSON with node_type ''%'': %', p.node_type, p.detail
            USING ERRCODE = 'DF001';
    ELSIF p.kind = 'unknown' THEN
        RAISE EXCEPTION 'Invalid durable function: Unknown node_type ''%''. Valid types: SQL, THEN, IF, JOIN, LOOP, '
                        'BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL', p.node_type
            USING ERRCODE = 'DF001';
    END IF;
    RETURN pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', fut);
END
$$;

CREATE OR REPLACE FUNCTION df._submitter_refusal(p_role regrole) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    -- One read answers every question for an ordinary role (0.3.0: this runs
    -- at every start and every attempt).  Named columns, not pg_roles.*: the
    -- view's join for rolconfig is then left out.
    SELECT a.rolname, a.rolcanlogin, a.rolsuper, a.rolbypassrls,
           pg_catalog.pg_has_role(a.oid, 'durable_owner', 'MEMBER')
               OR pg_catalog.pg_has_role(a.oid, 'durable_worker', 'MEMBER') AS engine_role,
           EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS s
                    WHERE (s.rolsuper OR s.rolbypassrls) AND s.oid <> a.oid
                      AND pg_catalog.pg_has_role(a.oid, s.oid, 'MEMBER')) AS privileged_member
      INTO r
      FROM pg_catalog.pg_roles AS a
     WHERE a.oid = p_role::oid;
    IF NOT FOUND THEN
        RETURN 'submitted_by role no longer exists in pg_roles';
    ELSIF NOT r.rolcanlogin THEN
        RETURN pg_catalog.format('current_user "%s" does not have LOGIN privilege. '
            'durable runs workflow steps as the submitting role, which must be able to log in.', r.rolname);
    ELSIF r.rolsuper THEN
        IF COALESCE(df._setting('enable_superuser_instances'), 'off') <> 'on' THEN
            RETURN pg_catalog.format('durable: superuser instances are disabled. current_user "%s" is a superuser, '
                'but the enable_superuser_instances setting is off. Set it to on in df.settings to allow this.',
                r.rolname);
        END IF;
        RETURN NULL;
    ELSIF r.rolbypassrls THEN
        RETURN pg_catalog.format('durable: role "%s" has BYPASSRLS and cannot submit workflows', r.rolname);
    ELSIF r.engine_role THEN
        RETURN pg_catalog.format('durable: role "%s" is (a member of) the durable owner or worker role '
            'and cannot submit workflows', r.rolname);
    ELSIF r.privileged_member THEN
        RETURN pg_catalog.format('durable: role "%s" is a member of a superuser or BYPASSRLS role '
            'and cannot submit workflows', r.rolname);
    END IF;
    RETURN NULL;
END
$$;

-- The version triggers run only where the statement did not do their work itself: a new row's
-- first version comes from its writer when it gives one (df.start does), and the worker's updates
-- set resource_version + 1 and updated_at = now().
DROP TRIGGER instances_version ON df.instances;
DROP TRIGGER nodes_version ON df.nodes;
CREATE TRIGGER instances_version BEFORE UPDATE ON df.instances
    FOR EACH ROW WHEN (NEW.resource_version IS DISTINCT FROM OLD.resource_version + 1
                       OR NEW.updated_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION df._bump_version();
CREATE TRIGGER instances_version_new BEFORE INSERT ON df.instances
    FOR EACH ROW WHEN (NEW.resource_version IS NULL) EXECUTE FUNCTION df._bump_version();
CREATE TRIGGER nodes_version BEFORE UPDATE ON df.nodes
    FOR EACH ROW WHEN (NEW.resource_version IS DISTINCT FROM OLD.resource_version + 1
                       OR NEW.updated_at IS DISTINCT FROM pg_catalog.now())
    EXECUTE FUNCTION df._bump_version();
CREATE TRIGGER nodes_version_new BEFORE INSERT ON df.nodes
    FOR EACH ROW WHEN (NEW.resource_version IS NULL) EXECUTE FUNCTION df._bump_version();
DROP TRIGGER instances_terminal ON df.instances;
CREATE TRIGGER instances_terminal BEFORE UPDATE OF status ON df.instances
    FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION df._guard_terminal();


-- Functions clients call often (status, result, waiting, variables, in_workflow) in PL/pgSQL,
-- which keeps their plans: a LANGUAGE sql function with a SET clause is planned at every call.
CREATE OR REPLACE FUNCTION df.status(instance_id text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT i.status FROM df.instances AS i WHERE i.id = status.instance_id);
END
$$;

CREATE OR REPLACE FUNCTION df.result(instance_id text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT n.result::text
              FROM df.instances AS i
              JOIN df.nodes AS n ON n.instance_id = i.id AND n.id = i.root_node
             WHERE i.id = result.instance_id AND n.status = 'completed');
END
$$;

CREATE OR REPLACE FUNCTION df.in_workflow() RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._in_workflow();
END
$$;

CREATE OR REPLACE FUNCTION df.getvar(name text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT v.value FROM df.vars AS v
             WHERE v.owner = pg_catalog.quote_ident(current_user)::regrole AND v.name = getvar.name);
END
$$;

CREATE OR REPLACE FUNCTION df._wait_begin_v1() RETURNS void
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

CREATE OR REPLACE FUNCTION df._wait_end_v1() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM df.waiters AS w WHERE w.pid = pg_catalog.pg_backend_pid();
END
$$;

REVOKE EXECUTE ON FUNCTION df._take_attempts_v1(text, text[], text[], text[], boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION df._snapshot(text[], jsonb), df._claim_v2(uuid, integer), df._load_v2(text[]),
    df._nudges_v2(text[]), df._advance_v2(uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION df._claim_v2(uuid, integer), df._load_v2(text[]), df._nudges_v2(text[]),
    df._advance_v2(uuid, jsonb) TO durable_worker;

RESET ROLE;
