-- ---------------------------------------------------------------------------
-- Monitoring: df.instance_nodes (with inferred status), df.instance_executions,
-- df.metrics, df.explain.
--
-- The reads are SECURITY INVOKER: they read df.instances / df.nodes as the
-- caller, so row-level security decides what a role sees, and an unknown or
-- invisible instance gives no rows.  df.metrics is the one engine-wide
-- (SECURITY DEFINER) function; PUBLIC cannot execute it.
-- ---------------------------------------------------------------------------


-- The root-loop generation (execution) a node's status_details stamp belongs
-- to: the <gen> right after the instance id in "<id>::<gen>[::<child>::<gen>...]",
-- or NULL when the node carries no well-formed stamp.
CREATE FUNCTION df._stamp_execution_v1(p_status_details jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_status_details ->> 'execution_id' ~ '^[^:]+::[0-9]{1,18}(::[^:]+::[0-9]{1,18})*$'
                THEN pg_catalog.split_part(p_status_details ->> 'execution_id', '::', 2)::bigint END
$$;

-- ---------------------------------------------------------------------------
-- Inferred status (PGD_REFERENCE 3.2), the one implementation behind
-- df.instance_nodes and df.explain.
--
-- A stamp "<scope>::<gen>" names the generation of a scope (the instance id,
-- or "<parent scope>::<parent gen>::<child root node id>" for each JOIN/RACE
-- branch and non-root loop child).  A stamp is superseded when its gen is
-- below the highest gen stamped in its scope, or when any enclosing
-- "<scope>::<gen>" prefix is.  Walking down from the root we carry A, the
-- nearest terminal non-superseded ancestor, and G, the ancestor with the
-- highest gen:
--   terminal & current      -> stored status
--   terminal & superseded   -> 'skipped' (from A) if A, else 'pending' (from G)
--   not terminal            -> 'skipped' (from A) if A, else stored status
--   unreachable from root   -> stored status
-- So an untaken IF arm, the rest of a failed THEN, an unfinished RACE loser
-- and the unfinished siblings of a failed JOIN branch read 'skipped', and a
-- previous loop iteration reads 'pending' (the engine also resets a loop's
-- body to 'pending' when a new iteration starts, which reads the same).
-- 'skipped' is never stored.
--
-- Edges are the node's own child references (left, right, IF/LOOP
-- condition, JOIN extras) that point at a node whose parent_id is this
-- node, so every node is reached at most once and a damaged graph cannot
-- make the walk explode; a depth bound stops cycles.
-- ---------------------------------------------------------------------------
CREATE FUNCTION df._inferred_nodes_v1(instance_id text)
RETURNS TABLE(node_id text, node_type text, query text, result_name text, left_node text, right_node text,
              condition_node text, extra_nodes text[], status text, result jsonb, status_details jsonb,
              inferred_status text, inferred_status_from_ancestor_id text, updated_at timestamptz,
              resource_version bigint, result_text text)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
WITH RECURSIVE node AS MATERIALIZED (
    SELECT n.id::text AS id, n.parent_id::text AS parent_id, n.node_type, n.query, n.result_name,
           n.left_node::text AS left_node, n.right_node::text AS right_node,
           CASE WHEN n.node_type IN ('IF', 'LOOP')
                THEN pg_catalog.substring(n.query, '"condition_node"\s*:\s*"([0-9a-f]{8})"') END AS condition_node,
           CASE WHEN n.node_type = 'JOIN' THEN
               ARRAY(SELECT m.v[1]
                       FROM pg_catalog.regexp_matches(
                                pg_catalog.substring(n.query, '"extra_nodes"\s*:\s*\[([^]]*)\]'),
                                '"([0-9a-f]{8})"', 'g') WITH ORDINALITY AS m(v, k)
                      ORDER BY m.k)
           ELSE '{}'::text[] END AS extra_nodes,
           n.status, n.result, n.status_details, n.updated_at, n.resource_version, n.result_text,
           n.status IN ('completed', 'failed') AS terminal,
           CASE WHEN n.status_details ->> 'execution_id' ~ '^[^:]+::[0-9]{1,18}(::[^:]+::[0-9]{1,18})*$'
                THEN pg_catalog.string_to_array(n.status_details ->> 'execution_id', '::') END AS parts
      FROM df.nodes AS n
     WHERE n.instance_id = $1
), stamp AS (
    -- Every "<scope>::<gen>" level of every stamp; own = the node's own level.
    SELECT node.id, pg_catalog.array_to_string(node.parts[1:2 * j - 1], '::') AS scope,
           node.parts[2 * j]::bigint AS gen, j = pg_catalog.cardinality(node.parts) / 2 AS own
      FROM node, pg_catalog.generate_series(1, pg_catalog.cardinality(node.parts) / 2) AS j
     WHERE node.parts IS NOT NULL
), scope_max AS (
    SELECT s.scope, pg_catalog.max(s.gen) AS max_gen FROM stamp AS s WHERE s.own GROUP BY s.scope
), info AS MATERIALIZED (
    SELECT node.*, own.gen,
           EXISTS (SELECT 1 FROM stamp AS s JOIN scope_max AS m ON m.scope = s.scope
                    WHERE s.id = node.id AND s.gen < m.max_gen) AS superseded
      FROM node LEFT JOIN stamp AS own ON own.id = node.id AND own.own
), walk(id, a_id, g_id, g_gen, depth) AS (
    SELECT i.root_node::text, NULL::text, NULL::text, NULL::bigint, 0
      FROM df.instances AS i
     WHERE i.id = $1
    UNION ALL
    SELECT c.id,
           CASE WHEN p.terminal AND NOT p.superseded THEN p.id ELSE w.a_id END,
           CASE WHEN p.gen > COALESCE(w.g_gen, -1) THEN p.id ELSE w.g_id END,
           CASE WHEN p.gen > COALESCE(w.g_gen, -1) THEN p.gen ELSE w.g_gen END,
           w.depth + 1
      FROM walk AS w
      JOIN info AS p ON p.id = w.id
      JOIN info AS c ON c.parent_id = p.id
                    AND c.id = ANY (ARRAY[p.left_node, p.right_node, p.condition_node] || p.extra_nodes)
     WHERE w.depth < 10000
), reached AS (
    SELECT DISTINCT ON (w.id) w.* FROM walk AS w ORDER BY w.id, w.depth
)
SELECT i.id, i.node_type, i.query, i.result_name, i.left_node, i.right_node, i.condition_node, i.extra_nodes,
       i.status, i.result, i.status_details,
       CASE WHEN r.id IS NULL OR (i.terminal AND NOT i.superseded) THEN i.status
            WHEN r.a_id IS NOT NULL THEN 'skipped'
            WHEN i.terminal THEN 'pending'
            ELSE i.status END,
       CASE WHEN r.id IS NULL OR (i.terminal AND NOT i.superseded) THEN NULL
            WHEN r.a_id IS NOT NULL THEN r.a_id
            WHEN i.terminal THEN r.g_id END,
       i.updated_at, i.resource_version, i.result_text
  FROM info AS i
  LEFT JOIN reached AS r ON r.id = i.id
 ORDER BY r.depth NULLS LAST, i.id
$$;

CREATE FUNCTION df.instance_nodes(instance_id_param text)
RETURNS TABLE(node_id text, node_type text, query text, result_name text, left_node text, right_node text,
              status text, result text, status_details text, inferred_status text,
              inferred_status_from_ancestor_id text, updated_at timestamptz, resource_version bigint)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.node_id, n.node_type, n.query, n.result_name, n.left_node, n.right_node, n.status,
           n.result::text, n.status_details::text, n.inferred_status, n.inferred_status_from_ancestor_id,
           n.updated_at, n.resource_version
      FROM df._inferred_nodes_v1(instance_id_param) AS n
$$;

-- pg_durable's compatibility form: the argument is ignored, execution_id is always 1.
CREATE FUNCTION df.instance_nodes(instance_id_param text, _last_n_executions integer)
RETURNS TABLE(execution_id bigint, node_id text, node_type text, query text, result_name text, left_node text,
              right_node text, status text, result text, updated_at timestamptz)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 1::bigint, n.id::text, n.node_type, n.query, n.result_name, n.left_node::text, n.right_node::text,
           n.status, n.result::text, n.updated_at
      FROM df.nodes AS n
     WHERE n.instance_id = instance_id_param
$$;

-- ---------------------------------------------------------------------------
-- df.instance_executions: one row per execution (root-loop generation),
-- newest first.
--
-- Only the current generation (df.instances.execution_count) is kept in
-- detail: a new root-loop iteration resets the body's nodes.  So:
--   * the current execution: status from the instance (Running, Completed,
--     Failed, Cancelled); output as df.instance_info shows it; duration 0
--     while unfinished, else from its start to completed_at (updated_at for
--     failed/cancelled).  Its start: a root loop's iteration start (the
--     engine keeps it in the LOOP node's state.started_at); else created_at
--     for execution 1; else the earliest change of a node stamped with this
--     generation;
--     event_count = 1 (started) + 1 per node of this generation that started
--     + 1 per node that finished + 1 if the instance finished (nodes without
--     a stamp count for the current execution);
--   * earlier executions: status 'ContinuedAsNew', and event_count,
--     duration_ms and output NULL: they are not kept, and NULL says
--     "unknown" where a number would be made up;
--   * a pending instance (no worker has started it) has no execution yet.
-- ---------------------------------------------------------------------------
CREATE FUNCTION df.instance_executions(instance_id text, limit_count integer DEFAULT 5)
RETURNS TABLE(execution_id bigint, status text, event_count bigint, duration_ms bigint, output text)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r        df.instances;
    v_events bigint;
    v_start  timestamptz;
    v_loop   timestamptz;
    v_end    timestamptz;
BEGIN
    IF limit_count < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = 'DF009';
    END IF;
    IF limit_count > 10000 THEN
        RAISE EXCEPTION 'limit_count must be at most 10000' USING ERRCODE = 'DF009';
    END IF;
    SELECT * INTO r FROM df.instances AS i WHERE i.id = instance_executions.instance_id;
    IF NOT FOUND OR r.status = 'pending' THEN
        RETURN;
    END IF;

    SELECT 1 + pg_catalog.count(*) FILTER (WHERE n.status IN ('running', 'completed', 'failed'))
             + pg_catalog.count(*) FILTER (WHERE n.status IN ('completed', 'failed')),
           pg_catalog.min(n.updated_at)
      INTO v_events, v_start
      FROM df.nodes AS n
     WHERE n.instance_id = r.id
       AND COALESCE(df._stamp_execution_v1(n.status_details),
                    CASE WHEN n.status <> 'pending' THEN r.execution_count END) = r.execution_count;
    IF r.status IN ('completed', 'failed', 'cancelled') THEN
        v_events := v_events + 1;
        v_end := COALESCE(r.completed_at, r.updated_at);
    END IF;
    IF r.execution_count = 1 OR v_start IS NULL THEN
        v_start := r.created_at;
    END IF;
    SELECT (n.state ->> 'started_at')::timestamptz INTO v_loop
      FROM df.nodes AS n
     WHERE n.instance_id = r.id AND n.id = r.root_node AND n.node_type = 'LOOP'
       AND n.state ->> 'started_at' ~ '^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:\d\d)?|Z)$';
    v_start := COALESCE(v_loop, v_start);

    execution_id := r.execution_count;
    status := CASE r.status WHEN 'running' THEN 'Running' WHEN 'completed' THEN 'Completed'
                            WHEN 'failed' THEN 'Failed' WHEN 'cancelled' THEN 'Cancelled' ELSE r.status END;
    event_count := v_events;
    duration_ms := CASE WHEN v_end IS NULL THEN 0
                        ELSE GREATEST(0, pg_catalog.floor(EXTRACT(epoch FROM v_end - v_start) * 1000))::bigint END;
    output := CASE WHEN r.status IN ('completed', 'failed') THEN r.output END;
    RETURN NEXT;

    RETURN QUERY
    SELECT g, 'ContinuedAsNew'::text, NULL::bigint, NULL::bigint, NULL::text
      FROM pg_catalog.generate_series(r.execution_count - 1,
                                      GREATEST(1, r.execution_count - limit_count + 1), -1) AS g;
END
$$;

-- ---------------------------------------------------------------------------
-- df.metrics: engine-wide counts (SECURITY DEFINER; EXECUTE is granted only
-- through df.grant_usage(..., with_grant => true)).  Executions and events
-- are counted as df.instance_executions derives them (earlier executions'
-- events are unknown and not counted).  id_space_used: the fraction of the
-- 8-hex instance id space in use (CONTRACT.md 4).
-- ---------------------------------------------------------------------------
CREATE FUNCTION df.metrics()
RETURNS TABLE(total_instances bigint, running_instances bigint, completed_instances bigint,
              failed_instances bigint, total_executions bigint, total_events bigint, id_space_used numeric)
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH inst AS (
        SELECT pg_catalog.count(*) AS total,
               pg_catalog.count(*) FILTER (WHERE i.status = 'running') AS running,
               pg_catalog.count(*) FILTER (WHERE i.status = 'completed') AS completed,
               pg_catalog.count(*) FILTER (WHERE i.status = 'failed') AS failed,
               COALESCE(pg_catalog.sum(i.execution_count) FILTER (WHERE i.status <> 'pending'), 0)::bigint AS executions,
               pg_catalog.count(*) FILTER (WHERE i.status <> 'pending')
             + pg_catalog.count(*) FILTER (WHERE i.status IN ('completed', 'failed', 'cancelled')) AS events
          FROM df.instances AS i
    ), node AS (
        SELECT pg_catalog.count(*) FILTER (WHERE n.status IN ('running', 'completed', 'failed'))
             + pg_catalog.count(*) FILTER (WHERE n.status IN ('completed', 'failed')) AS events
          FROM df.nodes AS n
          JOIN df.instances AS i ON i.id = n.instance_id
         WHERE i.status <> 'pending'
           AND COALESCE(df._stamp_execution_v1(n.status_details),
                        CASE WHEN n.status <> 'pending' THEN i.execution_count END) = i.execution_count
    )
    SELECT inst.total, inst.running, inst.completed, inst.failed, inst.executions, inst.events + node.events,
           inst.total::numeric / COALESCE(df._setting('id_space')::numeric, 4294967296)
      FROM inst, node
$$;
REVOKE EXECUTE ON FUNCTION df.metrics() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- df.explain (PGD_REFERENCE 3.4, PGD_FIXTURES 3).  One difference from
-- pg_durable (CONTRACT.md 9): texts are cut by characters, not bytes, so
-- multi-byte text never makes it fail.
-- ---------------------------------------------------------------------------

-- Rust's char::is_whitespace set, for trim / trim_end.
CREATE FUNCTION df._explain_trim_v1(p_text text, p_both boolean) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.regexp_replace(
               CASE WHEN p_both
                    THEN pg_catalog.regexp_replace(p_text,
                             U&'^[\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000]+', '')
                    ELSE p_text END,
               U&'[\0009-\000D\0020\0085\00A0\1680\2000-\200A\2028\2029\202F\205F\3000]+$', '')
$$;

-- Cut a text to p_max characters: longer ones keep p_max - 3 and get "...".
CREATE FUNCTION df._explain_cut_v1(p_text text, p_max integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.length(p_text) > p_max THEN pg_catalog.left(p_text, p_max - 3) || '...'
                ELSE p_text END
$$;

-- The final layout: trim the end, split into lines, right-pad every line
-- to the longest line (in characters) + 4, join with \n.
CREATE FUNCTION df._explain_pad_v1(p_text text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH line AS (
        SELECT pg_catalog.regexp_replace(l.line, E'\r$', '') AS line, l.k
          FROM pg_catalog.string_to_table(df._explain_trim_v1(p_text, false), E'\n') WITH ORDINALITY AS l(line, k)
    ), width AS (
        SELECT pg_catalog.max(pg_catalog.length(line.line)) + 4 AS w FROM line
    )
    SELECT COALESCE(pg_catalog.string_agg(pg_catalog.rpad(line.line, width.w), E'\n' ORDER BY line.k), '')
      FROM line, width
$$;

-- A JSON object parsed from text, or NULL when it is not one.
CREATE FUNCTION df._explain_json_object_v1(p_text text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_text IS NULL OR pg_catalog.left(df._explain_trim_v1(p_text, true), 1) <> '{' THEN
        RETURN NULL;
    END IF;
    BEGIN
        v := p_text::jsonb;
    EXCEPTION WHEN data_exception THEN
        RETURN NULL;
    END;
    RETURN CASE WHEN pg_catalog.jsonb_typeof(v) = 'object' THEN v END;
END
$$;

-- The text of one node.  p_node: {"t": type, "q": query, "n": result_name,
-- "c": condition child or null, "x": [extra children], "m": marker or null}.
CREATE FUNCTION df._explain_label_v1(p_node jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_type  text := p_node ->> 't';
    v_query text := p_node ->> 'q';
    v_cfg   jsonb;
    v_text  text;
BEGIN
    IF v_type IN ('WAIT_SCHEDULE', 'SIGNAL', 'HTTP', 'HTTP_MULTIPART', 'BREAK') THEN
        v_cfg := df._explain_json_object_v1(v_query);
    END IF;
    v_text := CASE v_type
        WHEN 'SQL' THEN 'SQL: ' || df._explain_cut_v1(COALESCE(v_query, ''), 50)
        WHEN 'SLEEP' THEN 'SLEEP ' || COALESCE(v_query, '') || 's'
        WHEN 'WAIT_SCHEDULE' THEN 'WAIT ''' || COALESCE(v_cfg ->> 'cron_expr', v_query, '') || ''''
        WHEN 'HTTP' THEN 'HTTP ' || COALESCE(v_cfg ->> 'method', '') || ' '
                         || df._explain_cut_v1(COALESCE(v_cfg ->> 'url', ''), 40)
        WHEN 'HTTP_MULTIPART' THEN 'HTTP_MULTIPART ' || COALESCE(v_cfg ->> 'method', '') || ' '
                                   || COALESCE(v_cfg ->> 'url', '')
        WHEN 'SIGNAL' THEN 'SIGNAL ''' || COALESCE(v_cfg ->> 'signal_name', '') || ''''
                           || COALESCE(' (' || (v_cfg ->> 'timeout_seconds') || 's)', '')
        WHEN 'LOOP' THEN CASE WHEN p_node ->> 'c' IS NOT NULL THEN 'LOOP (while)' ELSE 'LOOP (infinite)' END
        WHEN 'BREAK' THEN 'BREAK' || COALESCE(' ''' || df._explain_cut_v1(v_cfg ->> 'break_value', 20) || '''', '')
        WHEN 'JOIN' THEN 'JOIN (' || (2 + CASE WHEN pg_catalog.jsonb_typeof(p_node -> 'x') = 'array'
                                               THEN pg_catalog.jsonb_array_length(p_node -> 'x') ELSE 0 END) || ')'
        ELSE COALESCE(v_type, '?')
    END;
    IF v_type IS DISTINCT FROM 'RACE' AND p_node ->> 'n' IS NOT NULL THEN
        v_text := v_text || ' |=> ''' || (p_node ->> 'n') || '''';
    END IF;
    IF p_node ->> 'm' IS NOT NULL THEN
        v_text := v_text || ' ' || (p_node ->> 'm');
    END IF;
    RETURN v_text;
END
$$;

-- The tree as lines (not yet padded).  p_nodes maps a node key to its
-- p_node object (see df._explain_label_v1) plus "l", "r": left/right keys.
-- Iterative (an explicit stack), so deep graphs cost no recursion.
--   * THEN chains are flattened: the first item takes the THEN's connector,
--     the others "→ "; an item's own children sit at the THEN's prefix + 4.
--   * Any other node: prefix + connector ("" at the root, "└─" last,
--     "├─" not last) + text; its children at "    " (root), else prefix +
--     "    " (last) or "│   " (not last), in labelled blocks whose child is
--     2 further in: LOOP "↻ body:" / "? while:", IF "? condition:" (not for
--     if_rows) / "✓ then:" / "✗ else:", JOIN/RACE "║ branch <n>:".
CREATE FUNCTION df._explain_tree_v1(p_nodes jsonb, p_root text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- the stack: kind 'N' node (key, prefix, last, root), 'C' children block (key, prefix), 'L' line (text)
    s_kind   text[] := ARRAY['N'];
    s_key    text[] := ARRAY[p_root];
    s_text   text[] := ARRAY[''];
    s_last   boolean[] := ARRAY[true];
    s_root   boolean[] := ARRAY[true];
    v_top    integer := 1;
    -- the tasks one step produces, in order (pushed reversed)
    t_kind   text[];
    t_key    text[];
    t_text   text[];
    t_last   boolean[];
    v_lines  text[] := '{}';
    v_budget integer := 2 * (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(p_nodes)) + 16;
    v_kind   text;
    v_key    text;
    v_prefix text;
    v_last   boolean;
    v_root   boolean;
    v_node   jsonb;
    v_type   text;
    v_conn   text;
    v_items  text[];
    v_todo   text[];
    v_item   text;
    v_kids   text[];
    i        integer;
BEGIN
    WHILE v_top > 0 LOOP
        v_kind := s_kind[v_top]; v_key := s_key[v_top]; v_prefix := s_text[v_top];
        v_last := s_last[v_top]; v_root := s_root[v_top];
        v_top := v_top - 1;
        IF v_kind = 'L' THEN
            v_lines := v_lines || v_prefix;
            CONTINUE;
        END IF;
        v_node := p_nodes -> v_key;
        CONTINUE WHEN v_node IS NULL;
        v_budget := v_budget - 1;
        EXIT WHEN v_budget < 0;
        v_type := v_node ->> 't';
        v_conn := CASE WHEN v_root THEN '' WHEN v_last THEN '└─' ELSE '├─' END;
        t_kind := '{}'; t_key := '{}'; t_text := '{}'; t_last := '{}';

        IF v_kind = 'N' AND v_type = 'THEN' THEN
            -- flatten the chain, left to right
            v_items := '{}';
            v_todo := ARRAY[v_key];
            WHILE pg_catalog.cardinality(v_todo) > 0 AND v_budget >= 0 LOOP
                v_item := v_todo[pg_catalog.cardinality(v_todo)];
                v_todo := v_todo[1:pg_catalog.cardinality(v_todo) - 1];
                CONTINUE WHEN p_nodes -> v_item IS NULL;
                IF p_nodes -> v_item ->> 't' = 'THEN' THEN
                    v_budget := v_budget - 1;
                    v_todo := v_todo || pg_catalog.array_remove(ARRAY[p_nodes -> v_item ->> 'r', p_nodes -> v_item ->> 'l'], NULL);
                ELSE
                    v_items := v_items || v_item;
                END IF;
            END LOOP;
            FOR i IN 1 .. COALESCE(pg_catalog.cardinality(v_items), 0) LOOP
                t_kind := t_kind || 'L'::text; t_key := t_key || NULL::text; t_last := t_last || false;
                t_text := t_text || (v_prefix || CASE WHEN i = 1 THEN v_conn ELSE '→ ' END
                                     || df._explain_label_v1(p_nodes -> v_items[i]));
                IF p_nodes -> v_items[i] ->> 't' IN ('LOOP', 'IF', 'JOIN', 'RACE') THEN
                    t_kind := t_kind || 'C'::text; t_key := t_key || v_items[i]; t_last := t_last || false;
                    t_text := t_text || (v_prefix || '    ');
                END IF;
            END LOOP;
        ELSIF v_kind = 'N' THEN
            v_lines := v_lines || (v_prefix || v_conn || df._explain_label_v1(v_node));
            IF v_type IN ('LOOP', 'IF', 'JOIN', 'RACE') THEN
                t_kind := ARRAY['C']; t_key := ARRAY[v_key]; t_last := ARRAY[false];
                t_text := ARRAY[CASE WHEN v_root THEN '    '
                                     ELSE v_prefix || CASE WHEN v_last THEN '    ' ELSE '│   ' END END];
            END IF;
        ELSE
            -- a children block at prefix v_prefix
            IF v_type = 'LOOP' THEN
                t_kind := ARRAY['L', 'N']; t_key := ARRAY[NULL, v_node ->> 'l'];
                t_text := ARRAY[v_prefix || '↻ body:', v_prefix || '  ']; t_last := ARRAY[false, true];
                IF v_node ->> 'c' IS NOT NULL THEN
                    t_kind := t_kind || ARRAY['L', 'N']; t_key := t_key || ARRAY[NULL, v_node ->> 'c'];
                    t_text := t_text || ARRAY[v_prefix || '? while:', v_prefix || '  '];
                    t_last := t_last || ARRAY[false, true];
                END IF;
            ELSIF v_type = 'IF' THEN
                IF v_node ->> 'c' IS NOT NULL THEN
                    t_kind := ARRAY['L', 'N']; t_key := ARRAY[NULL, v_node ->> 'c'];
                    t_text := ARRAY[v_prefix || '? condition:', v_prefix || '  ']; t_last := ARRAY[false, true];
                END IF;
                t_kind := t_kind || ARRAY['L', 'N', 'L', 'N'];
                t_key := t_key || ARRAY[NULL, v_node ->> 'l', NULL, v_node ->> 'r'];
                t_text := t_text || ARRAY[v_prefix || '✓ then:', v_prefix || '  ', v_prefix || '✗ else:', v_prefix || '  '];
                t_last := t_last || ARRAY[false, true, false, true];
            ELSE
                -- JOIN / RACE branches: left, right, then extras (JOIN)
                v_kids := ARRAY[v_node ->> 'l', v_node ->> 'r'];
                IF v_type = 'JOIN' AND pg_catalog.jsonb_typeof(v_node -> 'x') = 'array' THEN
                    v_kids := v_kids || ARRAY(SELECT e.v FROM pg_catalog.jsonb_array_elements_text(v_node -> 'x')
                                                            WITH ORDINALITY AS e(v, k) ORDER BY e.k);
                END IF;
                FOR i IN 1 .. pg_catalog.cardinality(v_kids) LOOP
                    t_kind := t_kind || ARRAY['L', 'N']; t_key := t_key || ARRAY[NULL, v_kids[i]];
                    t_text := t_text || ARRAY[v_prefix || '║ branch ' || i || ':', v_prefix || '  '];
                    t_last := t_last || ARRAY[false, i = pg_catalog.cardinality(v_kids)];
                END LOOP;
            END IF;
        END IF;

        FOR i IN REVERSE COALESCE(pg_catalog.cardinality(t_kind), 0) .. 1 LOOP
            v_top := v_top + 1;
            s_kind[v_top] := t_kind[i]; s_key[v_top] := t_key[i]; s_text[v_top] := t_text[i];
            s_last[v_top] := t_last[i]; s_root[v_top] := false;
        END LOOP;
    END LOOP;
    RETURN v_lines;
END
$$;

-- The p_nodes map of df._explain_tree_v1 from an instance's stored nodes;
-- with markers (instance mode) or without (the graph df.start stored).
CREATE FUNCTION df._explain_stored_nodes_v1(p_instance_id text, p_markers boolean) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_object_agg(n.node_id, pg_catalog.jsonb_build_object(
               't', n.node_type, 'q', n.query, 'n', n.result_name, 'l', n.left_node, 'r', n.right_node,
               'c', n.condition_node, 'x', pg_catalog.to_jsonb(n.extra_nodes),
               'm', CASE WHEN p_markers THEN
                        CASE n.inferred_status WHEN 'completed' THEN '✓' WHEN 'failed' THEN '✗'
                             WHEN 'running' THEN '⏳' WHEN 'pending' THEN '○' WHEN 'skipped' THEN '⊘' END
                    END))
      FROM df._inferred_nodes_v1(p_instance_id) AS n
$$;

-- Dry run of an envelope: validate and flatten it exactly as df.start would
-- (df._flatten_v1), then draw it.  A graph error comes back as text.
CREATE FUNCTION df._explain_envelope_v1(p_envelope jsonb) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_nodes jsonb;
    v_root  text;
BEGIN
    BEGIN
        SELECT pg_catalog.jsonb_object_agg(f.ord::text, pg_catalog.jsonb_build_object(
                   't', f.node_type, 'q', f.query, 'n', f.result_name,
                   'l', f.left_ord::text, 'r', f.right_ord::text, 'c', f.cond_ord::text,
                   'x', (SELECT pg_catalog.jsonb_agg(e.v::text ORDER BY e.k)
                           FROM pg_catalog.unnest(f.extra_ords) WITH ORDINALITY AS e(v, k)),
                   'm', NULL)),
               pg_catalog.min(f.ord) FILTER (WHERE f.parent_ord IS NULL)::text
          INTO v_nodes, v_root
          FROM df._flatten_v1(p_envelope) AS f;
    EXCEPTION WHEN SQLSTATE 'DF002' THEN
        RETURN SQLERRM;
    END;
    RETURN df._explain_pad_v1(pg_catalog.array_to_string(df._explain_tree_v1(v_nodes, v_root), E'\n'));
END
$$;

-- Instance mode: header, blank line, tree with inferred-status markers.
-- The Status line shows what pg_durable's engine would report (Running,
-- Completed, Failed, Cancelled) once a worker has picked the instance up,
-- and the df status ('pending') before; Output is df.instance_info's.
CREATE FUNCTION df._explain_instance_v1(p_instance_id text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r       df.instances;
    v_nodes jsonb;
    v_head  text;
BEGIN
    SELECT * INTO r FROM df.instances AS i WHERE i.id = p_instance_id;
    IF NOT FOUND THEN
        RETURN pg_catalog.format('Instance ''%s'' not found', p_instance_id);
    END IF;
    v_nodes := df._explain_stored_nodes_v1(r.id, true);
    IF v_nodes IS NULL THEN
        RETURN pg_catalog.format('No nodes found for instance ''%s''', r.id);
    END IF;
    v_head := 'Instance: ' || r.id || COALESCE(' (' || r.label || ')', '') || E'\n'
           || 'Status:   ' || CASE r.status
                  WHEN 'completed' THEN '✓ Completed'
                  WHEN 'failed' THEN '✗ Failed'
                  WHEN 'cancelled' THEN '✗ Cancelled'
                  WHEN 'running' THEN '⏳ Running'
                  ELSE '○ ' || COALESCE(r.status, '') END || E'\n'
           || CASE WHEN r.status IN ('completed', 'failed') AND r.output IS NOT NULL
                   THEN 'Output:   ' || df._explain_cut_v1(r.output, 60) || E'\n' ELSE '' END
           || E'\n';
    RETURN df._explain_pad_v1(v_head || pg_catalog.array_to_string(df._explain_tree_v1(v_nodes, r.root_node), E'\n'));
END
$$;

-- df.explain(input).  Dispatch on the trimmed input:
--   8 hex characters         -> the instance, with inferred statuses
--   an envelope              -> dry run
--   ~> |=> ?> !> @> or "df." -> evaluate SELECT <input> as the caller, then dry run
--   a leading SQL keyword    -> one SQL node
--   else                     -> "Cannot explain input: ..."
-- The evaluation runs in a subtransaction that is always rolled back, so
-- whatever the expression wrote (df.start(...) included) is undone: when it
-- returns the id of an instance it started, the answer is the graph that
-- instance would have run.
CREATE FUNCTION df.explain(input text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_in      text := df._explain_trim_v1(input, true);
    v_env     jsonb;
    v_value   text;
    v_graph   jsonb;
    v_started text;
    v_done    boolean := false;
BEGIN
    IF v_in ~ '^[0-9a-fA-F]{8}$' THEN
        RETURN df._explain_instance_v1(v_in);
    END IF;

    v_env := df._explain_json_object_v1(v_in);
    IF pg_catalog.jsonb_typeof(v_env -> 'node_type') = 'string' THEN
        RETURN df._explain_envelope_v1(v_env);
    END IF;

    IF pg_catalog.strpos(v_in, '~>') > 0 OR pg_catalog.strpos(v_in, '|=>') > 0 OR pg_catalog.strpos(v_in, '?>') > 0
       OR pg_catalog.strpos(v_in, '!>') > 0 OR pg_catalog.strpos(v_in, '@>') > 0
       OR pg_catalog.strpos(v_in, 'df.') > 0 THEN
        BEGIN
            -- The caller's expression, with the caller's rights; names
            -- resolve as under a default search_path (the DSL operators live
            -- in pg_catalog, or in public where the installer was not a superuser).
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, "$user", public, pg_temp', true);
            EXECUTE 'SELECT ' || v_in INTO v_value;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            IF v_value ~ '^[0-9a-f]{8}$' THEN
                v_graph := df._explain_stored_nodes_v1(v_value, false);
                IF v_graph IS NOT NULL THEN
                    v_started := df._explain_pad_v1(pg_catalog.array_to_string(df._explain_tree_v1(
                        v_graph, (SELECT i.root_node::text FROM df.instances AS i WHERE i.id = v_value)), E'\n'));
                END IF;
            END IF;
            v_done := true;
            -- Undo everything the expression did.
            RAISE EXCEPTION 'durable: df.explain rollback' USING ERRCODE = 'DF099';
        EXCEPTION WHEN SQLSTATE 'DF099' THEN
            IF NOT v_done THEN
                RAISE;
            END IF;
        END;
        IF v_value IS NULL THEN
            RETURN 'Expression returned NULL';
        END IF;
        IF v_started IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM df.instances AS i WHERE i.id = v_value) THEN
            RETURN v_started;
        END IF;
        v_env := df._explain_json_object_v1(v_value);
        IF pg_catalog.jsonb_typeof(v_env -> 'node_type') = 'string' THEN
            RETURN df._explain_envelope_v1(v_env);
        END IF;
        -- Any other text is what df.start would run it as: one SQL step.
        RETURN df._explain_envelope_v1(pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', v_value));
    END IF;

    IF pg_catalog.upper(v_in) ~ '^(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|CALL|DO|TRUNCATE|GRANT|REVOKE|EXPLAIN) ' THEN
        RETURN df._explain_envelope_v1(pg_catalog.jsonb_build_object('node_type', 'SQL', 'query', v_in));
    END IF;

    RETURN 'Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.'
        || E'\n' || 'Hint: DSL expressions use df.*() functions and operators like ~>, |=>, &, |.';
END
$$;

-- The underscore helpers above keep PUBLIC EXECUTE: they are SECURITY
-- INVOKER (row-level security applies) and the public functions call them
-- as the caller.
