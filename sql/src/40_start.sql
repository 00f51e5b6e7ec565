-- ---------------------------------------------------------------------------
-- df.start: validate the whole graph, claim an id, materialise the instance
-- and its nodes in the caller's transaction.
-- ---------------------------------------------------------------------------

-- Tell idle workers there is work, but only when someone listens: in
-- PostgreSQL 15 a NOTIFYing transaction takes a cluster-wide lock through its
-- commit.  The payload says nothing about whose work it is.
CREATE FUNCTION df._wake_workers() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM df.workers AS w
                WHERE w.idle AND w.last_seen_at > pg_catalog.clock_timestamp() - interval '2 minutes') THEN
        PERFORM pg_catalog.pg_notify('durable_work', '');
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION df._wake_workers() FROM PUBLIC;

CREATE FUNCTION df._start_v1(p_ticket uuid, p_fut text, p_label text, p_database text, p_mode text)
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

CREATE FUNCTION df.start(fut text, label text DEFAULT NULL, database text DEFAULT NULL,
                         transaction_mode text DEFAULT 'caller')
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF fut IS NULL THEN
        RAISE EXCEPTION 'Invalid durable function: fut cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    -- The ticket is inserted here, with the caller's own privileges: it is
    -- what tells the SECURITY DEFINER implementation who called.
    RETURN df._start_v1(df._ticket(), fut, label, database, transaction_mode);
END
$$;
