-- ---------------------------------------------------------------------------
-- Reads (SECURITY INVOKER: row-level security decides what a role sees) and
-- the small control functions: status, result, instance_info, list_instances,
-- await_instance, version, target_database, run.  The ones clients poll are
-- PL/pgSQL (0.3.0), whose plans are kept: a LANGUAGE sql function with a SET
-- clause is planned again at every call.
-- ---------------------------------------------------------------------------

CREATE FUNCTION df.status(instance_id text) RETURNS text
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT i.status FROM df.instances AS i WHERE i.id = status.instance_id);
END
$$;

CREATE FUNCTION df.result(instance_id text) RETURNS text
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

-- The list page cap (an owner-only setting) for the list functions, which run as the caller.
CREATE FUNCTION df._list_max_limit() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT COALESCE((SELECT s.value::integer FROM df.settings AS s WHERE s.key = 'list_instances_max_limit'), 1000) $$;

CREATE FUNCTION df._check_list_limit(p_limit integer) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max integer := df._list_max_limit();
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'limit_count must be at least 1' USING ERRCODE = 'DF009';
    END IF;
    IF p_limit > v_max THEN
        RAISE EXCEPTION 'df.list_instances: limit_count (%) exceeds pg_durable.list_instances_max_limit (%); '
                        'use a smaller limit_count and page with after_cursor', p_limit, v_max
            USING ERRCODE = 'DF009';
    END IF;
END
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

-- Keyset cursor: lowercase hex of 'v1|<created_at in the session time zone>|<id>'.
CREATE FUNCTION df._encode_cursor(p_created_at timestamptz, p_id text) RETURNS text
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.encode(pg_catalog.convert_to(
        'v1|' || pg_catalog.to_char(p_created_at, 'YYYY-MM-DD"T"HH24:MI:SS.USOF') || '|' || p_id, 'UTF8'), 'hex')
$$;

CREATE FUNCTION df._decode_cursor(p_cursor text, OUT created_at timestamptz, OUT id text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_raw   text;
    v_parts text[];
BEGIN
    IF p_cursor IS NULL OR p_cursor = '' OR pg_catalog.length(p_cursor) > 512
       OR pg_catalog.length(p_cursor) % 2 <> 0 OR p_cursor !~ '^[0-9a-fA-F]+$' THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END IF;
    BEGIN
        v_raw := pg_catalog.convert_from(pg_catalog.decode(pg_catalog.lower(p_cursor), 'hex'), 'UTF8');
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END;
    v_parts := pg_catalog.string_to_array(v_raw, '|');
    IF pg_catalog.cardinality(v_parts) <> 3 OR v_parts[1] <> 'v1' OR v_parts[2] = '' OR v_parts[3] = ''
       OR v_parts[2] !~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d(:\d\d)?$' THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END IF;
    BEGIN
        created_at := v_parts[2]::timestamptz;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'df.list_instances: invalid after_cursor' USING ERRCODE = 'DF010';
    END;
    id := v_parts[3];
END
$$;

-- Pages follow the index order (created_at DESC, id): the keyset condition
-- "after (ts, id)" is written as created_at <= ts AND (created_at < ts OR
-- id > id), whose first half is an index condition, so a deep page reads
-- only its own rows.  Planned for each call's values (custom plan): the
-- status and label filters then use their indexes too.
CREATE FUNCTION df.list_instances(status_filter text, limit_count integer, label_filter text,
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

CREATE FUNCTION df.version() RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.3.0 (built 2026-11-23T00:00:00Z)'::text $$;

CREATE FUNCTION df.target_database() RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.current_database()::text $$;

-- pg_durable's no-op nudge; here it makes the instance due now.
CREATE FUNCTION df._run_v1(p_ticket uuid, p_instance_id text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_caller regrole := df._caller(p_ticket);
BEGIN
    UPDATE df.instance_queue AS q SET wake_at = pg_catalog.clock_timestamp()
      FROM df.instances AS i
     WHERE q.instance_id = i.id AND i.submitted_by = v_caller
       AND (p_instance_id IS NULL OR i.id = p_instance_id);
    PERFORM df._wake_workers();
END
$$;

CREATE FUNCTION df.run(instance_id text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM df._run_v1(df._ticket(), instance_id);
    IF instance_id IS NULL THEN
        RETURN 'Triggered run for all pending instances';
    END IF;
    RETURN 'Triggered run for instance: ' || instance_id;
END
$$;
