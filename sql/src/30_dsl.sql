-- ---------------------------------------------------------------------------
-- The workflow DSL: builders, operator helpers, envelope parsing and graph
-- flattening.  Builders only build text envelopes (they write nothing); the
-- bytes are pg_durable 0.2.6's (PGD_FIXTURES.md sections 0-2):
--   R-JSON  compact, escapes exactly as PostgreSQL's to_json(text) does;
--   R-KEYS  node_type, left_node, right_node, condition_node, extra_nodes,
--           query, result_name;
--   R-CHILD a composer re-serialises only the top level of an envelope it
--           receives; that envelope's children are copied byte for byte.
-- R-CHILD needs the raw text of each top-level member: the json type (not
-- jsonb) keeps it, so json_each() is our scanner, in C.
-- ---------------------------------------------------------------------------

-- ----- JSON helpers (serde_json's renderings) ------------------------------

-- A JSON number as serde_json prints it after parsing: integers that fit
-- u64/i64 unchanged, everything else through f64 in ryu's shortest form
-- (1.50 -> 1.5, 1e2 -> 100.0, 1e20 -> 1e20).  PostgreSQL's float8 output
-- with extra_float_digits >= 1 gives the same shortest digits.
CREATE FUNCTION df._json_number_v1(p_num text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
AS $$
DECLARE
    m text[];
    v_sign text;
    v_digits text;
    v_exp integer;
    v_len integer;
    v_kk integer;
BEGIN
    IF p_num ~ '^-?[0-9]+$' THEN
        IF p_num = '-0' THEN
            RETURN '-0.0';              -- serde_json reads "-0" as the float -0.0
        END IF;
        IF p_num::numeric BETWEEN -9223372036854775808 AND 18446744073709551615 THEN
            RETURN p_num::numeric::text;
        END IF;
    END IF;
    m := pg_catalog.regexp_match(p_num::double precision::text,
                                 '^(-?)([0-9]+)(?:\.([0-9]+))?(?:e([-+][0-9]+))?$');
    v_sign := m[1];
    v_digits := m[2] || COALESCE(m[3], '');
    v_exp := COALESCE(m[4]::integer, 0) - pg_catalog.length(COALESCE(m[3], ''));
    v_digits := pg_catalog.ltrim(v_digits, '0');
    IF v_digits = '' THEN
        RETURN v_sign || '0.0';
    END IF;
    v_len := pg_catalog.length(v_digits);
    v_digits := pg_catalog.rtrim(v_digits, '0');
    v_exp := v_exp + v_len - pg_catalog.length(v_digits);
    v_len := pg_catalog.length(v_digits);
    v_kk := v_len + v_exp;
    IF v_exp >= 0 AND v_kk <= 16 THEN
        RETURN v_sign || v_digits || pg_catalog.repeat('0', v_exp) || '.0';
    ELSIF v_kk > 0 AND v_kk <= 16 THEN
        RETURN v_sign || pg_catalog.left(v_digits, v_kk) || '.' || pg_catalog.substr(v_digits, v_kk + 1);
    ELSIF v_kk > -5 AND v_kk <= 0 THEN
        RETURN v_sign || '0.' || pg_catalog.repeat('0', -v_kk) || v_digits;
    ELSIF v_len = 1 THEN
        RETURN v_sign || v_digits || 'e' || (v_kk - 1);
    END IF;
    RETURN v_sign || pg_catalog.left(v_digits, 1) || '.' || pg_catalog.substr(v_digits, 2) || 'e' || (v_kk - 1);
END
$$;

-- A jsonb value as serde_json's compact output of it (R-JSONB-IN): jsonb's
-- key order, no spaces, numbers through _json_number_v1.
CREATE FUNCTION df._json_compact_v1(p_value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    CASE pg_catalog.jsonb_typeof(p_value)
    WHEN 'object' THEN
        RETURN '{' || COALESCE((SELECT pg_catalog.string_agg(pg_catalog.to_json(e.key)::text || ':'
                                                             || df._json_compact_v1(e.value), ',' ORDER BY e.o)
                                  FROM pg_catalog.jsonb_each(p_value) WITH ORDINALITY AS e(key, value, o)), '') || '}';
    WHEN 'array' THEN
        RETURN '[' || COALESCE((SELECT pg_catalog.string_agg(df._json_compact_v1(e.value), ',' ORDER BY e.o)
                                  FROM pg_catalog.jsonb_array_elements(p_value) WITH ORDINALITY AS e(value, o)), '')
                   || ']';
    WHEN 'number' THEN
        RETURN df._json_number_v1(p_value::text);
    ELSE
        RETURN p_value::text;           -- strings (same escapes as serde_json), true, false, null
    END CASE;
END
$$;

-- serde_json's description of an unexpected value, for deserialisation
-- errors ("invalid type: <this>, expected a string").
CREATE FUNCTION df._serde_unexpected_v1(p_raw text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_head text := pg_catalog.left(p_raw, 1);
    v_str text;
    v_num text;
    i integer;
BEGIN
    IF v_head = '"' THEN
        -- Rust's Debug rendering of a str.
        v_str := pg_catalog.replace(pg_catalog.replace(p_raw::json #>> '{}', '\', '\\'), '"', '\"');
        v_str := pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(v_str,
                     E'\n', '\n'), E'\r', '\r'), E'\t', '\t');
        FOR i IN 1 .. 127 LOOP
            CONTINUE WHEN i BETWEEN 32 AND 126 OR i IN (9, 10, 13);
            v_str := pg_catalog.replace(v_str, pg_catalog.chr(i), '\u{' || pg_catalog.to_hex(i) || '}');
        END LOOP;
        RETURN 'string "' || v_str || '"';
    ELSIF v_head = '{' THEN
        RETURN 'map';
    ELSIF v_head = '[' THEN
        RETURN 'sequence';
    ELSIF p_raw IN ('true', 'false') THEN
        RETURN 'boolean `' || p_raw || '`';
    ELSIF p_raw = 'null' THEN
        RETURN 'null';
    END IF;
    v_num := df._json_number_v1(p_raw);
    IF v_num ~ '[.e]' THEN
        RETURN 'floating point `' || v_num || '`';
    END IF;
    RETURN 'integer `' || v_num || '`';
END
$$;

-- serde_json's " at line L column C" for an error in member p_member of the
-- top-level object p_text (p_values: the members' raw values in order):
-- p_where 'key' = just after the member's key, 'value_start' = at its value
-- (containers are not consumed), 'value_end' = after its value.  Column
-- counts bytes since the last newline.  Only used on the error path.
CREATE FUNCTION df._serde_position_v1(p_text text, p_values text[], p_member integer, p_where text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pos integer := pg_catalog.strpos(p_text, '{') + 1;
    v_at integer;
    v_prefix text;
    i integer;
BEGIN
    FOR i IN 1 .. p_member LOOP
        v_pos := v_pos + pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_pos), E'^[ \t\n\r,]*'));
        v_pos := v_pos + pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_pos),
                                                                '^"(?:[^"\\]|\\.)*"'));
        IF i = p_member AND p_where = 'key' THEN
            v_at := v_pos;
            EXIT;
        END IF;
        v_pos := v_pos + pg_catalog.length(pg_catalog.substring(pg_catalog.substr(p_text, v_pos),
                                                                E'^[ \t\n\r]*:[ \t\n\r]*'));
        IF i = p_member AND p_where = 'value_start' THEN
            v_at := v_pos;
            EXIT;
        END IF;
        v_pos := v_pos + pg_catalog.length(p_values[i]);
        v_at := v_pos;
    END LOOP;
    v_prefix := pg_catalog.substr(p_text, 1, v_at - 1);
    RETURN ' at line ' || (1 + pg_catalog.length(v_prefix) - pg_catalog.length(pg_catalog.replace(v_prefix, E'\n', '')))
        || ' column ' || pg_catalog.octet_length(pg_catalog.regexp_replace(v_prefix, E'^.*\n', ''));
END
$$;

-- ----- Helpers that are not workflow steps (fixture X11) --------------------
-- pg_durable refuses, after df.setvar & co ran in a statement, any later
-- non-JSON step argument of that statement.  We refuse only the value the
-- helper actually returned (CONTRACT.md section 9).  The record lives in a
-- transaction-local custom setting keyed by backend and statement; it only
-- ever makes a builder raise, so a user forging it harms only themselves.

-- Record that helper p_helper (e.g. 'df.setvar') returned p_value in this
-- statement, and return p_value.  df.await_instance & co call it too.
CREATE FUNCTION df._note_step_helper_v1(p_helper text, p_value text) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stmt text := pg_catalog.pg_backend_pid()::text || '@'
                   || EXTRACT(EPOCH FROM pg_catalog.statement_timestamp())::text;
    v_cur text := pg_catalog.current_setting('durable.step_helpers', true);
    v_map jsonb := '{}';
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    END IF;
    IF pg_catalog.starts_with(v_cur, v_stmt || '|') THEN
        v_map := pg_catalog.substr(v_cur, pg_catalog.length(v_stmt) + 2)::jsonb;
    END IF;
    PERFORM pg_catalog.set_config('durable.step_helpers',
        v_stmt || '|' || (v_map || pg_catalog.jsonb_build_object(p_value, p_helper))::text, true);
    RETURN p_value;
END
$$;

-- Raise X11 when p_text is what a helper returned earlier in this statement.
CREATE FUNCTION df._check_step_arg_v1(p_text text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stmt text := pg_catalog.pg_backend_pid()::text || '@'
                   || EXTRACT(EPOCH FROM pg_catalog.statement_timestamp())::text;
    v_cur text := pg_catalog.current_setting('durable.step_helpers', true);
    v_helper text;
BEGIN
    IF pg_catalog.starts_with(v_cur, v_stmt || '|') THEN
        v_helper := pg_catalog.substr(v_cur, pg_catalog.length(v_stmt) + 2)::jsonb ->> p_text;
        IF v_helper IS NOT NULL THEN
            RAISE EXCEPTION '% cannot be used as a workflow step. Call % before df.start().', v_helper, v_helper
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
END
$$;

-- ----- Envelopes -----------------------------------------------------------

-- Parse a step argument (PGD_REFERENCE.md 2.2).  kind:
--   'text'      not an envelope (plain text, invalid JSON, JSON that is not
--               an object or has no string node_type): an SQL step;
--   'malformed' string node_type but it does not deserialise (detail =
--               serde_json's message);
--   'unknown'   deserialises, but node_type is not one of the 12 types;
--   'envelope'  node_type decoded; children and extra_nodes are raw JSON
--               texts; query and result_name are canonical JSON strings.
-- JSON null members count as absent, like serde's Option.
CREATE FUNCTION df._parse_durofut_v1(p_text text,
    OUT kind text, OUT node_type text, OUT left_node text, OUT right_node text, OUT condition_node text,
    OUT extra_nodes text[], OUT query text, OUT result_name text, OUT detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_head text := pg_catalog.left(p_text, 1);
    v_json json;
    v_keys text[];
    v_vals text[];
    v_n integer;
    v_nt text;
    v_seen text[] := '{}';
    v_err text;
    v_where text;
    v_at integer;
    k text;
    r text;
    c text;
    i integer;
BEGIN
    IF v_head = '{' OR (v_head IN (' ', E'\t', E'\n', E'\r') AND pg_catalog.ltrim(p_text, E' \t\n\r') LIKE '{%') THEN
        BEGIN
            v_json := p_text::json;
        EXCEPTION WHEN invalid_text_representation THEN
            v_json := NULL;
        END;
    END IF;
    IF v_json IS NOT NULL THEN
        SELECT pg_catalog.array_agg(e.key ORDER BY e.o), pg_catalog.array_agg(e.value::text ORDER BY e.o)
          INTO v_keys, v_vals
          FROM pg_catalog.json_each(v_json) WITH ORDINALITY AS e(key, value, o);
        v_n := COALESCE(pg_catalog.array_length(v_keys, 1), 0);
        -- serde_json's Value keeps the last of duplicate keys.
        FOR i IN REVERSE v_n .. 1 LOOP
            IF v_keys[i] = 'node_type' THEN
                v_nt := v_vals[i];
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF v_nt IS NULL OR pg_catalog.left(v_nt, 1) <> '"' THEN
        IF pg_catalog.current_setting('durable.step_helpers', true) <> '' THEN
            PERFORM df._check_step_arg_v1(p_text);
        END IF;
        kind := 'text';
        RETURN;
    END IF;
    node_type := CASE WHEN pg_catalog.strpos(v_nt, '\') = 0 THEN pg_catalog.substr(v_nt, 2, pg_catalog.length(v_nt) - 2)
                      ELSE v_nt::json #>> '{}' END;

    -- Deserialise into the Durofut struct as serde derive does: members in
    -- order, a repeated field is an error, unknown members are ignored.
    FOR i IN 1 .. v_n LOOP
        k := v_keys[i];
        CONTINUE WHEN k NOT IN ('node_type', 'left_node', 'right_node', 'condition_node', 'extra_nodes',
                                'query', 'result_name');
        r := v_vals[i];
        c := pg_catalog.left(r, 1);
        IF k = ANY (v_seen) THEN
            v_err := 'duplicate field `' || k || '`';
            v_where := 'key';
        ELSIF (k = 'node_type' AND c <> '"') OR (k IN ('query', 'result_name') AND c <> '"' AND r <> 'null') THEN
            v_err := 'invalid type: ' || df._serde_unexpected_v1(r) || ', expected a string';
        ELSIF k = 'extra_nodes' AND c <> '[' THEN
            v_err := 'invalid type: ' || df._serde_unexpected_v1(r) || ', expected a sequence';
        END IF;
        IF v_err IS NOT NULL THEN
            v_where := COALESCE(v_where, CASE WHEN c IN ('{', '[') THEN 'value_start' ELSE 'value_end' END);
            v_at := i;
            EXIT;
        END IF;
        v_seen := v_seen || k;
        IF r = 'null' THEN
            CONTINUE;
        END IF;
        CASE k
        WHEN 'left_node' THEN
            left_node := r;
        WHEN 'right_node' THEN
            right_node := r;
        WHEN 'condition_node' THEN
            condition_node := r;
        WHEN 'extra_nodes' THEN
            SELECT pg_catalog.array_agg(e.value::text ORDER BY e.o) INTO extra_nodes
              FROM pg_catalog.json_array_elements(r::json) WITH ORDINALITY AS e(value, o);
        WHEN 'query' THEN
            query := CASE WHEN pg_catalog.strpos(r, '\u') = 0 AND pg_catalog.strpos(r, '\/') = 0 THEN r
                          ELSE pg_catalog.to_json(r::json #>> '{}')::text END;
        WHEN 'result_name' THEN
            result_name := CASE WHEN pg_catalog.strpos(r, '\u') = 0 AND pg_catalog.strpos(r, '\/') = 0 THEN r
                                ELSE pg_catalog.to_json(r::json #>> '{}')::text END;
        ELSE
            NULL;
        END CASE;
    END LOOP;

    IF v_err IS NOT NULL THEN
        kind := 'malformed';
        detail := v_err || df._serde_position_v1(p_text, v_vals, v_at, v_where);
    ELSIF node_type IN ('SQL', 'THEN', 'IF', 'JOIN', 'LOOP', 'BREAK', 'RACE', 'SLEEP', 'WAIT_SCHEDULE', 'HTTP',
                        'HTTP_MULTIPART', 'SIGNAL') THEN
        kind := 'envelope';
    ELSE
        kind := 'unknown';
    END IF;
END
$$;

-- An envelope from its parts (R-KEYS): children raw, query and result_name
-- already JSON strings.
CREATE FUNCTION df._durofut_json_v1(p_node_type text, p_left text, p_right text, p_condition text,
                                    p_extra text[], p_query text, p_result_name text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN '{"node_type":' || pg_catalog.to_json(p_node_type)::text
        || COALESCE(',"left_node":' || p_left, '')
        || COALESCE(',"right_node":' || p_right, '')
        || COALESCE(',"condition_node":' || p_condition, '')
        || CASE WHEN pg_catalog.cardinality(p_extra) > 0
                THEN ',"extra_nodes":[' || pg_catalog.array_to_string(p_extra, ',') || ']' ELSE '' END
        || COALESCE(',"query":' || p_query, '')
        || COALESCE(',"result_name":' || p_result_name, '')
        || '}';
END
$$;

-- A composer's view of a step argument (pg_durable's Durofut::ensure): the
-- canonical envelope text to embed as a child.
CREATE FUNCTION df._ensure_v1(p_text text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_head text := pg_catalog.left(p_text, 1);
    p record;
BEGIN
    IF v_head NOT IN ('{', ' ', E'\t', E'\n', E'\r') OR v_head = '' THEN
        -- The common case, plain SQL text: no parsing.
        IF pg_catalog.current_setting('durable.step_helpers', true) <> '' THEN
            PERFORM df._check_step_arg_v1(p_text);
        END IF;
        RETURN '{"node_type":"SQL","query":' || pg_catalog.to_json(p_text)::text || '}';
    END IF;
    SELECT * INTO p FROM df._parse_durofut_v1(p_text);
    IF p.kind = 'envelope' THEN
        RETURN df._durofut_json_v1(p.node_type, p.left_node, p.right_node, p.condition_node, p.extra_nodes,
                                   p.query, p.result_name);
    ELSIF p.kind = 'malformed' THEN
        RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: %', p.detail
            USING ERRCODE = 'DF001';
    END IF;
    RETURN '{"node_type":"SQL","query":' || pg_catalog.to_json(p_text)::text || '}';
END
$$;

-- The root-level strict parse df.start does (pg_durable's ensure_strict).
CREATE FUNCTION df._ensure_strict_v1(fut text) RETURNS jsonb
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

-- Whether an IF's query is an if_rows condition the engine can evaluate
-- (and embeds no node reference of its own).
CREATE FUNCTION df._is_if_rows_config_v1(p_query text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v jsonb;
BEGIN
    IF p_query IS NULL OR p_query !~ E'^[ \t\n\r]*\\{' THEN
        RETURN false;
    END IF;
    BEGIN
        v := p_query::jsonb;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
        RETURN false;
    END;
    RETURN v ->> 'condition_type' = 'result_has_rows'
       AND pg_catalog.jsonb_typeof(v -> 'result_name') = 'string'
       AND NOT v ? 'condition_node' AND NOT v ? 'extra_nodes';
END
$$;

-- The whole-graph check and flattening df.start and df.explain use
-- (pg_durable's flatten_graph).  One row per node in pre-order (ord from 1;
-- children in the order left, right, condition_node, extra_nodes); slot is
-- 'left', 'right', 'condition' or 'extraN'.  query is what the node row
-- keeps: the query of a leaf or of an if_rows IF, else NULL (the caller
-- materialises condition_node / extra_nodes references).  A depth-first walk
-- with an explicit stack checks each node as it is popped, so the first
-- invalid node in pre-order is the one reported and nothing below it is read:
--   Invalid durable function graph: <path>: <message>   (SQLSTATE DF002)
-- It stops at depth 257 and at the 10,001st node in pre-order (the first
-- 10,001 popped, as pg_durable's walk pops them).  A walk in PL/pgSQL, not a
-- recursive CTE (0.3.0): starting that query's plan cost more than walking
-- the few nodes df.start mostly gets.  A node is read out of its parent once
-- (`->`), so a value is copied once per level above it, as the CTE's paths did.
CREATE FUNCTION df._flatten_v1(fut jsonb)
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

-- ----- Cron ----------------------------------------------------------------

-- Standard cron (CONTRACT.md section 9): minute hour day-of-month month
-- day-of-week [year]; each field a comma list of *, n, a-b, with an optional
-- /step (>= 1); month names JAN-DEC and day names SUN-SAT in any case;
-- day-of-week 0-7 with 0 and 7 = Sunday; year 1970-2099.  Ranges must not
-- run backwards.
CREATE FUNCTION df._cron_valid_v1(p_expr text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_fields text[] := pg_catalog.regexp_split_to_array(pg_catalog.btrim(p_expr, E' \t\n\r'), E'[ \t\n\r]+');
    v_min integer[] := ARRAY[0, 0, 1, 1, 0, 1970];
    v_max integer[] := ARRAY[59, 23, 31, 12, 7, 2099];
    v_months text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
    v_days text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    v_item text;
    v_bound text;
    v_vals integer[];
    m text[];
    i integer;
    j integer;
BEGIN
    IF pg_catalog.cardinality(v_fields) NOT IN (5, 6) THEN
        RETURN false;
    END IF;
    FOR i IN 1 .. pg_catalog.cardinality(v_fields) LOOP
        FOREACH v_item IN ARRAY pg_catalog.string_to_array(v_fields[i], ',') LOOP
            m := pg_catalog.regexp_match(v_item, '^(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?$');
            IF m IS NULL THEN
                RETURN false;
            END IF;
            IF m[4] IS NOT NULL AND (pg_catalog.length(m[4]) > 9 OR m[4]::integer < 1) THEN
                RETURN false;
            END IF;
            CONTINUE WHEN m[1] IS NOT NULL;
            v_vals := '{}';
            FOR j IN 2 .. 3 LOOP
                v_bound := m[j];
                CONTINUE WHEN v_bound IS NULL;
                IF v_bound ~ '^[0-9]{1,9}$' THEN
                    v_vals := v_vals || v_bound::integer;
                ELSIF i = 4 AND pg_catalog.array_position(v_months, pg_catalog.upper(v_bound)) IS NOT NULL THEN
                    v_vals := v_vals || pg_catalog.array_position(v_months, pg_catalog.upper(v_bound));
                ELSIF i = 5 AND pg_catalog.array_position(v_days, pg_catalog.upper(v_bound)) IS NOT NULL THEN
                    v_vals := v_vals || (pg_catalog.array_position(v_days, pg_catalog.upper(v_bound)) - 1);
                ELSE
                    RETURN false;
                END IF;
            END LOOP;
            IF v_vals[1] < v_min[i] OR v_vals[pg_catalog.cardinality(v_vals)] > v_max[i]
               OR v_vals[1] > v_vals[pg_catalog.cardinality(v_vals)] THEN
                RETURN false;
            END IF;
        END LOOP;
    END LOOP;
    RETURN true;
END
$$;

-- ----- Builders (PGD_REFERENCE.md 1.1, 2.1) --------------------------------

CREATE FUNCTION df.sql(query text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN '{"node_type":"SQL","query":' || pg_catalog.to_json(query)::text || '}';
END
$$;

CREATE FUNCTION df.seq(a text, b text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('THEN', df._ensure_v1(a), df._ensure_v1(b), NULL, NULL, NULL, NULL);
END
$$;

CREATE FUNCTION df."as"(fut text, name text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
BEGIN
    -- The name is checked before the step is parsed (fixture X1).
    IF name = '' THEN
        RAISE EXCEPTION 'df.as: result name cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    IF name !~ '^[a-zA-Z_][a-zA-Z0-9_]*$' THEN
        RAISE EXCEPTION 'df.as: result name ''%'' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*', name
            USING ERRCODE = 'DF001';
    END IF;
    SELECT * INTO p FROM df._parse_durofut_v1(fut);
    IF p.kind = 'envelope' THEN
        RETURN df._durofut_json_v1(p.node_type, p.left_node, p.right_node, p.condition_node, p.extra_nodes,
                                   p.query, '"' || name || '"');
    ELSIF p.kind = 'malformed' THEN
        RAISE EXCEPTION 'Invalid Durofut JSON: failed to deserialize workflow step: %', p.detail
            USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('SQL', NULL, NULL, NULL, NULL, pg_catalog.to_json(fut)::text, '"' || name || '"');
END
$$;

CREATE FUNCTION df."join"(a text, b text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('JOIN', df._ensure_v1(a), df._ensure_v1(b), NULL, NULL, NULL, NULL);
END
$$;

CREATE FUNCTION df.join3(a text, b text, c text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('JOIN', df._ensure_v1(a), df._ensure_v1(b), NULL, ARRAY[df._ensure_v1(c)], NULL, NULL);
END
$$;

CREATE FUNCTION df.race(a text, b text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('RACE', df._ensure_v1(a), df._ensure_v1(b), NULL, NULL, NULL, NULL);
END
$$;

-- left = then, right = else, condition_node = the condition (any step).
CREATE FUNCTION df."if"(condition text, then_branch text, else_branch text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_condition text := df._ensure_v1(condition);
BEGIN
    RETURN df._durofut_json_v1('IF', df._ensure_v1(then_branch), df._ensure_v1(else_branch), v_condition,
                               NULL, NULL, NULL);
END
$$;

-- The condition is "the named result has rows"; the name is checked when the IF runs.
CREATE FUNCTION df.if_rows(result_name text, then_branch text, else_branch text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('IF', df._ensure_v1(then_branch), df._ensure_v1(else_branch), NULL, NULL,
        pg_catalog.to_json('{"condition_type":"result_has_rows","result_name":'
                           || pg_catalog.to_json(result_name)::text || '}')::text,
        NULL);
END
$$;

CREATE FUNCTION df.loop(body text, condition text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF body IS NULL THEN
        RAISE EXCEPTION 'df.loop: body cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('LOOP', df._ensure_v1(body), NULL,
                               CASE WHEN condition IS NOT NULL THEN df._ensure_v1(condition) END, NULL, NULL, NULL);
END
$$;

-- The value is a literal, never a step; it is parsed only when the BREAK runs.
CREATE FUNCTION df."break"(value text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN df._durofut_json_v1('BREAK', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"break_value":' || COALESCE(pg_catalog.to_json(value)::text, 'null') || '}')::text,
        NULL);
END
$$;

CREATE FUNCTION df.sleep(seconds bigint) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF seconds < 0 THEN
        RAISE EXCEPTION 'Sleep duration must be non-negative' USING ERRCODE = 'DF001';
    END IF;
    RETURN '{"node_type":"SLEEP","query":"' || seconds::text || '"}';
END
$$;

CREATE FUNCTION df.wait_for_schedule(cron_expr text) RETURNS text
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT df._cron_valid_v1(cron_expr) THEN
        RAISE EXCEPTION 'Invalid cron expression ''%'': Invalid expression: Invalid cron expression.', cron_expr
            USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('WAIT_SCHEDULE', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"cron_expr":' || pg_catalog.to_json(cron_expr)::text || '}')::text, NULL);
END
$$;

CREATE FUNCTION df.wait_for_signal(name text, timeout_seconds integer DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'df.wait_for_signal: name cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF name = '' THEN
        RAISE EXCEPTION 'Signal name cannot be empty' USING ERRCODE = 'DF001';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    RETURN df._durofut_json_v1('SIGNAL', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"signal_name":' || pg_catalog.to_json(name)::text
                           || ',"timeout_seconds":' || COALESCE(timeout_seconds::text, 'null') || '}')::text,
        NULL);
END
$$;

-- Builds the envelope only: the allow-list and the caller's EXECUTE
-- privilege are checked when the step runs.
CREATE FUNCTION df.http(url text, method text DEFAULT 'POST', body text DEFAULT NULL, headers jsonb DEFAULT NULL,
                        timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_method text := pg_catalog.upper(method);
    v_scheme text;
BEGIN
    IF url IS NULL OR method IS NULL OR timeout_seconds IS NULL THEN
        RAISE EXCEPTION 'df.http: url, method and timeout_seconds cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF v_method NOT IN ('GET', 'POST', 'PUT', 'DELETE', 'PATCH') THEN
        RAISE EXCEPTION 'Invalid HTTP method: %. Must be GET, POST, PUT, DELETE, or PATCH', method
            USING ERRCODE = 'DF001';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    -- A url with {var} is only complete at run time, where it is checked again.
    IF pg_catalog.strpos(url, '{') = 0 THEN
        v_scheme := pg_catalog.lower(pg_catalog.split_part(url, '://', 1));
        IF v_scheme NOT IN ('http', 'https') THEN
            RAISE EXCEPTION 'Blocked: unsupported URL scheme ''%''. Only http and https are allowed.', v_scheme
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
    RETURN df._durofut_json_v1('HTTP', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"url":' || pg_catalog.to_json(url)::text
                           || ',"method":' || pg_catalog.to_json(v_method)::text
                           || ',"body":' || COALESCE(pg_catalog.to_json(body)::text, 'null')
                           || ',"headers":' || COALESCE(df._json_compact_v1(headers), 'null')
                           || ',"timeout_seconds":' || timeout_seconds::text || '}')::text,
        NULL);
END
$$;

CREATE FUNCTION df.http_multipart(url text, method text DEFAULT 'POST', parts jsonb DEFAULT NULL,
                                  headers jsonb DEFAULT NULL, timeout_seconds integer DEFAULT 30) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_method text := pg_catalog.upper(method);
    v_scheme text;
BEGIN
    IF url IS NULL OR method IS NULL OR timeout_seconds IS NULL THEN
        RAISE EXCEPTION 'df.http_multipart: url, method and timeout_seconds cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF v_method NOT IN ('POST', 'PUT', 'PATCH') THEN
        RAISE EXCEPTION 'Invalid HTTP method for multipart: %. Must be POST, PUT, or PATCH', method
            USING ERRCODE = 'DF001';
    END IF;
    IF parts IS NULL THEN
        RAISE EXCEPTION 'parts is required and cannot be NULL' USING ERRCODE = 'DF001';
    END IF;
    IF pg_catalog.jsonb_typeof(parts) <> 'array'
       OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(parts) AS e(v)
                   WHERE pg_catalog.jsonb_typeof(e.v) <> 'object') THEN
        RAISE EXCEPTION 'parts must be a JSON array of part objects' USING ERRCODE = 'DF001';
    END IF;
    IF pg_catalog.jsonb_array_length(parts) = 0 THEN
        RAISE EXCEPTION 'parts must contain at least one part' USING ERRCODE = 'DF001';
    END IF;
    IF timeout_seconds <= 0 THEN
        RAISE EXCEPTION 'Timeout must be positive' USING ERRCODE = 'DF001';
    END IF;
    IF pg_catalog.strpos(url, '{') = 0 THEN
        v_scheme := pg_catalog.lower(pg_catalog.split_part(url, '://', 1));
        IF v_scheme NOT IN ('http', 'https') THEN
            RAISE EXCEPTION 'Blocked: unsupported URL scheme ''%''. Only http and https are allowed.', v_scheme
                USING ERRCODE = 'DF001';
        END IF;
    END IF;
    RETURN df._durofut_json_v1('HTTP_MULTIPART', NULL, NULL, NULL, NULL,
        pg_catalog.to_json('{"url":' || pg_catalog.to_json(url)::text
                           || ',"method":' || pg_catalog.to_json(v_method)::text
                           || ',"parts":' || df._json_compact_v1(parts)
                           || ',"headers":' || COALESCE(df._json_compact_v1(headers), 'null')
                           || ',"timeout_seconds":' || timeout_seconds::text || '}')::text,
        NULL);
END
$$;

-- Outbound HTTP is opt-in per role: df.grant_usage(role, include_http => true).
REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer),
                           df.http_multipart(text, text, jsonb, jsonb, integer) FROM PUBLIC;

-- ----- Operator helpers (PGD_REFERENCE.md 1.5, 1.6) ------------------------
-- 95_operators.sql creates ~> |=> & | ?> !> @> over these.

CREATE FUNCTION df.as_op(fut text, name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df."as"(fut, name) $$;

-- `c ?> t` is a partial IF that `!> e` completes; its operands are kept as
-- strings and only become steps in df.if.
CREATE FUNCTION df.if_then_op(condition text, then_branch text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.jsonb_build_object('_partial_if', true, 'condition', condition,
                                           'then_branch', then_branch)::text $$;

-- Lines 7 and 11 are where pg_durable's errors point (fixtures X10, X10b).
CREATE FUNCTION df.if_else_op(partial_if text, else_branch text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_partial jsonb;
    v_condition text;
    v_then text;
BEGIN
    v_partial := partial_if::jsonb;
    v_condition := v_partial ->> 'condition';
    v_then := v_partial ->> 'then_branch';
    IF pg_catalog.jsonb_typeof(v_partial) <> 'object' OR v_partial -> '_partial_if' IS DISTINCT FROM 'true' OR v_condition IS NULL OR v_then IS NULL THEN
        RAISE EXCEPTION 'Invalid if-then-else: left side of !> must be a ?> expression' USING ERRCODE = 'DF001';
    END IF;
    RETURN df."if"(v_condition, v_then, else_branch);
END
$$;

CREATE FUNCTION df.loop_prefix_op(body text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT df.loop(body) $$;
