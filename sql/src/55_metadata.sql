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
