"""durable.graph: the Python builder gives the SQL DSL's envelopes byte for byte.

1. PGD_FIXTURES.md section 1 (E1-E33) rebuilt with the Python builder: exact bytes (no database).
2. Generated expressions (every builder nested, names, unicode and control characters, envelope texts
   as operands) built both ways on a real database: same text, or the same error message.
3. Validation errors with the SQL builders' messages (PGD_FIXTURES.md section 2, sql/src/30_dsl.sql).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from functools import reduce
from typing import Any, NamedTuple

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.sql import quote

from durable import graph as g
from durable.errors import InvalidInputError

# ----- 1. PGD_FIXTURES.md section 1, verbatim --------------------------------------------------------

E2 = '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}'
E11 = (
    '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},'
    '"condition_node":{"node_type":"SQL","query":"SELECT true"}}'
)
E14 = '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"}}'
E16 = '{"node_type":"BREAK","query":"{\\"break_value\\":null}"}'
E22 = '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"go\\",\\"timeout_seconds\\":null}"}'
E30 = '{"condition": "SELECT true", "_partial_if": true, "then_branch": "SELECT 1"}'
E30B = '{"condition": "{\\"node_type\\":\\"SQL\\",\\"query\\":\\"SELECT true\\"}", "_partial_if": true, "then_branch": "SELECT 1"}'
# E33's input: (df.sql('a') ~> 'b')::jsonb::text
E33_INPUT = '{"left_node": {"query": "a", "node_type": "SQL"}, "node_type": "THEN", "right_node": {"query": "b", "node_type": "SQL"}}'

FIXTURES: dict[str, str] = {
    "E1": '{"node_type":"SQL","query":"SELECT 1"}',
    "E2": E2,
    "E3": E2,
    "E4": '{"node_type":"THEN","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
    '"right_node":{"node_type":"SQL","query":"SELECT 2"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}',
    "E5": '{"node_type":"SQL","query":"SELECT 42 AS answer","result_name":"r"}',
    "E6": '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
    '"right_node":{"node_type":"SQL","query":"SELECT 2"},"result_name":"last"}',
    "E7": '{"node_type":"SQL","query":"SELECT 1","result_name":"b"}',
    "E8": '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    "E9": '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},'
    '"extra_nodes":[{"node_type":"SQL","query":"SELECT 3"}]}',
    "E10": '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}}',
    "E11": E11,
    "E12": E11,
    "E13": '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},'
    '"query":"{\\"condition_type\\":\\"result_has_rows\\",\\"result_name\\":\\"r\\"}"}',
    "E14": E14,
    "E15": '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"},'
    '"condition_node":{"node_type":"SQL","query":"SELECT false"}}',
    "E16": E16,
    "E17": '{"node_type":"BREAK","query":"{\\"break_value\\":\\"{\\\\\\"status\\\\\\": \\\\\\"done\\\\\\"}\\"}"}',
    "E18": '{"node_type":"BREAK","query":"{\\"break_value\\":\\"finished\\"}"}',
    "E19": '{"node_type":"SLEEP","query":"0"}',
    "E20": '{"node_type":"SLEEP","query":"30"}',
    "E21": '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"*/5 * * * *\\"}"}',
    "E22": E22,
    "E23": '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"approve\\",\\"timeout_seconds\\":3600}"}',
    "E24": '{"node_type":"HTTP","query":"{\\"url\\":\\"https://example.com/hook\\",\\"method\\":\\"POST\\",\\"body\\":null,'
    '\\"headers\\":null,\\"timeout_seconds\\":30}"}',
    "E25": '{"node_type":"HTTP","query":"{\\"url\\":\\"https://api.github.com/x\\",\\"method\\":\\"GET\\",\\"body\\":null,'
    '\\"headers\\":{\\"Accept\\":\\"application/json\\",\\"X-Api-Key\\":\\"k1\\"},\\"timeout_seconds\\":10}"}',
    "E26": '{"node_type":"HTTP","query":"{\\"url\\":\\"https://fn.azurewebsites.net/api/f\\",\\"method\\":\\"POST\\",'
    '\\"body\\":\\"{\\\\\\"a\\\\\\":1}\\",\\"headers\\":null,\\"timeout_seconds\\":30}"}',
    "E27": '{"node_type":"HTTP_MULTIPART","query":"{\\"url\\":\\"https://fn.azurewebsites.net/api/up\\",\\"method\\":\\"POST\\",'
    '\\"parts\\":[{\\"name\\":\\"file\\",\\"data_b64\\":\\"aGk=\\",\\"filename\\":\\"a.txt\\",\\"content_type\\":\\"text/plain\\"}],'
    '\\"headers\\":null,\\"timeout_seconds\\":30}"}',
    "E28": '{"node_type":"LOOP","left_node":{"node_type":"JOIN","left_node":{"node_type":"RACE","left_node":'
    '{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}},'
    '"right_node":{"node_type":"SQL","query":"SELECT 2"}}}',
    "E29": r"""{"node_type":"SQL","query":"it's \"q\" \\ / é😀\n\t\u0001"}""",
    "E31": '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\\"a\\":1}"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    "E32": '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\\"node_type\\":\\"FOO\\"}"},'
    '"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    "E33": '{"node_type":"THEN","left_node":{"query": "a", "node_type": "SQL"},"right_node":{"query": "b", "node_type": "SQL"},'
    '"result_name":"x"}',
}

PARTS_TEXT = '[{"name":"file","filename":"a.txt","content_type":"text/plain","data_b64":"aGk="}]'

# (fixture id, how the Python builder writes it); several spellings per fixture where Python has them.
BUILDS: list[tuple[str, Callable[[], g.Node]]] = [
    ("E1", lambda: g.sql("SELECT 1")),
    ("E2", lambda: g.seq("SELECT 1", "SELECT 2")),
    ("E2", lambda: g.step("SELECT 1") >> "SELECT 2"),
    ("E2", lambda: "SELECT 1" >> g.step("SELECT 2")),
    ("E3", lambda: g.seq(g.sql("SELECT 1"), "SELECT 2")),
    ("E3", lambda: g.sql("SELECT 1") >> "SELECT 2"),
    ("E4", lambda: g.sql("SELECT 1") >> "SELECT 2" >> "SELECT 3"),
    ("E4", lambda: g.seq(g.seq("SELECT 1", "SELECT 2"), "SELECT 3")),
    ("E5", lambda: g.step("SELECT 42 AS answer").as_("r")),
    ("E5", lambda: g.sql("SELECT 42 AS answer").as_("r")),
    ("E6", lambda: (g.sql("SELECT 1") >> "SELECT 2").as_("last")),
    ("E7", lambda: g.sql("SELECT 1").as_("a").as_("b")),
    ("E8", lambda: g.sql("SELECT 1") & "SELECT 2"),
    ("E8", lambda: "SELECT 1" & g.sql("SELECT 2")),
    ("E8", lambda: g.join("SELECT 1", "SELECT 2")),
    ("E9", lambda: g.join("SELECT 1", "SELECT 2", "SELECT 3")),
    ("E10", lambda: "SELECT 1" | g.sleep(5)),
    ("E10", lambda: g.race("SELECT 1", g.sleep(5))),
    ("E11", lambda: g.if_("SELECT true", "SELECT 1", "SELECT 2")),
    # E12 is `c ?> t !> e`, which has no Python operator: if_ is its only spelling.
    ("E12", lambda: g.if_(g.sql("SELECT true"), g.sql("SELECT 1"), g.sql("SELECT 2"))),
    ("E13", lambda: g.if_rows("r", "SELECT 1", "SELECT 2")),
    ("E14", lambda: g.loop("SELECT 1")),
    ("E14", lambda: g.loop("SELECT 1", None)),
    ("E15", lambda: g.loop("SELECT 1", "SELECT false")),
    ("E16", lambda: g.break_()),
    ("E16", lambda: g.break_(None)),
    ("E17", lambda: g.break_('{"status": "done"}')),
    ("E18", lambda: g.break_("finished")),
    ("E19", lambda: g.sleep(0)),
    ("E20", lambda: g.sleep(30)),
    ("E21", lambda: g.wait_for_schedule("*/5 * * * *")),
    ("E22", lambda: g.wait_for_signal("go")),
    ("E22", lambda: g.wait_for_signal("go", None)),
    ("E23", lambda: g.wait_for_signal("approve", 3600)),
    ("E24", lambda: g.http("https://example.com/hook")),
    (
        "E25",
        lambda: g.http("https://api.github.com/x", "get", None, '{"X-Api-Key":"k1","Accept":"application/json"}', 10),
    ),
    (
        "E25",
        lambda: g.http(
            "https://api.github.com/x", "get", headers={"X-Api-Key": "k1", "Accept": "application/json"}, timeout_seconds=10
        ),
    ),
    ("E26", lambda: g.http("https://fn.azurewebsites.net/api/f", "POST", '{"a":1}')),
    ("E27", lambda: g.http_multipart("https://fn.azurewebsites.net/api/up", "POST", PARTS_TEXT)),
    ("E27", lambda: g.http_multipart("https://fn.azurewebsites.net/api/up", parts=json.loads(PARTS_TEXT))),
    ("E28", lambda: g.loop(g.join(g.race("SELECT 1", g.sleep(5)), "SELECT 2"))),
    ("E28", lambda: g.loop(("SELECT 1" | g.sleep(5)) & "SELECT 2")),
    ("E29", lambda: g.sql("it's \"q\" \\ / é😀\n\t\x01")),
    ("E31", lambda: g.step('{"a":1}') >> "SELECT 2"),
    ("E31", lambda: g.seq('{"a":1}', "SELECT 2")),
    ("E32", lambda: g.seq('{"node_type":"FOO"}', "SELECT 2")),
    ("E33", lambda: g.step(E33_INPUT).as_("x")),
]


@pytest.mark.parametrize(("fixture", "build"), BUILDS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BUILDS)])
def test_fixture_envelopes(fixture: str, build: Callable[[], g.Node]) -> None:
    node = build()
    assert isinstance(node, g.Node)
    assert str(node) == FIXTURES[fixture]
    assert node.to_json() == FIXTURES[fixture]


def test_every_envelope_fixture_is_built() -> None:
    # E30/E30b are partial IFs (`c ?> t`), not envelopes: see test_partial_if_text_is_one_sql_step.
    assert {f"E{i}" for i in range(1, 34)} - {"E30"} == {b[0] for b in BUILDS}


@pytest.mark.parametrize("partial", [E30, E30B])
def test_partial_if_text_is_one_sql_step(partial: str) -> None:
    # A partial IF has no node_type: as a step argument it is SQL text (PGD_REFERENCE.md 2.2 rule 5).
    expected = '{"node_type":"SQL","query":' + json.dumps(partial, ensure_ascii=False) + "}"
    assert str(g.step(partial)) == expected
    assert str(g.step(partial) >> "x") == '{"node_type":"THEN","left_node":' + expected + ',"right_node":{"node_type":"SQL","query":"x"}}'


def test_client_start_takes_the_node_text() -> None:
    # durable.Client.start sends str(graph) for anything but a str.
    node = g.sql("SELECT 1") >> "SELECT 2"
    assert str(node) == E2 and f"{node}" == E2
    assert eval(repr(node), {"step": g.step}) == node
    assert hash(node) == hash(g.seq("SELECT 1", "SELECT 2"))
    assert node.node_type == "THEN" and node.result_name is None
    assert node.as_("last").result_name == "last"
    assert pickle.loads(pickle.dumps(node)) == node
    with pytest.raises(TypeError, match="made by the builders"):
        g.Node()


# ----- Precedence (module docstring) -------------------------------------------------------------------

A, B, C = g.sql("a"), g.sql("b"), g.sql("c")


def test_python_precedence() -> None:
    assert A >> B & C == g.join(g.seq(A, B), C)
    assert A & B >> C == g.join(A, g.seq(B, C))  # SQL's `a & b ~> c` is (a & b) ~> c
    assert A | B & C == g.race(A, g.join(B, C))  # SQL's `a | b & c` is (a | b) & c
    assert A & B | C == g.race(g.join(A, B), C)
    assert A >> B.as_("x") == g.seq(A, B.as_("x"))  # SQL's `a ~> b |=> 'x'` names the THEN
    assert A & B & C == g.join(g.join(A, B), C) != g.join(A, B, C)
    assert A >> B >> C == g.seq(g.seq(A, B), C)


def test_no_truth_value_and_no_plain_pairs() -> None:
    with pytest.raises(TypeError, match="no truth value"):
        _ = A and B
    with pytest.raises(TypeError, match="no truth value"):
        _ = A or B
    with pytest.raises(TypeError):
        _ = "SELECT 1" >> "SELECT 2"  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = A >> 5  # type: ignore[operator]
    with pytest.raises(TypeError):
        g.seq(A, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        g.sleep(True)
    with pytest.raises(TypeError):
        g.sleep(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        g.break_(5)  # type: ignore[arg-type]


# ----- 3. Validation errors: the SQL builders' messages --------------------------------------------------

BAD_NAME = "df.as: result name '{}' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*"
PARTS = [{"name": "f", "data_b64": "aGk="}]
HOOK = "https://fn.azurewebsites.net/api/up"

# (id, Python build, SQL expression with the same inputs, message of PGD_FIXTURES.md section 2 or
# sql/src/30_dsl.sql).
ERRORS: list[tuple[str, Callable[[], object], str, str]] = [
    ("X1", lambda: g.step("SELECT 1").as_("1bad"), "'SELECT 1' |=> '1bad'", BAD_NAME.format("1bad")),
    ("X1-sql", lambda: g.sql("SELECT 1").as_("1bad"), "df.as(df.sql('SELECT 1'), '1bad')", BAD_NAME.format("1bad")),
    ("X1-space", lambda: g.sql("x").as_("bad name"), "df.as('x', 'bad name')", BAD_NAME.format("bad name")),
    ("X1-unicode", lambda: g.sql("x").as_("é"), "df.as('x', 'é')", BAD_NAME.format("é")),
    ("X1-newline", lambda: g.sql("x").as_("a\n"), "df.as('x', E'a\\n')", BAD_NAME.format("a\n")),
    ("X1b", lambda: g.sql("SELECT 1").as_(""), "df.as('SELECT 1','')", "df.as: result name cannot be empty"),
    ("X2", lambda: g.sleep(-1), "df.sleep(-1)", "Sleep duration must be non-negative"),
    (
        "X3",
        lambda: g.wait_for_schedule("61 * * * *"),
        "df.wait_for_schedule('61 * * * *')",
        "Invalid cron expression '61 * * * *': Invalid expression: Invalid cron expression.",
    ),
    (
        "X3b",
        lambda: g.wait_for_schedule("every minute"),
        "df.wait_for_schedule('every minute')",
        "Invalid cron expression 'every minute': Invalid expression: Invalid cron expression.",
    ),
    ("X4", lambda: g.wait_for_signal(""), "df.wait_for_signal('')", "Signal name cannot be empty"),
    ("X4-first", lambda: g.wait_for_signal("", 0), "df.wait_for_signal('', 0)", "Signal name cannot be empty"),
    ("X5", lambda: g.wait_for_signal("go", 0), "df.wait_for_signal('go', 0)", "Timeout must be positive"),
    (
        "X5b",
        lambda: g.http("https://example.com/hook", "GET", None, None, 0),
        "df.http('https://example.com/hook','GET',NULL,NULL,0)",
        "Timeout must be positive",
    ),
    (
        "X5c",
        lambda: g.http_multipart(HOOK, "POST", PARTS, None, 0),
        f"""df.http_multipart('{HOOK}','POST','[{{"name":"f","data_b64":"aGk="}}]',NULL,0)""",
        "Timeout must be positive",
    ),
    (
        "X6",
        lambda: g.http("https://example.com", "fetch"),
        "df.http('https://example.com','fetch')",
        "Invalid HTTP method: fetch. Must be GET, POST, PUT, DELETE, or PATCH",
    ),
    (
        "X6-echo",
        lambda: g.http("https://example.com", "poſt"),
        "df.http('https://example.com','poſt')",
        "Invalid HTTP method: poſt. Must be GET, POST, PUT, DELETE, or PATCH",
    ),
    (
        "X6b",
        lambda: g.http_multipart(HOOK, "GET", PARTS),
        f"""df.http_multipart('{HOOK}','GET','[{{"name":"f","data_b64":"aGk="}}]')""",
        "Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH",
    ),
    (
        "X6c",
        lambda: g.http("ftp://h/x"),
        "df.http('ftp://h/x')",
        "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed.",
    ),
    (
        "X6c-noscheme",
        lambda: g.http("example.com"),
        "df.http('example.com')",
        "Blocked: unsupported URL scheme 'example.com'. Only http and https are allowed.",
    ),
    (
        "X6c-lower",
        lambda: g.http("FTP://H/x"),
        "df.http('FTP://H/x')",
        "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed.",
    ),
    (
        "X6c-multipart",
        lambda: g.http_multipart("file:///etc/passwd", "PUT", PARTS),
        """df.http_multipart('file:///etc/passwd','PUT','[{"name":"f","data_b64":"aGk="}]')""",
        "Blocked: unsupported URL scheme 'file'. Only http and https are allowed.",
    ),
    ("loop-null", lambda: g.loop(None), "df.loop(NULL)", "df.loop: body cannot be NULL"),  # type: ignore[arg-type]
    (
        "signal-null",
        lambda: g.wait_for_signal(None),  # type: ignore[arg-type]
        "df.wait_for_signal(NULL)",
        "df.wait_for_signal: name cannot be NULL",
    ),
    (
        "http-null",
        lambda: g.http("https://x", timeout_seconds=None),  # type: ignore[arg-type]
        "df.http('https://x', timeout_seconds => NULL)",
        "df.http: url, method and timeout_seconds cannot be NULL",
    ),
    (
        "multipart-null",
        lambda: g.http_multipart(None, parts=PARTS),  # type: ignore[arg-type]
        """df.http_multipart(NULL, parts => '[{"name":"f","data_b64":"aGk="}]')""",
        "df.http_multipart: url, method and timeout_seconds cannot be NULL",
    ),
    (
        "parts-null",
        lambda: g.http_multipart(HOOK),
        f"df.http_multipart('{HOOK}')",
        "parts is required and cannot be NULL",
    ),
    (
        "parts-object",
        lambda: g.http_multipart(HOOK, parts="{}"),
        f"df.http_multipart('{HOOK}', parts => '{{}}')",
        "parts must be a JSON array of part objects",
    ),
    (
        "parts-scalars",
        lambda: g.http_multipart(HOOK, parts=[1]),  # type: ignore[list-item]
        f"df.http_multipart('{HOOK}', parts => '[1]')",
        "parts must be a JSON array of part objects",
    ),
    (
        "parts-empty",
        lambda: g.http_multipart(HOOK, parts=[]),
        f"df.http_multipart('{HOOK}', parts => '[]')",
        "parts must contain at least one part",
    ),
    (
        "malformed-int",
        lambda: g.step('{"node_type":"SQL","query":5}'),
        """df.seq('{"node_type":"SQL","query":5}', 'x')""",
        "Invalid Durofut JSON: failed to deserialize workflow step: "
        "invalid type: integer `5`, expected a string at line 1 column 28",
    ),
    (
        "malformed-map",
        lambda: g.seq('{"node_type":"SQL","query":{"a":1}}', "x"),
        """df.seq('{"node_type":"SQL","query":{"a":1}}', 'x')""",
        "Invalid Durofut JSON: failed to deserialize workflow step: "
        "invalid type: map, expected a string at line 1 column 27",
    ),
    (
        "malformed-duplicate",
        lambda: g.join("x", '{"node_type":"SQL",\n "query":"é","query":"b"}'),
        """df.join('x', E'{"node_type":"SQL",\\n "query":"é","query":"b"}')""",
        "Invalid Durofut JSON: failed to deserialize workflow step: duplicate field `query` at line 2 column 21",
    ),
    (
        "malformed-float",
        lambda: g.step('{"node_type":"SQL","query":1.50}'),
        """df.seq('{"node_type":"SQL","query":1.50}', 'x')""",
        "Invalid Durofut JSON: failed to deserialize workflow step: "
        "invalid type: floating point `1.5`, expected a string at line 1 column 31",
    ),
    (
        "malformed-extra-string",
        lambda: g.step('{"node_type":"JOIN","extra_nodes":"a\\"b"}'),
        """df.seq('{"node_type":"JOIN","extra_nodes":"a\\"b"}', 'x')""",
        "Invalid Durofut JSON: failed to deserialize workflow step: "
        'invalid type: string "a\\"b", expected a sequence at line 1 column 40',
    ),
    (
        "malformed-unknown-type",
        lambda: g.step('{"node_type":"FOO","query":[]}'),
        """df.seq('{"node_type":"FOO","query":[]}', 'x')""",
        "Invalid Durofut JSON: failed to deserialize workflow step: "
        "invalid type: sequence, expected a string at line 1 column 27",
    ),
    # The name is checked before the step is parsed (X1); Python's step() reads the text first.
    (
        "as-parses-after-step",
        lambda: g.step('{"node_type":"SQL","query":5}').as_("ok"),
        """df.as('{"node_type":"SQL","query":5}', 'ok')""",
        "Invalid Durofut JSON: failed to deserialize workflow step: "
        "invalid type: integer `5`, expected a string at line 1 column 28",
    ),
]


@pytest.mark.parametrize(("case", "build", "expr", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_validation_errors(case: str, build: Callable[[], object], expr: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        build()
    assert str(info.value) == message
    assert info.value.sqlstate == "DF001"


def test_validation_errors_match_sql(db: psycopg.Connection) -> None:
    for case, build, expr, message in ERRORS:
        with pytest.raises(psycopg.Error) as info:
            db.execute(f"SELECT {expr}")
        assert info.value.sqlstate == "DF001", case
        assert info.value.diag.message_primary == message, case
        with pytest.raises(InvalidInputError) as py_info:
            build()
        assert str(py_info.value) == message, case


def test_cron_rules() -> None:
    # CONTRACT.md section 9: standard cron (X3's '0 9 * * 0' is valid: 0 and 7 are Sunday).
    for ok in ["0 9 * * 0", "0 9 * * 7", "0 9 * * sun", "*/5 * * * *", "0 0 1 jan-Mar MON-fri 2030",
               "1,2,10-20/5 * * * *", " 0\t0 * * * ", "0 0 * * * 2099"]:
        assert g.wait_for_schedule(ok).node_type == "WAIT_SCHEDULE", ok
    for bad in ["61 * * * *", "every minute", "* * * *", "* * * * * * *", "5-1 * * * *", "*/0 * * * *",
                "0 0 * * 8", "0 0 * * * 2100", "0 0 * JAN-FOO *", "0 0 * * MONDAY", "1,,2 * * * *", "",
                "0 0 0 * *", "0 24 * * *", "*/1234567890 * * * *", "0 0 * * SUN-SAT/0"]:
        with pytest.raises(InvalidInputError, match="^Invalid cron expression"):
            g.wait_for_schedule(bad)


def test_text_postgresql_cannot_hold() -> None:
    with pytest.raises(InvalidInputError, match="U\\+0000"):
        g.sql("SELECT '\x00'")
    with pytest.raises(InvalidInputError, match="surrogate"):
        g.step("SELECT '\ud800'")
    with pytest.raises(InvalidInputError, match="U\\+0000"):
        g.http("https://x", headers={"a": "\x00"})
    with pytest.raises(InvalidInputError, match="out of range"):
        g.sleep(2**63)
    with pytest.raises(InvalidInputError, match="out of range"):
        g.wait_for_signal("go", 2**31)
    with pytest.raises(InvalidInputError, match="not a JSON number"):
        g.http("https://x", headers={"a": float("nan")})


# ----- 2. Generated expressions against the SQL DSL -----------------------------------------------------

class Expr(NamedTuple):
    """One expression both ways: a Python build (run lazily, so errors surface at build time) and the
    SQL DSL expression with %s parameters."""

    py: Callable[[], Any]
    sql: str
    params: tuple[Any, ...]
    is_text: bool = False  # a plain str operand (auto-wrapped), not a Node


def _outcome_py(build: Callable[[], Any]) -> tuple[str, str]:
    try:
        node = build()
    except InvalidInputError as exc:
        return "error", str(exc)
    text = str(node)
    assert str(g.step(text)) == text  # a node's text reads back as the same node
    return "ok", text


def _outcome_sql(db: psycopg.Connection, expr: str, params: tuple[Any, ...]) -> tuple[str, str]:
    try:
        row = db.execute(f"SELECT {expr}", params).fetchone()
    except psycopg.Error as exc:
        primary, detail = exc.diag.message_primary or "", exc.diag.message_detail
        if exc.sqlstate and not exc.sqlstate.startswith("DF") and detail:
            return "error", f"{primary}: {detail}"
        return "error", primary
    assert row is not None
    return "ok", row[0]


def assert_same(db: psycopg.Connection, e: Expr) -> None:
    e = node_of(e)  # a text alone: what any step argument of the SQL DSL makes of it
    py = _outcome_py(e.py)
    sq = _outcome_sql(db, e.sql, e.params)
    if py[0] == sq[0] == "error" and py[1] == "invalid input syntax for type json":
        assert sq[1].startswith(py[1]), (e.sql, e.params)
        return
    assert py == sq, (e.sql, e.params)


SAFE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
TEXTS = st.one_of(
    st.text(SAFE_CHARS, max_size=12),
    st.text(st.sampled_from("\x01\x07\x08\t\n\x0b\x0c\r\x1b\x1f\x7f\u2028\u0085\"'\\/{}[]:,é€😀 aZ$%"), max_size=8),
    st.sampled_from(["SELECT 1", "", " ", "{", "{}", "[1]", '"x"', "SELECT '{\"a\": 1}'", "it's \"q\" \\ / é😀\n\t\x01",
                     "{bad json", '{"a":1}', "\t{\"node_type\":\"SQL\"}"]),
)
KEYS = ['"node_type"', '"query"', '"result_name"', '"left_node"', '"right_node"', '"condition_node"',
        '"extra_nodes"', '"other"', '"node\\u005ftype"', '"qu\\u0065ry"', '"é"', '"k\\ud800"']
VALUES = ['"SQL"', '"THEN"', '"JOIN"', '"IF"', '"FOO"', '"S\\u0051L"', '"sql"', "5", "-0", "1.50", "1e2", "-2.5E-3",
          "12345678901234567890123", "null", "true", "false", "{}", "[]", '[{"node_type":"SQL","query":"x"} , 1]',
          '"a\\u00e9\\/b"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\ud800"', '"\\udc00x"', '"\\ud800\\ud800"',
          '"tab\\there \\u0001\\u001F"', '{"node_type" : "SQL", "query": "c"}', '"x\\"y\\\\z"', '"é😀"', '"\x7f"',
          '{"query": "\\u00e9", "node_type": "SQL"}', '"-- \\"quoted\\""', '"r"', '"bad name"', '"\\\\u0041"']
WS = st.sampled_from(["", "", " ", "\n", "\t ", "\r\n  "])


@st.composite
def envelope_texts(draw: st.DrawFn) -> str:
    """JSON-ish texts near envelopes: key order, spacing, escapes, duplicates, wrong types, bad JSON."""
    members = draw(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=5))
    if draw(st.booleans()):
        members.insert(draw(st.integers(0, len(members))),
                       ('"node_type"', draw(st.sampled_from(['"SQL"', '"THEN"', '"JOIN"', '"LOOP"', '"FOO"']))))
    body = ",".join(draw(WS) + k + draw(WS) + ":" + draw(WS) + v + draw(WS) for k, v in members)
    text = draw(st.sampled_from(["", "", " ", "\n"])) + "{" + body + draw(WS) + "}"
    tail = draw(st.sampled_from(["", "", "", " ", "x", "}", "\n\t"]))
    if tail == "}" and draw(st.booleans()):
        return text[:-1]
    return text + tail


def text_leaf(t: str) -> Expr:
    return Expr(lambda: t, "%s::text", (t,), is_text=True)


def node_of(e: Expr) -> Expr:
    """The expression as a Node: a plain text goes through step() (SQL: the DSL's own reading of it)."""
    if not e.is_text:
        return e
    return Expr(lambda: g.step(e.py()), f"df._ensure_v1({e.sql})", e.params)


# Pools of (mostly valid, rarely invalid) arguments: one leaf in ~25 may carry an invalid one, so that
# most generated expressions build and errors still turn up inside every kind of nesting.
GOOD_NAMES = ["r", "last", "_x9", "A"]
BAD_NAMES = ["", "1bad", "bad name", "é", "a-b", "a\n", "%s", "'q'"]
GOOD_CRONS = ["*/5 * * * *", "0 9 * * 0", "0 0 1 JAN MON 2030", "0 0 * * 7", " 1  2 3 4 5 ", "1,2,3-5/2 * * * *"]
BAD_CRONS = ["61 * * * *", "every minute", "5-1 * * * *", "*/0 * * * *", "0 0 * * * 2100", "* * * * * * *"]
GOOD_URLS = ["https://example.com/hook", "http://h/{id}", "HTTPS://A/é", "{base}/x", "Http://x"]
BAD_URLS = ["ftp://h/x", "example.com", ""]
GOOD_METHODS = ["get", "POST", "Patch", "delete", "put"]
BAD_METHODS = ["fetch", "GET ", "poſt"]
GOOD_PART_METHODS = ["POST", "put", "Patch"]
BAD_PART_METHODS = ["get", "poſt", "DELETE"]
HEADERS: list[Any] = [
    None, {"X-Api-Key": "k1", "Accept": "application/json"}, {"b": 1, "aa": 2.5, "é": [1e16, -0.0, 1e-7, 10**20]},
    '{"Zz": "1", "a": {"y": 1.50, "x": 1e2}, "a": "last"}', '{"€": true, "e": null, "ee": "\\u00e9\\/"}', "[1, 2]",
    "null", {"k": "tab\there\n"},
]  # jsonb texts PostgreSQL refuses are refused while the statement is planned: see HAND
GOOD_PARTS: list[Any] = [[{"name": "f", "data_b64": "aGk="}], PARTS_TEXT, [{"content_type": "text/plain", "name": "é"}],
                         '[{"name":"f","data_b64":"aGk=","size":1.0}, {"name":"g"}]']
BAD_PARTS: list[Any] = [None, "null", "[]", "{}", "[1]"]


def _jsonb_param(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


@st.composite
def leaves(draw: st.DrawFn) -> Expr:
    bad = draw(st.integers(0, 24)) == 0

    def pick(good: list[Any], invalid: list[Any]) -> Any:
        return draw(st.sampled_from(good + invalid if bad else good))

    kind = draw(st.sampled_from(["text", "text", "envelope", "sql", "sleep", "break", "signal", "schedule", "http",
                                 "multipart"]))
    if kind == "text":
        return text_leaf(draw(TEXTS))
    if kind == "envelope":
        return text_leaf(draw(envelope_texts()))
    if kind == "sql":
        q = draw(TEXTS)
        return Expr(lambda: g.sql(q), "df.sql(%s::text)", (q,))
    if kind == "sleep":
        n = draw(st.integers(-3, 40) | st.integers(-(2**63), 2**63 - 1) if bad else st.integers(0, 2**63 - 1))
        return Expr(lambda: g.sleep(n), "df.sleep(%s::bigint)", (n,))
    if kind == "break":
        v = draw(st.one_of(st.none(), TEXTS))
        return Expr(lambda: g.break_(v), "df.break(%s::text)", (v,))
    if kind == "signal":
        name = draw(st.one_of(TEXTS, st.just("go")).filter(lambda x: bad or x != ""))
        t = draw(st.one_of(st.none(), st.integers(-2, 5) if bad else st.integers(1, 5), st.integers(1, 2**31 - 1)))
        return Expr(lambda: g.wait_for_signal(name, t), "df.wait_for_signal(%s::text, %s::integer)", (name, t))
    if kind == "schedule":
        cron = pick(GOOD_CRONS, BAD_CRONS)
        return Expr(lambda: g.wait_for_schedule(cron), "df.wait_for_schedule(%s::text)", (cron,))
    url, headers, timeout = pick(GOOD_URLS, BAD_URLS), draw(st.sampled_from(HEADERS)), pick([30, 1, 600], [0, -1])
    if kind == "http":
        method, body = pick(GOOD_METHODS, BAD_METHODS), draw(st.one_of(st.none(), TEXTS))
        return Expr(lambda: g.http(url, method, body, headers, timeout),
                    "df.http(%s::text, %s::text, %s::text, %s::jsonb, %s::integer)",
                    (url, method, body, _jsonb_param(headers), timeout))
    method, parts = pick(GOOD_PART_METHODS, BAD_PART_METHODS), pick(GOOD_PARTS, BAD_PARTS)
    return Expr(lambda: g.http_multipart(url, method, parts, headers, timeout),
                "df.http_multipart(%s::text, %s::text, %s::jsonb, %s::jsonb, %s::integer)",
                (url, method, _jsonb_param(parts), _jsonb_param(headers), timeout))


def _binary(kind: str, op: bool, a: Expr, b: Expr) -> Expr:
    fn = {"seq": g.seq, "join": g.join, "race": g.race}[kind]
    sql_op = {"seq": "~>", "join": "&", "race": "|"}[kind]
    if op and not (a.is_text and b.is_text):
        py_op: Callable[[Any, Any], Any] = {
            "seq": lambda x, y: x >> y, "join": lambda x, y: x & y, "race": lambda x, y: x | y}[kind]
        return Expr(lambda: py_op(a.py(), b.py()), f"({a.sql} {sql_op} {b.sql})", a.params + b.params)
    return Expr(lambda: fn(a.py(), b.py()), f"df.{'join' if kind == 'join' else kind}({a.sql}, {b.sql})",
                a.params + b.params)


def composites(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    @st.composite
    def build(draw: st.DrawFn) -> Expr:
        kind = draw(st.sampled_from(["seq", "join", "race", "join3", "if", "if_rows", "loop", "as"]))
        a, b = draw(children), draw(children)
        if kind in ("seq", "join", "race"):
            return _binary(kind, draw(st.booleans()), a, b)
        if kind == "join3":
            c = draw(children)
            return Expr(lambda: g.join(a.py(), b.py(), c.py()), f"df.join3({a.sql}, {b.sql}, {c.sql})",
                        a.params + b.params + c.params)
        if kind == "if":
            c = draw(children)
            return Expr(lambda: g.if_(c.py(), a.py(), b.py()), f'df."if"({c.sql}, {a.sql}, {b.sql})',
                        c.params + a.params + b.params)
        if kind == "if_rows":
            name = draw(st.one_of(st.sampled_from(GOOD_NAMES + BAD_NAMES), TEXTS))
            return Expr(lambda: g.if_rows(name, a.py(), b.py()), f"df.if_rows(%s::text, {a.sql}, {b.sql})",
                        (name,) + a.params + b.params)
        if kind == "loop":
            if draw(st.booleans()):
                return Expr(lambda: g.loop(a.py()), f"df.loop({a.sql})", a.params)
            return Expr(lambda: g.loop(a.py(), b.py()), f"df.loop({a.sql}, {b.sql})", a.params + b.params)
        name = draw(st.sampled_from(GOOD_NAMES * 6 + BAD_NAMES))
        fut = node_of(a)
        if re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) and draw(st.booleans()):
            return Expr(lambda: fut.py().as_(name), f"({fut.sql} |=> %s::text)", fut.params + (name,))
        return Expr(lambda: fut.py().as_(name), f'df."as"({fut.sql}, %s::text)', fut.params + (name,))

    return build()


EXPRESSIONS = st.recursive(leaves(), composites, max_leaves=10)
DB_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                               HealthCheck.too_slow])


@DB_SETTINGS
@given(e=EXPRESSIONS)
def test_generated_expressions_match_sql(db: psycopg.Connection, e: Expr) -> None:
    assert_same(db, e)


@DB_SETTINGS
@given(text=st.one_of(envelope_texts(), TEXTS), name=st.sampled_from(GOOD_NAMES + BAD_NAMES))
def test_envelope_texts_match_sql(db: psycopg.Connection, text: str, name: str) -> None:
    assert_same(db, text_leaf(text))
    assert_same(db, Expr(lambda: g.seq(text, "x"), "df.seq(%s::text, 'x')", (text,)))
    fut = node_of(text_leaf(text))
    assert_same(db, Expr(lambda: fut.py().as_(name), f'df."as"({fut.sql}, %s::text)', fut.params + (name,)))


@DB_SETTINGS
@given(expr=st.one_of(st.text(st.sampled_from("0123456789*/-, \tJANjanMONsunFebX"), max_size=24),
                      st.sampled_from(GOOD_CRONS + BAD_CRONS)))
def test_cron_texts_match_sql(db: psycopg.Connection, expr: str) -> None:
    assert_same(db, Expr(lambda: g.wait_for_schedule(expr), "df.wait_for_schedule(%s::text)", (expr,)))


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(SAFE_CHARS, max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(SAFE_CHARS, max_size=4), inner,
                                                                         max_size=4)),
    max_leaves=8,
)


@DB_SETTINGS
@given(headers=st.dictionaries(st.text(SAFE_CHARS, max_size=5), JSON_VALUES, max_size=5), as_text=st.booleans())
def test_jsonb_arguments_match_sql(db: psycopg.Connection, headers: dict[str, Any], as_text: bool) -> None:
    # Python values reach SQL as psycopg would send them (json.dumps); the same text can be given to the builder.
    text = json.dumps(headers)
    arg: Any = text if as_text else headers
    assert_same(db, Expr(lambda: g.http("https://x", headers=arg), "df.http('https://x', headers => %s::jsonb)",
                         (text,)))
    parts = [headers]
    assert_same(db, Expr(lambda: g.http_multipart("https://x", parts=parts),
                         "df.http_multipart('https://x', parts => %s::jsonb)", (json.dumps(parts),)))


# A 300-deep THEN chain as jsonb prints it: nesting deeper than Python's recursion would allow twice over.
DEEP = json.dumps(json.loads(str(reduce(g.seq, [g.sql(f"s{i}") for i in range(300)]))))
BIG_NUMBERS = ("[18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809, 0.000001, "
               "1e21, 1e16, 123456789012345678, 1.0E+2, -0.0, 0.1e-5, 5e-324]")
HAND: list[tuple[str, Callable[[], Any], str]] = [
    ("as-op-names-the-then", lambda: (g.sql("a") >> "b").as_("x"), "df.sql('a') ~> 'b' |=> 'x'"),
    ("python-grouping", lambda: (g.sql("a") & "b") >> "c", "df.sql('a') & 'b' ~> 'c'"),
    ("python-grouping-race", lambda: (g.sql("a") | "b") & "c", "df.sql('a') | 'b' & 'c'"),
    ("partial-if", lambda: g.if_("SELECT true", "SELECT 1", "SELECT 2"), "'SELECT true' ?> 'SELECT 1' !> 'SELECT 2'"),
    ("partial-if-nodes", lambda: g.if_(g.sql("c"), g.sleep(1), "e"), "df.sql('c') ?> df.sleep(1) !> 'e'"),
    ("loop-prefix", lambda: g.loop(g.sql("a") >> "b"), "@> (df.sql('a') ~> 'b')"),
    ("e33-canonical-top", lambda: g.step(E33_INPUT) >> g.step(E33_INPUT),
     f"df.seq({quote(E33_INPUT)}, {quote(E33_INPUT)})"),
    ("escaped-query-normalised", lambda: g.step('{"node_type":"SQL","query":"\\u00e9\\/\\u0041"}') & "x",
     """'{"node_type":"SQL","query":"\\u00e9\\/\\u0041"}' & 'x'"""),
    ("children-kept", lambda: g.step('{"node_type":"LOOP","left_node": { "query" : "\\u00e9" ,"node_type":"SQL" } ,'
                                     '"zz":1,"condition_node":[1, 2],"result_name":null}').as_("n"),
     """df.as('{"node_type":"LOOP","left_node": { "query" : "\\u00e9" ,"node_type":"SQL" } ,"zz":1,"condition_node":[1, 2],"result_name":null}', 'n')"""),
    ("extra-kept", lambda: g.step('{"node_type":"JOIN","extra_nodes":[ {"a" : 1} , "s" ],"left_node":1,"right_node":"x"}') >> "y",
     """'{"node_type":"JOIN","extra_nodes":[ {"a" : 1} , "s" ],"left_node":1,"right_node":"x"}' ~> 'y'"""),
    ("extra-empty-omitted", lambda: g.step('{"node_type":"JOIN","extra_nodes":[],"left_node":{},"right_node":{}}') | "y",
     """'{"node_type":"JOIN","extra_nodes":[],"left_node":{},"right_node":{}}' | 'y'"""),
    ("leading-space-envelope", lambda: g.seq(' \n{"node_type":"SLEEP","query":"5"}', "x"),
     """df.seq(E' \\n{"node_type":"SLEEP","query":"5"}', 'x')"""),
    ("last-node-type-wins", lambda: g.step('{"node_type":5,"node_type":"SQL","query":"q"}') >> "x",
     """'{"node_type":5,"node_type":"SQL","query":"q"}' ~> 'x'"""),
    ("node-type-not-string", lambda: g.step('{"node_type":"SQL","node_type":5}') >> "x",
     """'{"node_type":"SQL","node_type":5}' ~> 'x'"""),
    ("nul-escape", lambda: g.seq('{"q":"\\u0000"}', "x"), """df.seq('{"q":"\\u0000"}', 'x')"""),
    ("deep-chain-text", lambda: g.step(DEEP).as_("deep"), f"df.as({quote(DEEP)}, 'deep')"),
    ("headers-bad-json", lambda: g.http("https://x", headers='{"bad": }'),
     """df.http('https://x', headers => '{"bad": }')"""),
    ("headers-nul", lambda: g.http("https://x", headers='{"a": "\\u0000", "b": }'),
     """df.http('https://x', headers => '{"a": "\\u0000", "b": }')"""),
    ("headers-surrogate", lambda: g.http("https://x", headers='{"a": "\\ud800"}'),
     """df.http('https://x', headers => '{"a": "\\ud800"}')"""),
    ("parts-bad-json", lambda: g.http_multipart("https://x", parts='[{"a":1},]'),
     """df.http_multipart('https://x', parts => '[{"a":1},]')"""),
    ("headers-dup-last-wins", lambda: g.http("https://x", headers='{"a":1,"a":2,"B":1.50,"c":1e400}'),
     """df.http('https://x', headers => '{"a":1,"a":2,"B":1.50,"c":1e400}')"""),
    ("headers-big-numbers", lambda: g.http("https://x", headers=BIG_NUMBERS),
     f"df.http('https://x', headers => '{BIG_NUMBERS}')"),
    ("headers-underflow", lambda: g.http("https://x", headers="[1, 1e-400]"),
     "df.http('https://x', headers => '[1, 1e-400]')"),
    ("null-members-absent", lambda: g.step('{"node_type":"SQL","left_node":null,"query":"q","result_name":null,'
                                           '"condition_node":null}') >> "x",
     """'{"node_type":"SQL","left_node":null,"query":"q","result_name":null,"condition_node":null}' ~> 'x'"""),
    ("nul-escape-in-key", lambda: g.seq('{"\\u0000":1,"node_type":"SQL"}', "x"),
     """df.seq('{"\\u0000":1,"node_type":"SQL"}', 'x')"""),
    ("surrogate-in-key", lambda: g.seq('{"node_type":"SQL","\\udc00":1}', "x"),
     """df.seq('{"node_type":"SQL","\\udc00":1}', 'x')"""),
    ("surrogate-bad-json-wins", lambda: g.seq('{"node_type":"SQL","\\udc00":1,}', "x"),
     """df.seq('{"node_type":"SQL","\\udc00":1,}', 'x')"""),
]


@pytest.mark.parametrize(("case", "build", "expr"), HAND, ids=[h[0] for h in HAND])
def test_hand_cases_match_sql(db: psycopg.Connection, case: str, build: Callable[[], Any], expr: str) -> None:
    assert_same(db, Expr(build, expr, ()))
