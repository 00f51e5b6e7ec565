"""Substitution of ``{vars}`` and ``$results`` (PGD_REFERENCE 2.5, 2.6; CONTRACT 3).

The lookup rules and messages are pg_durable's; where a value lands is decided
by a PostgreSQL lexer, and PostgreSQL's own parser (pglast) is the oracle that
no value changes the shape of a statement.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pglast import parser

from durable.engine import SubstitutionError, render
from durable.engine.substitute import MAX_EXPAND_ROWS


def rs(*records: dict[str, Any]) -> str:
    return json.dumps(
        {"rows": list(records), "row_count": len(records)}, separators=(",", ":"), ensure_ascii=False
    )


def sub(template: str, **results: str) -> str:
    return render(template, results, {}, {})


# --- variables ---------------------------------------------------------------------------------


def test_vars_are_raw_and_single_pass() -> None:
    vars = {"tbl": "orders", "q": "it's", "brace": "{tbl}", "dollar": "$r"}
    sys = {"sys_instance_id": "a1b2c3d4", "sys_label": ""}
    out = render(
        "SELECT * FROM {tbl} WHERE x = '{q}' -- {brace} {sys_instance_id}/{sys_label} {nope} {\"a\":1} {1x} { tbl }",
        {},
        vars,
        sys,
    )
    assert out == "SELECT * FROM orders WHERE x = 'it's' -- {tbl} a1b2c3d4/ {nope} {\"a\":1} {1x} { tbl }"


def test_the_dollar_pass_sees_inserted_vars() -> None:
    assert render("SELECT {dollar}", {"r": rs({"v": 1})}, {"dollar": "$r"}, {}) == "SELECT 1"


# --- lookups -------------------------------------------------------------------------------------


def test_bare_is_the_first_column_of_the_first_row() -> None:
    r = '{"rows":[{"zeta":2,"a":1},{"zeta":3,"a":4}],"row_count":2}'
    assert sub("SELECT $r", r=r) == "SELECT 2"
    assert sub("SELECT $r.a, $r.zeta", r=r) == "SELECT 1, 2"


def test_forms_and_next_character_rule() -> None:
    r = rs({"v": 5})
    assert sub("SELECT $r+1, $r::int, ($r), $r;", r=r) == "SELECT 5+1, 5::int, (5), 5;"
    assert sub("SELECT $rx, $r_1, $r9", r=r) == "SELECT $rx, $r_1, $r9"  # bare only before a non-word char
    assert sub("SELECT $r?, $r.v?", r=r) == "SELECT 5, 5"


def test_names_are_tried_longest_first() -> None:
    out = sub("SELECT $a, $ab, $abc", a=rs({"v": 1}), ab=rs({"v": 2}))
    assert out == "SELECT 1, 2, $abc"


def test_no_rows() -> None:
    e = rs()
    with pytest.raises(SubstitutionError) as ei:
        sub("SELECT $e", e=e)
    assert ei.value.message == "$e has no rows — query returned zero results"
    with pytest.raises(SubstitutionError, match="^\\$e has no rows — query returned zero results$"):
        sub("SELECT $e.v", e=e)
    assert sub("SELECT $e?, $e.v?", e=e) == "SELECT NULL, NULL"


def test_null_values() -> None:
    r = rs({"v": None})
    with pytest.raises(SubstitutionError, match="^\\$r is NULL — "):
        sub("SELECT $r", r=r)
    with pytest.raises(SubstitutionError, match="^\\$r.v is NULL — "):
        sub("SELECT $r.v", r=r)
    assert sub("SELECT $r?, $r.v?", r=r) == "SELECT NULL, NULL"


def test_missing_column_stays_literal() -> None:
    assert sub("SELECT $r.nope, $r.nope?", r=rs({"v": 1})) == "SELECT $r.nope, $r.nope?"


def test_objects_without_rows() -> None:
    sig = '{"signal_name":"go","timed_out":false,"data":{"k":"it\'s"}}'
    assert sub("SELECT $s", s=sig) == "SELECT '" + sig.replace("'", "''") + "'"
    assert sub("SELECT $s.timed_out, $s.signal_name, $s.data", s=sig) == (
        "SELECT false, 'go', '{\"k\":\"it''s\"}'"
    )
    assert sub("SELECT $s.nope", s=sig) == "SELECT $s.nope"
    assert sub("SELECT $s.data?", s='{"data":null}') == "SELECT NULL"


def test_arrays_and_scalars() -> None:
    arr = '[{"rows":[],"row_count":0},1]'
    assert sub("SELECT $j", j=arr) == "SELECT '" + arr + "'"
    with pytest.raises(SubstitutionError) as ei:
        sub("SELECT $j.x", j=arr)
    assert ei.value.message == "$j.x: result is neither a row set nor a JSON object"
    assert sub("SELECT $b", b='"finished"') == "SELECT 'finished'"
    assert sub("SELECT $b", b="42") == "SELECT 42"
    with pytest.raises(SubstitutionError, match="^\\$b is NULL"):
        sub("SELECT $b", b="null")
    assert sub("SELECT $b?", b="null") == "SELECT NULL"


def test_non_json_result_is_raw_text() -> None:
    assert sub("SELECT $t", t="not json at all") == "SELECT 'not json at all'"


# --- rendering in code ---------------------------------------------------------------------------


def test_code_literals() -> None:
    r = rs({"s": "it's", "n": -1, "f": 1.5, "b": True, "o": {"a": [1, "x"]}, "big": 12345678901234567890})
    assert sub("SELECT $r.s", r=r) == "SELECT 'it''s'"
    assert sub("SELECT 5-$r.n", r=r) == "SELECT 5-(-1)"
    assert sub("SELECT $r.f*2", r=r) == "SELECT 1.5*2"
    assert sub("SELECT NOT $r.b", r=r) == "SELECT NOT true"
    assert sub("SELECT $r.o", r=r) == 'SELECT \'{"a":[1,"x"]}\''
    assert sub("SELECT $r.big", r=r) == "SELECT 12345678901234567890"


def test_numbers_keep_their_exact_text() -> None:
    assert sub("SELECT $r", r='{"rows":[{"v":1.50}],"row_count":1}') == "SELECT 1.50"
    assert sub("SELECT $r", r='{"rows":[{"v":1E+5}],"row_count":1}') == "SELECT 1E+5"


def test_literals_that_could_merge_are_parenthesised() -> None:
    n = rs({"v": 3})
    assert sub("SELECT 1.$n", n=n) == "SELECT 1.(3)"
    assert sub("SELECT $n.5", n=n) == "SELECT (3).5"
    s = rs({"v": "x"})
    assert sub("SELECT 'a'$s", s=s) == "SELECT 'a'('x')"
    assert sub("SELECT U&$s", s=s) == "SELECT U&('x')"


def test_star_expands_to_values() -> None:
    r = '{"rows":[{"a":1,"b":"x","c":null,"d":{"k":1},"e":true},{"a":-2,"b":"it\'s","c":3,"d":[],"e":false}],"row_count":2}'
    assert sub("SELECT * FROM $r.*", r=r) == (
        "SELECT * FROM (VALUES (1,'x'::text,NULL,'{\"k\":1}'::text,true),"
        '(-2,\'it\'\'s\'::text,3,\'[]\'::text,false)) AS "r"("a","b","c","d","e")'
    )
    assert sub("SELECT * FROM $r.*", r=rs()) == 'SELECT * FROM (SELECT NULL WHERE false) AS "r"'


def test_star_limits_and_formats() -> None:
    big = rs(*({"i": i} for i in range(MAX_EXPAND_ROWS + 1)))
    with pytest.raises(SubstitutionError, match=r"^\$r\.\* — "):
        sub("SELECT * FROM $r.*", r=big)
    ok = rs(*({"i": i} for i in range(MAX_EXPAND_ROWS)))
    assert sub("SELECT count(*) FROM $r.*", r=ok).count("),(") == MAX_EXPAND_ROWS - 1
    with pytest.raises(SubstitutionError) as ei:
        sub("SELECT * FROM $r.*", r='{"status":200}')
    assert ei.value.message == "$r.* — invalid result format"


# --- lexer contexts ---------------------------------------------------------------------------------


def test_inside_string_literals_the_text_goes_in() -> None:
    r = rs({"s": "it's", "n": 7, "o": {"a": "b"}})
    assert sub("SELECT 'v=$r.s; n=$r.n; o=$r.o; missing=$r.zz'", r=r) == (
        "SELECT 'v=it''s; n=7; o={\"a\":\"b\"}; missing=$r.zz'"
    )
    assert sub("SELECT 'x''$r.s'''", r=r) == "SELECT 'x''it''s'''"
    assert sub("SELECT '[$r.zz?]'", r=rs({"zz": None})) == "SELECT '[NULL]'"


def test_escape_strings_double_backslashes() -> None:
    r = rs({"s": "a\\'b"})
    assert sub("SELECT E'\\n$r'", r=r) == "SELECT E'\\na\\\\''b'"
    assert sub("SELECT E'\\'$r'", r=r) == "SELECT E'\\'a\\\\''b'"
    assert sub("SELECT U&'$r'", r=r) == "SELECT U&'a\\\\''b'"


def test_comments_quoted_identifiers_and_identifiers_are_left_alone() -> None:
    r = rs({"v": 1})
    tpl = 'SELECT 1 -- $r\n, /* $r /* nested $r */ $r */ "col$r", a$r, $1, x AS "$r" -- $r'
    assert sub(tpl, r=r) == tpl
    assert sub("SELECT /* c */ $r -- c\n+ $r", r=r) == "SELECT /* c */ 1 -- c\n+ 1"


def test_dollar_quoted_bodies() -> None:
    r = rs({"s": "it's", "d": "a$$b", "t": "x$q$y"})
    assert sub("DO $$ BEGIN PERFORM $r.s; END $$", r=r) == "DO $$ BEGIN PERFORM 'it''s'; END $$"
    assert sub("DO $$ BEGIN RAISE NOTICE '%', 'v=$r.s'; END $$", r=r) == (
        "DO $$ BEGIN RAISE NOTICE '%', 'v=it''s'; END $$"
    )
    assert sub("DO $q$ BEGIN PERFORM $r.d; END $q$", r=r) == "DO $q$ BEGIN PERFORM 'a$$b'; END $q$"
    with pytest.raises(SubstitutionError) as ei:
        sub("DO $$ BEGIN PERFORM $r.d; END $$", r=r)
    assert "closing delimiter $$" in ei.value.message and ei.value.message.startswith("$r ")
    with pytest.raises(SubstitutionError):
        sub("DO $q$ BEGIN PERFORM $r.t; END $q$", r=r)
    # a tag that looks like a result name opens a dollar quote, as PostgreSQL reads it
    assert sub("SELECT $r$ $r $r$", r=r) == "SELECT $r$ 'it''s' $r$"


def test_nul_cannot_be_substituted() -> None:
    with pytest.raises(SubstitutionError, match="NUL"):
        sub("SELECT $r", r=rs({"v": "a\u0000b"}))


# --- the oracle: PostgreSQL's parser ----------------------------------------------------------------


def _norm(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"A_Const"}:
            return "CONST"
        out = {}
        for k, v in x.items():
            if k in ("location", "stmt_len", "stmt_location", "lineno", "arg_location"):
                continue
            if k == "PLpgSQL_expr" and isinstance(v, dict) and "query" in v:
                v = dict(v, query=shape(v["query"]))
            out[k] = _norm(v)
        return out
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return x


def shape(sql: str) -> Any:
    """The parse tree of ``sql`` with constants and positions blanked; DO bodies parsed too."""
    tree = json.loads(parser.parse_sql_json(sql))
    stmts = tree["stmts"]
    out = []
    for s in stmts:
        stmt = s["stmt"]
        if "DoStmt" in stmt:
            out.append(("DO", _norm(json.loads(parser.parse_plpgsql_json(sql)))))
        else:
            out.append(_norm(stmt))
    return out


json_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(
        alphabet=st.one_of(
            st.sampled_from(list("'\"$-/*\\;\n\tEe_ aq1(){}")),
            st.characters(codec="utf-8", exclude_characters="\x00"),
        ),
        max_size=25,
    ),
)
json_values = st.recursive(
    st.one_of(st.none(), json_scalars),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "object" if isinstance(v, dict) else "array"


PLACEHOLDER = {"null": None, "bool": True, "number": 1, "string": "x", "object": {"a": 1}, "array": [1]}


def placeholder(v: Any) -> Any:
    """The same structure (keys, lengths) with every scalar replaced by its kind's placeholder."""
    if isinstance(v, dict):
        return {k: placeholder(x) for k, x in v.items()}
    if isinstance(v, list):
        return [placeholder(x) for x in v]
    return PLACEHOLDER[kind(v)]


def same_shape(got: str, expected: str) -> None:
    try:
        want = shape(expected)
    except parser.ParseError:
        # the template itself is not valid SQL with this structure: neither may the value make it so
        with pytest.raises(parser.ParseError):
            shape(got)
        return
    assert shape(got) == want, (got, expected)


TEMPLATES = [
    "SELECT 5-$n",
    "SELECT 'prefix $s'",
    "DO $$ BEGIN PERFORM $s; END $$",
    "SELECT 1 -- $s",
    "SELECT * FROM t WHERE a = $s AND b = '$s'",
    "SELECT $s, $n?, $s.v?, E'x\\'$s', $n::text, 1-$n-$s, /* $s */ \"$s\"",
    "SELECT $n.v*-$n.v FROM t WHERE c = $s.v--$n\n",
    "DO $f$ BEGIN RAISE NOTICE '%', 'v=$s'; PERFORM $n.v; END $f$",
    "SELECT $$ a $s b $$, $tag$ $n $tag$",
]


def as_result(value: Any, wrap: bool) -> str:
    if wrap:
        return json.dumps({"rows": [{"v": value}], "row_count": 1}, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(TEMPLATES),
    n=json_values,
    s=json_values,
    wrap_n=st.booleans(),
    wrap_s=st.booleans(),
)
def test_no_value_changes_the_statement_shape(
    template: str, n: Any, s: Any, wrap_n: bool, wrap_s: bool
) -> None:
    values = {"n": as_result(n, wrap_n), "s": as_result(s, wrap_s)}
    placeholders = {"n": as_result(placeholder(n), wrap_n), "s": as_result(placeholder(s), wrap_s)}
    try:
        expected = render(template, placeholders, {}, {})
    except SubstitutionError:
        expected = None
    try:
        got = render(template, values, {}, {})
    except SubstitutionError as exc:
        # allowed refusals: the value is NULL (or not an object for a dot), or it would
        # close the dollar-quoted body it sits in
        assert expected is None or "closing delimiter" in exc.message, exc.message
        return
    assume(expected is not None)
    assert expected is not None
    same_shape(got, expected)


def _rows_strategy() -> st.SearchStrategy[list[dict[str, Any]]]:
    cols = st.lists(st.sampled_from(["a", "b", "c", 'q"x', "zeta"]), min_size=1, max_size=3, unique=True)
    return cols.flatmap(
        lambda cs: st.lists(st.fixed_dictionaries({c: json_values for c in cs}), min_size=0, max_size=4)
    )


@settings(max_examples=200, deadline=None)
@given(records=_rows_strategy())
def test_star_relation_shape_depends_only_on_kinds(records: list[dict[str, Any]]) -> None:
    template = "SELECT * FROM $r.* WHERE true"
    got = render(template, {"r": rs(*records)}, {}, {})
    expected = render(template, {"r": rs(*placeholder(records))}, {}, {})
    same_shape(got, expected)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_value_inside_a_literal_round_trips(value: Any) -> None:
    """What lands inside '...' is exactly the value's text: PostgreSQL reads it back."""
    got = render("SELECT 'pre $s? post'", {"s": as_result(value, True)}, {}, {})
    tree = json.loads(parser.parse_sql_json(got))
    const = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]["A_Const"]
    if value is None:
        text = "NULL"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert const["sval"]["sval"] == f"pre {text} post"


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=20).filter(lambda t: "\x00" not in t))
def test_string_value_in_code_is_read_back_exactly(value: str) -> None:
    got = render("SELECT $s", {"s": as_result(value, True)}, {}, {})
    tree = json.loads(parser.parse_sql_json(got))
    const = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]["A_Const"]
    assert const["sval"]["sval"] == value
