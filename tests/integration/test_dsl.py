"""The workflow DSL (sql/src/30_dsl.sql): envelopes and errors byte for byte.

Expected outputs are PGD_FIXTURES.md sections 1 and 2 (E1-E33, X1-X11),
PGD_REFERENCE.md 1.1, 1.5, 1.6, 2.1 and 2.2, and CONTRACT.md section 9 where
we deliberately differ.  Every operator case runs as an ordinary LOGIN role,
so the operators must resolve under the default search_path.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from tests.conftest import dsn_as

ROOT = Path(__file__).resolve().parents[2]

VALID_TYPES = "SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL"
DEPTH_MSG = (
    "Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances."
)

E2 = '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}'
E11 = (
    '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},'
    '"condition_node":{"node_type":"SQL","query":"SELECT true"}}'
)
E14 = '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"}}'
E16 = '{"node_type":"BREAK","query":"{\\"break_value\\":null}"}'
E22 = '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"go\\",\\"timeout_seconds\\":null}"}'

# PGD_FIXTURES.md section 1, verbatim.
ENVELOPES: list[tuple[str, str, str]] = [
    ("E1", "df.sql('SELECT 1')", '{"node_type":"SQL","query":"SELECT 1"}'),
    ("E2", "'SELECT 1' ~> 'SELECT 2'", E2),
    ("E3", "df.seq(df.sql('SELECT 1'), 'SELECT 2')", E2),
    (
        "E4",
        "'SELECT 1' ~> 'SELECT 2' ~> 'SELECT 3'",
        '{"node_type":"THEN","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}',
    ),
    (
        "E5",
        "'SELECT 42 AS answer' |=> 'r'",
        '{"node_type":"SQL","query":"SELECT 42 AS answer","result_name":"r"}',
    ),
    (
        "E5b",
        "df.as('SELECT 42 AS answer','r')",
        '{"node_type":"SQL","query":"SELECT 42 AS answer","result_name":"r"}',
    ),
    (
        "E6",
        "'SELECT 1' ~> 'SELECT 2' |=> 'last'",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"},"result_name":"last"}',
    ),
    ("E7", "df.as(df.as('SELECT 1','a'),'b')", '{"node_type":"SQL","query":"SELECT 1","result_name":"b"}'),
    (
        "E8",
        "'SELECT 1' & 'SELECT 2'",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    ),
    (
        "E8b",
        "df.join('SELECT 1', 'SELECT 2')",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    ),
    (
        "E9",
        "df.join3('SELECT 1','SELECT 2','SELECT 3')",
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},'
        '"extra_nodes":[{"node_type":"SQL","query":"SELECT 3"}]}',
    ),
    (
        "E10",
        "'SELECT 1' | df.sleep(5)",
        '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}}',
    ),
    (
        "E10b",
        "df.race('SELECT 1', df.sleep(5))",
        '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}}',
    ),
    ("E11", "df.if('SELECT true','SELECT 1','SELECT 2')", E11),
    ("E12", "'SELECT true' ?> 'SELECT 1' !> 'SELECT 2'", E11),
    (
        "E13",
        "df.if_rows('r','SELECT 1','SELECT 2')",
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},'
        '"query":"{\\"condition_type\\":\\"result_has_rows\\",\\"result_name\\":\\"r\\"}"}',
    ),
    ("E14", "df.loop('SELECT 1')", E14),
    ("E14b", "@> 'SELECT 1'", E14),
    ("E14c", "df.loop('SELECT 1', NULL)", E14),
    (
        "E15",
        "df.loop('SELECT 1','SELECT false')",
        '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"condition_node":{"node_type":"SQL","query":"SELECT false"}}',
    ),
    ("E16", "df.break()", E16),
    ("E16b", "df.break(NULL)", E16),
    (
        "E17",
        """df.break('{"status": "done"}')""",
        '{"node_type":"BREAK","query":"{\\"break_value\\":\\"{\\\\\\"status\\\\\\": \\\\\\"done\\\\\\"}\\"}"}',
    ),
    ("E18", "df.break('finished')", '{"node_type":"BREAK","query":"{\\"break_value\\":\\"finished\\"}"}'),
    ("E19", "df.sleep(0)", '{"node_type":"SLEEP","query":"0"}'),
    ("E20", "df.sleep(30)", '{"node_type":"SLEEP","query":"30"}'),
    (
        "E21",
        "df.wait_for_schedule('*/5 * * * *')",
        '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"*/5 * * * *\\"}"}',
    ),
    ("E22", "df.wait_for_signal('go')", E22),
    ("E22b", "df.wait_for_signal('go', NULL)", E22),
    (
        "E23",
        "df.wait_for_signal('approve', 3600)",
        '{"node_type":"SIGNAL","query":"{\\"signal_name\\":\\"approve\\",\\"timeout_seconds\\":3600}"}',
    ),
    (
        "E24",
        "df.http('https://example.com/hook')",
        '{"node_type":"HTTP","query":"{\\"url\\":\\"https://example.com/hook\\",\\"method\\":\\"POST\\",\\"body\\":null,'
        '\\"headers\\":null,\\"timeout_seconds\\":30}"}',
    ),
    (
        "E25",
        """df.http('https://api.github.com/x','get',NULL,'{"X-Api-Key":"k1","Accept":"application/json"}',10)""",
        '{"node_type":"HTTP","query":"{\\"url\\":\\"https://api.github.com/x\\",\\"method\\":\\"GET\\",\\"body\\":null,'
        '\\"headers\\":{\\"Accept\\":\\"application/json\\",\\"X-Api-Key\\":\\"k1\\"},\\"timeout_seconds\\":10}"}',
    ),
    (
        "E26",
        """df.http('https://fn.azurewebsites.net/api/f','POST','{"a":1}')""",
        '{"node_type":"HTTP","query":"{\\"url\\":\\"https://fn.azurewebsites.net/api/f\\",\\"method\\":\\"POST\\",'
        '\\"body\\":\\"{\\\\\\"a\\\\\\":1}\\",\\"headers\\":null,\\"timeout_seconds\\":30}"}',
    ),
    (
        "E27",
        """df.http_multipart('https://fn.azurewebsites.net/api/up','POST',
      '[{"name":"file","filename":"a.txt","content_type":"text/plain","data_b64":"aGk="}]')""",
        '{"node_type":"HTTP_MULTIPART","query":"{\\"url\\":\\"https://fn.azurewebsites.net/api/up\\",\\"method\\":\\"POST\\",'
        '\\"parts\\":[{\\"name\\":\\"file\\",\\"data_b64\\":\\"aGk=\\",\\"filename\\":\\"a.txt\\",\\"content_type\\":\\"text/plain\\"}],'
        '\\"headers\\":null,\\"timeout_seconds\\":30}"}',
    ),
    (
        "E28",
        "df.loop(df.join(df.race('SELECT 1', df.sleep(5)), 'SELECT 2'))",
        '{"node_type":"LOOP","left_node":{"node_type":"JOIN","left_node":{"node_type":"RACE","left_node":'
        '{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SLEEP","query":"5"}},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}}}',
    ),
    (
        "E29",
        r"""df.sql(E'it''s "q" \\ / é😀\n\t\x01')""",
        r"""{"node_type":"SQL","query":"it's \"q\" \\ / é😀\n\t\u0001"}""",
    ),
    (
        "E30",
        "'SELECT true' ?> 'SELECT 1'",
        '{"condition": "SELECT true", "_partial_if": true, "then_branch": "SELECT 1"}',
    ),
    (
        "E30b",
        "df.sql('SELECT true') ?> 'SELECT 1'",
        '{"condition": "{\\"node_type\\":\\"SQL\\",\\"query\\":\\"SELECT true\\"}", "_partial_if": true, "then_branch": "SELECT 1"}',
    ),
    (
        "E31",
        """'{"a":1}' ~> 'SELECT 2'""",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\\"a\\":1}"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    ),
    (
        "E32",
        """'{"node_type":"FOO"}' ~> 'SELECT 2'""",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"{\\"node_type\\":\\"FOO\\"}"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    ),
    (
        "E33",
        "df.as((df.sql('a') ~> 'b')::jsonb::text, 'x')",
        '{"node_type":"THEN","left_node":{"query": "a", "node_type": "SQL"},"right_node":{"query": "b", "node_type": "SQL"},'
        '"result_name":"x"}',
    ),
]

CHAIN_258 = " ~> ".join(f"'s{i}'" for i in range(1, 259))

# PGD_FIXTURES.md section 2: (id, expression, SQLSTATE, exact message).  Our
# SQLSTATEs are DF001 where pg_durable says XX000 (and for X10, P0001 there);
# X10b keeps PostgreSQL's own 22P02.  df.start's checks are exercised through
# the functions df.start uses: _ensure_strict_v1 (X7) and _flatten_v1 (X7b, X8).
ERRORS: list[tuple[str, str, str, str]] = [
    (
        "X1",
        "'SELECT 1' |=> '1bad'",
        "DF001",
        "df.as: result name '1bad' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*",
    ),
    (
        "X1-as",
        "df.as('SELECT 1', '1bad')",
        "DF001",
        "df.as: result name '1bad' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*",
    ),
    # The name is checked before the step is parsed.
    (
        "X1-first",
        """df.as('{"node_type":"SQL","query":5}', 'bad name')""",
        "DF001",
        "df.as: result name 'bad name' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*",
    ),
    ("X1b", "df.as('SELECT 1','')", "DF001", "df.as: result name cannot be empty"),
    ("X2", "df.sleep(-1)", "DF001", "Sleep duration must be non-negative"),
    (
        "X3",
        "df.wait_for_schedule('61 * * * *')",
        "DF001",
        "Invalid cron expression '61 * * * *': Invalid expression: Invalid cron expression.",
    ),
    (
        "X3b",
        "df.wait_for_schedule('every minute')",
        "DF001",
        "Invalid cron expression 'every minute': Invalid expression: Invalid cron expression.",
    ),
    # X3's third input, '0 9 * * 0', is VALID for us: a deliberate difference
    # (CONTRACT.md section 9: standard cron, 0 and 7 = Sunday); see test_cron_valid.
    ("X4", "df.wait_for_signal('')", "DF001", "Signal name cannot be empty"),
    ("X4-first", "df.wait_for_signal('', 0)", "DF001", "Signal name cannot be empty"),
    ("X5", "df.wait_for_signal('go', 0)", "DF001", "Timeout must be positive"),
    ("X5b", "df.http('https://example.com/hook','GET',NULL,NULL,0)", "DF001", "Timeout must be positive"),
    (
        "X5c",
        """df.http_multipart('https://fn.azurewebsites.net/api/up','POST','[{"name":"f","data_b64":"aGk="}]',NULL,0)""",
        "DF001",
        "Timeout must be positive",
    ),
    (
        "X6",
        "df.http('https://example.com','fetch')",
        "DF001",
        "Invalid HTTP method: fetch. Must be GET, POST, PUT, DELETE, or PATCH",
    ),
    (
        "X6b",
        """df.http_multipart('https://fn.azurewebsites.net/api/up','GET','[{"name":"f","data_b64":"aGk="}]')""",
        "DF001",
        "Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH",
    ),
    (
        "X6c",
        "df.http('ftp://h/x')",
        "DF001",
        "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed.",
    ),
    (
        "X6c2",
        "df.http('example.com')",
        "DF001",
        "Blocked: unsupported URL scheme 'example.com'. Only http and https are allowed.",
    ),
    (
        "X7",
        """df._ensure_strict_v1('{"node_type":"FOO"}')""",
        "DF001",
        f"Invalid durable function: Unknown node_type 'FOO'. Valid types: {VALID_TYPES}",
    ),
    (
        "X7b",
        """(SELECT count(*) FROM df._flatten_v1(df._ensure_strict_v1(
        '{"node_type":"THEN","left_node":{"node_type":"FOO"},"right_node":{"node_type":"SQL","query":"x"}}')))""",
        "DF002",
        f"Invalid durable function graph: root.left: Unknown node_type 'FOO'. Valid types: {VALID_TYPES}",
    ),
    (
        "X8",
        f"(SELECT count(*) FROM df._flatten_v1(df._ensure_strict_v1({CHAIN_258})))",
        "DF002",
        "Invalid durable function graph: root" + ".left" * 257 + ": " + DEPTH_MSG,
    ),
    (
        "X10",
        "df.sql('SELECT 1') !> 'SELECT 2'",
        "DF001",
        "Invalid if-then-else: left side of !> must be a ?> expression",
    ),
    ("X10b", "'SELECT 1' !> 'SELECT 2'", "22P02", "invalid input syntax for type json"),
    (
        "X11",
        "df.seq(df.setvar('a','1'), 'SELECT 1')",
        "DF001",
        "df.setvar cannot be used as a workflow step. Call df.setvar before df.start().",
    ),
    (
        "X11-unsetvar",
        "df.seq(df.unsetvar('a'), 'SELECT 1')",
        "DF001",
        "df.unsetvar cannot be used as a workflow step. Call df.unsetvar before df.start().",
    ),
    (
        "X11-clearvars",
        "df.seq('SELECT 1', df.clearvars())",
        "DF001",
        "df.clearvars cannot be used as a workflow step. Call df.clearvars before df.start().",
    ),
    (
        "X11-start",
        "df._ensure_strict_v1(df.setvar('a','1'))",
        "DF001",
        "df.setvar cannot be used as a workflow step. Call df.setvar before df.start().",
    ),
    (
        "X11-op",
        "df.setvar('a','1') & 'SELECT 1'",
        "DF001",
        "df.setvar cannot be used as a workflow step. Call df.setvar before df.start().",
    ),
    (
        "X11-loop",
        "df.loop('SELECT 1', df.clearvars())",
        "DF001",
        "df.clearvars cannot be used as a workflow step. Call df.clearvars before df.start().",
    ),
]


@pytest.fixture
def user(
    db: psycopg.Connection, make_role: Callable[..., str], connect_as: Callable[..., psycopg.Connection]
) -> psycopg.Connection:
    """An ordinary LOGIN role with df usage (HTTP builders included), default search_path."""
    role = make_role(grant=False)
    db.execute("SELECT df.grant_usage(%s, include_http => true)", (role,))
    return connect_as(role)


def one(conn: psycopg.Connection, expr: str) -> object:
    row = conn.execute(f"SELECT {expr}").fetchone()
    assert row is not None
    return row[0]


def error_of(conn: psycopg.Connection, expr: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"SELECT {expr}")
    return info.value


# ----- E1-E33 -----------------------------------------------------------------


@pytest.mark.parametrize(("case", "expr", "expected"), ENVELOPES, ids=[c[0] for c in ENVELOPES])
def test_envelope(user: psycopg.Connection, case: str, expr: str, expected: str) -> None:
    assert one(user, expr) == expected


# ----- X1-X11 -----------------------------------------------------------------


@pytest.mark.parametrize(("case", "expr", "sqlstate", "message"), ERRORS, ids=[c[0] for c in ERRORS])
def test_error(user: psycopg.Connection, case: str, expr: str, sqlstate: str, message: str) -> None:
    err = error_of(user, expr)
    assert err.sqlstate == sqlstate
    assert err.diag.message_primary == message


def test_x10b_keeps_postgres_details(user: psycopg.Connection) -> None:
    err = error_of(user, "'SELECT 1' !> 'SELECT 2'")
    assert err.diag.message_detail == 'Token "SELECT" is invalid.'
    assert err.diag.context is not None
    assert "PL/pgSQL function df.if_else_op(text,text) line 7 at assignment" in err.diag.context


def test_x10_points_where_pg_durable_does(user: psycopg.Connection) -> None:
    err = error_of(user, "df.sql('SELECT 1') !> 'SELECT 2'")
    assert err.diag.context == "PL/pgSQL function df.if_else_op(text,text) line 11 at RAISE"


def test_x9_break_at_root_passes_the_build_time_checks(user: psycopg.Connection) -> None:
    rows = user.execute(
        "SELECT ord, parent_ord, node_type, query FROM df._flatten_v1(df._ensure_strict_v1(df.break()))"
    ).fetchall()
    assert rows == [(1, None, "BREAK", '{"break_value":null}')]


def test_x11_only_the_returned_value_is_refused(user: psycopg.Connection) -> None:
    # pg_durable refuses ANY later non-JSON step argument in the statement;
    # we refuse only the value the helper returned (CONTRACT.md section 9).
    row = user.execute("SELECT df.setvar('a','1'), df.seq('SELECT 1','SELECT 2')").fetchone()
    assert row == ("OK", E2)
    row = user.execute("SELECT df.clearvars(), 'SELECT 1' ~> 'SELECT 2'").fetchone()
    assert row == ("OK", E2)
    # The same text in a later statement is an ordinary step.
    user.execute("SELECT df.setvar('a','1')")
    assert one(user, "df.seq('OK', 'SELECT 2')") == (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"OK"},"right_node":{"node_type":"SQL","query":"SELECT 2"}}'
    )


def test_x11_in_an_explicit_transaction(user: psycopg.Connection) -> None:
    with user.transaction():
        user.execute("SELECT df.setvar('a','1')")
        # A later statement of the same transaction may use the text as a step.
        assert one(user, "df.sql('x') ~> 'OK'") == (
            '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"SQL","query":"OK"}}'
        )
    with pytest.raises(psycopg.Error) as info, user.transaction():
        user.execute("SELECT df.seq(df.unsetvar('a'), 'x')")
    assert info.value.diag.message_primary == (
        "df.unsetvar cannot be used as a workflow step. Call df.unsetvar before df.start()."
    )


def test_x11_records_other_helpers(user: psycopg.Connection) -> None:
    # df.await_instance & co record their result through the same helper.
    err = error_of(user, "df.seq(df._note_step_helper_v1('df.await_instance', 'completed'), 'SELECT 1')")
    assert err.sqlstate == "DF001"
    assert err.diag.message_primary == (
        "df.await_instance cannot be used as a workflow step. Call df.await_instance before df.start()."
    )
    row = user.execute(
        "SELECT df._note_step_helper_v1('df.await_instance', 'completed'), 'SELECT 1' ~> 'failed'"
    ).fetchone()
    assert row is not None and row[0] == "completed" and '"query":"failed"' in row[1]


# ----- Operators and precedence (PGD_REFERENCE.md 1.6) --------------------------

PRECEDENCE = [
    # All binary operators share one precedence, left-associative.
    (
        "then-names",
        "'SELECT 1' ~> 'SELECT 2' |=> 'a' ~> 'SELECT 3'",
        '{"node_type":"THEN","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"},"result_name":"a"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 3"}}',
    ),
    (
        "parens-name-right",
        "'SELECT 1' ~> ('SELECT 2' |=> 'b')",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2","result_name":"b"}}',
    ),
    (
        "join-then-race",
        "'SELECT 1' & 'SELECT 2' | 'SELECT 3'",
        '{"node_type":"RACE","left_node":{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}',
    ),
    (
        "race-then-join",
        "'SELECT 1' | 'SELECT 2' & 'SELECT 3'",
        '{"node_type":"JOIN","left_node":{"node_type":"RACE","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"}},"right_node":{"node_type":"SQL","query":"SELECT 3"}}',
    ),
    # x ~> c ?> t !> e uses (x ~> c) as the condition.
    (
        "seq-is-condition",
        "'SELECT 3' ~> 'SELECT true' ?> 'SELECT 1' !> 'SELECT 2'",
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":{"node_type":"SQL","query":"SELECT 2"},'
        '"condition_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"SELECT 3"},'
        '"right_node":{"node_type":"SQL","query":"SELECT true"}}}',
    ),
    (
        "if-then-seq",
        "'SELECT true' ?> 'SELECT 1' !> 'SELECT 2' ~> 'SELECT 3'",
        '{"node_type":"THEN","left_node":' + E11 + ',"right_node":{"node_type":"SQL","query":"SELECT 3"}}',
    ),
    # Prefix @> binds tighter than any binary operator.
    (
        "loop-prefix-binds-tight",
        "@> 'SELECT 1' ~> 'SELECT 2'",
        '{"node_type":"THEN","left_node":' + E14 + ',"right_node":{"node_type":"SQL","query":"SELECT 2"}}',
    ),
    ("loop-prefix-parens", "@> ('SELECT 1' ~> 'SELECT 2')", '{"node_type":"LOOP","left_node":' + E2 + "}"),
    (
        "loop-named",
        "@> 'SELECT 1' |=> 'l'",
        '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"},"result_name":"l"}',
    ),
]


@pytest.mark.parametrize(("case", "expr", "expected"), PRECEDENCE, ids=[c[0] for c in PRECEDENCE])
def test_precedence(user: psycopg.Connection, case: str, expr: str, expected: str) -> None:
    assert one(user, expr) == expected


def test_operator_helpers_are_callable(user: psycopg.Connection) -> None:
    assert (
        one(user, "df.as_op('SELECT 1', 'r')") == '{"node_type":"SQL","query":"SELECT 1","result_name":"r"}'
    )
    assert one(user, "df.if_else_op(df.if_then_op('SELECT true', 'SELECT 1'), 'SELECT 2')") == E11
    assert one(user, "df.loop_prefix_op('SELECT 1')") == E14


# ----- R-CHILD, R-JSON and auto-wrap (PGD_REFERENCE.md 2.2) -----------------------

AUTOWRAP = [
    # Children are copied byte for byte (spacing, key order, escapes).
    (
        "child-bytes",
        """df.seq('{"node_type":"THEN","left_node":{ "query" : "a\\u00e9",  "node_type":"SQL"},"right_node":{"node_type":"SQL","query":"b"}}', 'c')""",
        '{"node_type":"THEN","left_node":{"node_type":"THEN","left_node":{ "query" : "a\\u00e9",  "node_type":"SQL"},'
        '"right_node":{"node_type":"SQL","query":"b"}},"right_node":{"node_type":"SQL","query":"c"}}',
    ),
    # The top level is re-serialised: canonical order, escapes normalised,
    # unknown keys and null members dropped, whitespace around allowed.
    (
        "top-level-canonical",
        """df.seq(E' \\n{"result_name":"n","zz":[1, 2],"query":"caf\\\\u00e9 \\\\/ \\\\\\\\","left_node":null,"node_type":"SQL"}\\t', 'b')""",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"café / \\\\","result_name":"n"},'
        '"right_node":{"node_type":"SQL","query":"b"}}',
    ),
    (
        "extra-nodes-raw",
        """df.as('{"node_type":"JOIN","extra_nodes":[ {"a" : 1} , 2 ],"left_node":1,"right_node":"x"}', 'j')""",
        '{"node_type":"JOIN","left_node":1,"right_node":"x","extra_nodes":[{"a" : 1},2],"result_name":"j"}',
    ),
    (
        "empty-extra-dropped",
        """df.as('{"node_type":"SQL","query":"q","extra_nodes":[]}', 'j')""",
        '{"node_type":"SQL","query":"q","result_name":"j"}',
    ),
    # Rule 5: text, invalid JSON, arrays, numbers, objects without a string node_type.
    ("text", "df.as('hello', 'h')", '{"node_type":"SQL","query":"hello","result_name":"h"}'),
    (
        "empty",
        "df.seq('', '')",
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":""},"right_node":{"node_type":"SQL","query":""}}',
    ),
    (
        "invalid-json",
        """df.as('{"node_type":"SQL",', 'h')""",
        '{"node_type":"SQL","query":"{\\"node_type\\":\\"SQL\\",","result_name":"h"}',
    ),
    (
        "array",
        """df.as('[{"node_type":"SQL","query":"x"}]', 'h')""",
        '{"node_type":"SQL","query":"[{\\"node_type\\":\\"SQL\\",\\"query\\":\\"x\\"}]","result_name":"h"}',
    ),
    (
        "number-node-type",
        """df.as('{"node_type":5}', 'h')""",
        '{"node_type":"SQL","query":"{\\"node_type\\":5}","result_name":"h"}',
    ),
    # serde_json's Value keeps the last duplicate: a non-string last node_type is no envelope.
    (
        "last-node-type-wins",
        """df.as('{"node_type":"SQL","node_type":null}', 'h')""",
        '{"node_type":"SQL","query":"{\\"node_type\\":\\"SQL\\",\\"node_type\\":null}","result_name":"h"}',
    ),
    # Rule 4: an unknown node_type is wrapped as SQL text by composers.
    (
        "unknown-type",
        """df.as('{"node_type":"sql","query":"x"}', 'h')""",
        '{"node_type":"SQL","query":"{\\"node_type\\":\\"sql\\",\\"query\\":\\"x\\"}","result_name":"h"}',
    ),
    # df.as overwrites an existing name.
    (
        "as-overwrites",
        """df.as('{"node_type":"SQL","query":"x","result_name":"old"}', 'new')""",
        '{"node_type":"SQL","query":"x","result_name":"new"}',
    ),
]


@pytest.mark.parametrize(("case", "expr", "expected"), AUTOWRAP, ids=[c[0] for c in AUTOWRAP])
def test_autowrap(user: psycopg.Connection, case: str, expr: str, expected: str) -> None:
    assert one(user, expr) == expected


# (id, argument, its node_type, serde_json's message).  Rule 3 comes before
# rule 4: an unknown node_type that does not deserialise is an error too.
MALFORMED = [
    ("query-number", '{"node_type":"SQL","query":5}', "SQL", "invalid type: integer `5`, expected a string"),
    (
        "query-negative",
        '{"node_type":"SQL","query":-5}',
        "SQL",
        "invalid type: integer `-5`, expected a string",
    ),
    (
        "query-float",
        '{"node_type":"SQL","query":1.50}',
        "SQL",
        "invalid type: floating point `1.5`, expected a string",
    ),
    (
        "query-exp",
        '{"node_type":"SQL","query":1e2}',
        "SQL",
        "invalid type: floating point `100.0`, expected a string",
    ),
    ("query-map", '{"node_type":"SQL","query":{"a":1}}', "SQL", "invalid type: map, expected a string"),
    (
        "name-bool",
        '{"node_type":"SQL","query":"x","result_name":true}',
        "SQL",
        "invalid type: boolean `true`, expected a string",
    ),
    (
        "extra-null",
        '{"node_type":"JOIN","extra_nodes":null}',
        "JOIN",
        "invalid type: null, expected a sequence",
    ),
    (
        "extra-string",
        '{"node_type":"JOIN","extra_nodes":"a\\"b"}',
        "JOIN",
        'invalid type: string "a\\"b", expected a sequence',
    ),
    ("duplicate", '{"node_type":"SQL","query":"a","query":"b"}', "SQL", "duplicate field `query`"),
    (
        "duplicate-null",
        '{"node_type":"SQL","left_node":null,"left_node":null}',
        "SQL",
        "duplicate field `left_node`",
    ),
    ("unknown-and-bad", '{"node_type":"FOO","query":[]}', "FOO", "invalid type: sequence, expected a string"),
]
POSITION = re.compile(r" at line \d+ column \d+$")


@pytest.mark.parametrize(("case", "text", "node_type", "detail"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_envelope(
    user: psycopg.Connection, case: str, text: str, node_type: str, detail: str
) -> None:
    # serde_json's error positions are not pinned by the fixtures ([inferred] 6):
    # compare the message, then only the shape of the position suffix.
    err = error_of(user, f"df.seq({sql.quote(text)}, 'x')")
    assert err.sqlstate == "DF001"
    msg = err.diag.message_primary or ""
    prefix = "Invalid Durofut JSON: failed to deserialize workflow step: " + detail
    assert msg.startswith(prefix) and POSITION.fullmatch(msg[len(prefix) :]), msg
    err = error_of(user, f"df._ensure_strict_v1({sql.quote(text)})")
    assert err.sqlstate == "DF001"
    msg = err.diag.message_primary or ""
    prefix = f"Invalid durable function: Malformed Durofut JSON with node_type '{node_type}': " + detail
    assert msg.startswith(prefix) and POSITION.fullmatch(msg[len(prefix) :]), msg


def test_malformed_position_follows_serde(user: psycopg.Connection) -> None:
    # serde_json counts the bytes consumed on the line: after a scalar, at a container, after a
    # duplicate key (line 2: space 1 + "query" 7 + colon 1 + "é" 4 + comma 1 + "query" 7 = 21).
    cases = [
        ('{"node_type":"SQL","query":5}', "invalid type: integer `5`, expected a string at line 1 column 28"),
        ('{"node_type":"SQL","query":{"a":1}}', "invalid type: map, expected a string at line 1 column 27"),
        ('{"node_type":"SQL",\n "query":"é","query":"b"}', "duplicate field `query` at line 2 column 21"),
    ]
    for text, detail in cases:
        err = error_of(user, f"df.seq({sql.quote(text)}, 'x')")
        assert (
            err.diag.message_primary == "Invalid Durofut JSON: failed to deserialize workflow step: " + detail
        )


def test_ensure_strict(user: psycopg.Connection) -> None:
    assert one(user, "df._ensure_strict_v1('SELECT 1')") == {"node_type": "SQL", "query": "SELECT 1"}
    assert one(user, """df._ensure_strict_v1('{"a":1}')""") == {"node_type": "SQL", "query": '{"a":1}'}
    env = one(user, "df._ensure_strict_v1('SELECT 1' ~> 'SELECT 2')")
    assert env == json.loads(E2)
    assert one(user, """df._ensure_strict_v1('{"node_type":"SQL","query":"x","zz":1}')""") == {
        "node_type": "SQL",
        "query": "x",
    }
    err = error_of(user, "df._ensure_strict_v1(NULL)")
    assert err.sqlstate == "DF001"


# df._ensure_strict_v1 takes a fast path for an envelope whose text starts with '{' (0.3.0); a leading
# space keeps the same text on the strict parse (which skips leading whitespace).  Both must agree on
# every root: the envelope they build, or the error and its message.
STRICT_ROOTS = [
    E2,
    E11,
    E14,
    E16,
    '{"node_type":"SQL","query":"x","zz":1}',                                 # unknown member: left out
    '{"node_type":"SQL","query":"x","zz":1,"zz":2}',                          # repeated unknown member
    '{"node_type":"SQL","query":"x","result_name":null,"left_node":null}',    # null members: absent
    '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL",'
    '"query":"b"},"extra_nodes":[]}',                                          # empty extra_nodes: absent
    '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL",'
    '"query":"b"},"extra_nodes":[{"node_type":"SQL","query":"c"}]}',
    '{"node_type":"S\\u0051L","query":"\\u00e9\\/"}',                   # escapes
    '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a","query":"b"},'
    '"right_node":{"node_type":"SQL","query":"c"}}',                         # a child repeats: jsonb keeps the last
    '{"node_type":"SQL","query":"a","query":"b"}',                            # the root repeats: malformed
    '{"node_type":"SQL","query":"x","node_type":"SQL"}',
    '{"node_type":"SQL","query":5}',
    '{"node_type":"SQL","result_name":true}',
    '{"node_type":"SQL","query":"x","extra_nodes":null}',
    '{"node_type":"SQL","query":"x","extra_nodes":{}}',
    '{"node_type":"FOO","query":"x"}',
    '{"node_type":7,"query":"x"}',
    '{"node_type":null,"query":"x"}',
    '{"query":"x"}',
    '{"node_type":"SQL","query":"\\u0000"}',                                # json yes, jsonb no
    '{"node_type":"SQL","query":"x","n":1e999999}',
    '{"node_type":"SQL","query":"x","left_node":[]}',                          # only extra_nodes: [] is absent
    '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"a"},"condition_node":[]}',
    '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"a"},"right_node":[]}',
    '{"node_type":"RACE","left_node":[],"right_node":{"node_type":"SQL","query":"a"}}',
    '{"node_type":"SQL","query":"x"',                                         # not JSON: an SQL step
    '{"node_type":"SQL","query":"x"} trailing',
]


@pytest.mark.parametrize("text", STRICT_ROOTS)
def test_ensure_strict_fast_path_agrees_with_strict_parse(user: psycopg.Connection, text: str) -> None:
    def outcome(arg: str) -> tuple[str, object]:
        try:
            with user.transaction():
                return "ok", user.execute("SELECT df._ensure_strict_v1(%s)", (arg,)).fetchone()[0]  # type: ignore[index]
        except psycopg.Error as exc:
            # The position differs by the leading space; the rest must not.
            return exc.sqlstate or "", re.sub(r" at line \d+ column \d+$", "", exc.diag.message_primary or "")

    fast, strict = outcome(text), outcome(" " + text)
    if fast[0] == "ok" and isinstance(fast[1], dict) and fast[1].get("node_type") == "SQL" and "node_type" not in text:
        return  # not an envelope: both are an SQL step of their own (different) text
    if fast[0] == "ok" and strict[0] == "ok" and fast[1] != strict[1]:
        # Only text that is no envelope keeps its own text as the query.
        assert fast[1] == {"node_type": "SQL", "query": text} and strict[1] == {"node_type": "SQL", "query": " " + text}
        return
    assert fast == strict


# ----- NULLs, defaults, signatures ---------------------------------------------

STRICT_NULLS = [
    "df.sql(NULL)",
    "df.seq(NULL, 'x')",
    "df.seq('x', NULL)",
    "df.as(NULL, 'n')",
    "df.as('x', NULL)",
    "df.join(NULL, 'x')",
    "df.join3('x', 'y', NULL)",
    "df.race('x', NULL)",
    "df.if(NULL, 'a', 'b')",
    "df.if('c', 'a', NULL)",
    "df.if_rows(NULL, 'a', 'b')",
    "df.if_rows('r', 'a', NULL)",
    "df.sleep(NULL)",
    "df.wait_for_schedule(NULL)",
    "NULL::text ~> 'x'",
    "'x' |=> NULL::text",
    "'x' & NULL::text",
    "NULL::text | 'x'",
    "NULL::text ?> 'x'",
    "'c' ?> 'x' !> NULL::text",
    "@> NULL::text",
]


@pytest.mark.parametrize("expr", STRICT_NULLS)
def test_strict_null(user: psycopg.Connection, expr: str) -> None:
    assert one(user, expr) is None


@pytest.mark.parametrize(
    "expr",
    [
        "df.loop(NULL)",
        "df.loop(NULL, 'x')",
        "df.wait_for_signal(NULL)",
        "df.http(NULL)",
        "df.http('https://x', NULL)",
        "df.http('https://x', 'GET', NULL, NULL, NULL)",
        """df.http_multipart(NULL, 'POST', '[{"name":"f","data_b64":""}]')""",
    ],
)
def test_null_for_a_required_parameter_raises(user: psycopg.Connection, expr: str) -> None:
    assert error_of(user, expr).sqlstate == "DF001"


SIGNATURES = {
    "sql": "query text",
    "seq": "a text, b text",
    "as": "fut text, name text",
    "join": "a text, b text",
    "join3": "a text, b text, c text",
    "race": "a text, b text",
    "if": "condition text, then_branch text, else_branch text",
    "if_rows": "result_name text, then_branch text, else_branch text",
    "loop": "body text, condition text DEFAULT NULL::text",
    "break": "value text DEFAULT NULL::text",
    "sleep": "seconds bigint",
    "wait_for_schedule": "cron_expr text",
    "wait_for_signal": "name text, timeout_seconds integer DEFAULT NULL::integer",
    "http": "url text, method text DEFAULT 'POST'::text, body text DEFAULT NULL::text, "
    "headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30",
    "http_multipart": "url text, method text DEFAULT 'POST'::text, parts jsonb DEFAULT NULL::jsonb, "
    "headers jsonb DEFAULT NULL::jsonb, timeout_seconds integer DEFAULT 30",
    "as_op": "fut text, name text",
    "if_then_op": "condition text, then_branch text",
    "if_else_op": "partial_if text, else_branch text",
    "loop_prefix_op": "body text",
}
NOT_STRICT = {"loop", "break", "wait_for_signal", "http", "http_multipart"}
IMMUTABLE = {"as_op", "if_then_op", "if_else_op", "loop_prefix_op"}


def test_signatures(db: psycopg.Connection) -> None:
    rows = db.execute(
        """SELECT p.proname, pg_get_function_arguments(p.oid), p.proisstrict, p.provolatile, p.prosecdef,
                  p.proconfig, pg_get_function_result(p.oid)
             FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace AND p.proname = ANY(%s)""",
        (list(SIGNATURES),),
    ).fetchall()
    found = {r[0]: r for r in rows}
    assert set(found) == set(SIGNATURES), "one overload each"
    assert len(rows) == len(SIGNATURES)
    for name, (_, args, strict, volatile, secdef, config, result) in found.items():
        assert args == SIGNATURES[name], name
        assert strict == (name not in NOT_STRICT), name
        assert volatile == ("i" if name in IMMUTABLE else "v"), name
        assert secdef is False, name
        assert config is not None and "search_path=pg_catalog, pg_temp" in config, name
        assert result == "text", name


def test_internal_signatures(db: psycopg.Connection) -> None:
    assert db.execute(
        "SELECT pg_get_function_result('df._ensure_strict_v1(text)'::regprocedure)"
    ).fetchone() == ("jsonb",)
    assert db.execute("SELECT pg_get_function_result('df._flatten_v1(jsonb)'::regprocedure)").fetchone() == (
        "TABLE(ord integer, parent_ord integer, slot text, depth integer, path text, node_type text, query text, "
        "result_name text, left_ord integer, right_ord integer, cond_ord integer, extra_ords integer[])",
    )


def test_operators_resolve_to_the_helpers(db: psycopg.Connection) -> None:
    rows = db.execute(
        """SELECT o.oprname, p.proname FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode
            WHERE p.pronamespace = 'df'::regnamespace ORDER BY 1"""
    ).fetchall()
    assert dict(rows) == {
        "~>": "seq",
        "|=>": "as_op",
        "&": "join",
        "|": "race",
        "?>": "if_then_op",
        "!>": "if_else_op",
        "@>": "loop_prefix_op",
    }
    assert len(rows) == 7


def test_http_builders_need_include_http(
    make_role: Callable[..., str], connect_as: Callable[..., psycopg.Connection]
) -> None:
    role = make_role()
    conn = connect_as(role)
    for expr in (
        "df.http('https://example.com/hook')",
        """df.http_multipart('https://x', 'POST', '[{"name":"f","data_b64":""}]')""",
    ):
        with pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute(f"SELECT {expr}")
    assert one(conn, "df.sql('x')") == '{"node_type":"SQL","query":"x"}'


def test_http_details(user: psycopg.Connection) -> None:
    # A url with {var} is checked when the step runs; headers keep jsonb's
    # order and lose spaces; numbers go through serde_json (f64 for fractions).
    got = one(
        user,
        """df.http('{base}/x', 'Patch', 'b', '{"b": [1, 1.50, 1e2, -7, true, null, {"k": "v"}], "a": "x"}', 5)""",
    )
    query = json.loads(str(got))["query"]
    assert query == (
        '{"url":"{base}/x","method":"PATCH","body":"b","headers":{"a":"x","b":[1,1.5,100,-7,true,null,'
        '{"k":"v"}]},"timeout_seconds":5}'
    )
    got = one(
        user, """df.http('HTTP://h', 'delete', NULL, '{"x": 0.1, "y": 1e20, "z": 12345678901234567890123}')"""
    )
    assert json.loads(str(got))["query"] == (
        '{"url":"HTTP://h","method":"DELETE","body":null,"headers":{"x":0.1,"y":1e20,"z":1.2345678901234568e22},'
        '"timeout_seconds":30}'
    )


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ("NULL", "parts is required and cannot be NULL"),
        ("'{}'", "parts must be a JSON array of part objects"),
        ("'[1]'", "parts must be a JSON array of part objects"),
        ("'[]'", "parts must contain at least one part"),
    ],
)
def test_multipart_parts(user: psycopg.Connection, parts: str, message: str) -> None:
    err = error_of(user, f"df.http_multipart('https://x', 'POST', {parts})")
    assert (err.sqlstate, err.diag.message_primary) == ("DF001", message)


# ----- Cron (CONTRACT.md section 9: standard cron) -------------------------------

VALID_CRON = [
    "* * * * *",
    "*/5 * * * *",
    "0 9 * * 0",  # X3 rejects this one: pg_durable counts 1-7 from Sunday
    "0 9 * * 7",
    "0 9 * * 1-5",
    "0 9 * * MON-FRI",
    "0 9 * * mon,wed,Fri",
    "0 0 1 JAN *",
    "0 0 1 jan-mar/2 *",
    "0-59/15 0-23 1-31 1-12 0-7",
    "5/10 * * * *",
    "1,2,3-5/2 * * * *",
    "00 09 * * *",
    "  0  0   * * *  ",
    "0 0 * * * 2024",
    "0 0 * * * 1970-2099/2",
    "0 0 31 2 *",
    "0 12 * * SUN",
    "0 0 1 dec *",
]
INVALID_CRON = [
    "61 * * * *",
    "every minute",
    "",
    "* * * *",
    "* * * * * * *",
    "* 24 * * *",
    "* * 0 * *",
    "* * 32 * *",
    "* * * 0 *",
    "* * * 13 *",
    "* * * * 8",
    "*/0 * * * *",
    "5-1 * * * *",
    "0 9 * * FRI-MON",
    "* * JAN * *",
    "* * * * JAN",
    "0 9 * SUN * ",
    "? * * * *",
    "* * * * 1#2",
    "0 0 L * *",
    "1,,2 * * * *",
    "1- * * * *",
    "-1 * * * *",
    "* * * * * 1969",
    "* * * * * 2100",
    "*/ * * * *",
    "a * * * *",
    "0 9 * * MONDAY",
]


@pytest.mark.parametrize("expr", VALID_CRON)
def test_cron_valid(user: psycopg.Connection, expr: str) -> None:
    got = one(user, f"df.wait_for_schedule({sql.quote(expr)})")
    assert got == json.dumps(
        {"node_type": "WAIT_SCHEDULE", "query": json.dumps({"cron_expr": expr}, separators=(",", ":"))},
        separators=(",", ":"),
        ensure_ascii=False,
    )


@pytest.mark.parametrize("expr", INVALID_CRON)
def test_cron_invalid(user: psycopg.Connection, expr: str) -> None:
    err = error_of(user, f"df.wait_for_schedule({sql.quote(expr)})")
    assert err.sqlstate == "DF001"
    assert (
        err.diag.message_primary
        == f"Invalid cron expression '{expr}': Invalid expression: Invalid cron expression."
    )


# ----- Graph flattening ------------------------------------------------------------


def balanced(n: int) -> dict:
    """A tree of exactly n nodes (n odd): THEN inside, SQL leaves."""
    if n == 1:
        return {"node_type": "SQL", "query": "SELECT 1"}
    left = (n - 1) // 2
    if left % 2 == 0:
        left -= 1
    return {"node_type": "THEN", "left_node": balanced(left), "right_node": balanced(n - 1 - left)}


def preorder(tree: dict) -> list[tuple[dict, str, int]]:
    out: list[tuple[dict, str, int]] = []
    stack = [(tree, "root", 0)]
    while stack:
        node, path, depth = stack.pop()
        out.append((node, path, depth))
        kids = [
            (node[k], f"{path}.{w}")
            for k, w in (("left_node", "left"), ("right_node", "right"), ("condition_node", "condition_node"))
            if k in node
        ]
        kids += [(x, f"{path}.extra_nodes[{i}]") for i, x in enumerate(node.get("extra_nodes", []))]
        stack.extend((k, p, depth + 1) for k, p in reversed(kids))
    return out


FLATTEN_COLUMNS = (
    "ord, parent_ord, slot, depth, path, node_type, query, result_name, left_ord, right_ord, "
    "cond_ord, extra_ords"
)


def test_flatten_shape(user: psycopg.Connection) -> None:
    env = one(
        user,
        "df.join3(df.if('c', 'SELECT 1' |=> 'a', df.if_rows('a', 't', 'e')), df.loop('b', 'cond'), "
        "df.break('x'))",
    )
    rows = user.execute(f"SELECT {FLATTEN_COLUMNS} FROM df._flatten_v1(%s::jsonb)", (env,)).fetchall()
    assert rows == [
        (1, None, None, 0, "root", "JOIN", None, None, 2, 8, None, [11]),
        (2, 1, "left", 1, "root.left", "IF", None, None, 3, 4, 7, None),
        (3, 2, "left", 2, "root.left.left", "SQL", "SELECT 1", "a", None, None, None, None),
        (
            4,
            2,
            "right",
            2,
            "root.left.right",
            "IF",
            '{"condition_type":"result_has_rows","result_name":"a"}',
            None,
            5,
            6,
            None,
            None,
        ),
        (5, 4, "left", 3, "root.left.right.left", "SQL", "t", None, None, None, None, None),
        (6, 4, "right", 3, "root.left.right.right", "SQL", "e", None, None, None, None, None),
        (7, 2, "condition", 2, "root.left.condition_node", "SQL", "c", None, None, None, None, None),
        (8, 1, "right", 1, "root.right", "LOOP", None, None, 9, None, 10, None),
        (9, 8, "left", 2, "root.right.left", "SQL", "b", None, None, None, None, None),
        (10, 8, "condition", 2, "root.right.condition_node", "SQL", "cond", None, None, None, None, None),
        (
            11,
            1,
            "extra1",
            1,
            "root.extra_nodes[0]",
            "BREAK",
            '{"break_value":"x"}',
            None,
            None,
            None,
            None,
            None,
        ),
    ]


def test_flatten_10000_nodes_fast(user: psycopg.Connection) -> None:
    # Exactly the limit: a 3-way JOIN over a 9,997-node tree and two leaves.
    tree = {
        "node_type": "JOIN",
        "left_node": balanced(9997),
        "right_node": balanced(1),
        "extra_nodes": [{"node_type": "SQL", "query": "z"}],
    }
    expected = preorder(tree)
    assert len(expected) == 10000
    text = json.dumps(tree)
    started = time.monotonic()
    rows = user.execute(f"SELECT {FLATTEN_COLUMNS} FROM df._flatten_v1(%s::jsonb)", (text,)).fetchall()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"flattening 10,000 nodes took {elapsed:.2f}s"
    assert len(rows) == 10000
    assert [r[0] for r in rows] == list(range(1, 10001))
    assert [(r[4], r[3], r[5]) for r in rows] == [(p, d, n["node_type"]) for n, p, d in expected]
    by_ord = {r[0]: r for r in rows}
    for r in rows:
        for col, slot in ((8, "left"), (9, "right"), (10, "condition")):
            if r[col] is not None:
                assert by_ord[r[col]][1] == r[0] and by_ord[r[col]][2] == slot
        for i, x in enumerate(r[11] or [], start=1):
            assert by_ord[x][1] == r[0] and by_ord[x][2] == f"extra{i}"
    assert rows[0][11] == [10000]


def test_flatten_more_than_10000_nodes(user: psycopg.Connection) -> None:
    tree = {
        "node_type": "JOIN",
        "left_node": balanced(9999),
        "right_node": {"node_type": "SQL", "query": "x"},
    }
    assert len(preorder(tree)) == 10001
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT count(*) FROM df._flatten_v1(%s::jsonb)", (json.dumps(tree),))
    assert info.value.sqlstate == "DF002"
    assert info.value.diag.message_primary == (
        "Invalid durable function graph: root: Workflow exceeds maximum node count of 10000. "
        "Simplify the workflow or break it into multiple instances."
    )


def test_flatten_depth_limit(user: psycopg.Connection) -> None:
    # 256 levels below the root are fine; the 257th is not (X8 is the operator-built case).
    ok = " ~> ".join(f"'s{i}'" for i in range(1, 258))
    rows = user.execute(
        f"SELECT max(depth), count(*) FROM df._flatten_v1(df._ensure_strict_v1({ok}))"
    ).fetchone()
    assert rows == (256, 2 * 257 - 1)
    deep = '{"node_type":"SQL","query":"x"}'
    for _ in range(10000):
        deep = '{"node_type":"LOOP","left_node":' + deep + "}"
    started = time.monotonic()
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT count(*) FROM df._flatten_v1(%s::jsonb)", (deep,))
    assert time.monotonic() - started < 1.0
    assert (
        info.value.diag.message_primary
        == "Invalid durable function graph: root" + ".left" * 257 + ": " + DEPTH_MSG
    )


GRAPH_ERRORS = [
    (
        '{"node_type":"THEN","left_node":"x","right_node":{"node_type":"SQL","query":"x"}}',
        "root.left: Durofut children must be JSON objects",
    ),
    (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"x"},"right_node":[]}',
        "root.right: Durofut children must be JSON objects",
    ),
    (
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"SQL","query":"x"},'
        '"condition_node":7}',
        "root.condition_node: condition_node must be a Durofut JSON object",
    ),
    (
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"a"},"right_node":{"node_type":"SQL","query":"b"},'
        '"extra_nodes":[{"node_type":"SQL","query":"c"},null]}',
        "root.extra_nodes[1]: extra_nodes entries must be Durofut JSON objects",
    ),
    (
        '{"node_type":"SQL","query":"x","condition_node":{"node_type":"SQL","query":"x"}}',
        "root: condition_node is only allowed on IF and LOOP nodes",
    ),
    (
        '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"SQL","query":"x"},'
        '"extra_nodes":[{"node_type":"SQL","query":"x"}]}',
        "root: extra_nodes is only allowed on JOIN nodes",
    ),
    (
        '{"node_type":"RACE","left_node":{"node_type":"SQL","query":"x"}}',
        "root: RACE node requires left_node and right_node",
    ),
    (
        '{"node_type":"JOIN","right_node":{"node_type":"SQL","query":"x"}}',
        "root: JOIN node requires left_node and right_node",
    ),
    (
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"SQL","query":"x"}}',
        "root: IF node requires condition_node or a result_has_rows query",
    ),
    (
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"SQL","query":"x"},'
        '"query":"{\\"condition_type\\":\\"result_has_rows\\",\\"result_name\\":\\"r\\",\\"condition_node\\":\\"deadbeef\\"}"}',
        "root: IF node requires condition_node or a result_has_rows query",
    ),
    (
        '{"node_type":"LOOP","condition_node":{"node_type":"SQL","query":"x"}}',
        "root: LOOP node requires left_node",
    ),
    (
        '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"x"},"right_node":{"node_type":"SQL","query":"x"}}',
        "root: LOOP node must not have right_node",
    ),
    (
        '{"node_type":"SLEEP","query":"1","left_node":{"node_type":"SQL","query":"x"}}',
        "root: SLEEP node must not have left_node or right_node",
    ),
    (
        '{"node_type":"THEN","left_node":{"node_type":"SQL"},"right_node":{"node_type":"SQL","query":"x"}}',
        "root.left: SQL node requires a query",
    ),
    (
        '{"node_type":"SQL","query":"x","result_name":"1a"}',
        "root: result name '1a' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*",
    ),
    ('{"node_type":"SQL","query":"x","result_name":""}', "root: result name cannot be empty"),
    (
        '{"node_type":"LOOP","left_node":{"query":"x"}}',
        "root.left: Malformed Durofut JSON: missing field `node_type`",
    ),
    (
        '{"node_type":"LOOP","left_node":{"node_type":["SQL"]}}',
        "root.left: Malformed Durofut JSON: invalid type: sequence, expected a string",
    ),
    (
        '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":false}}',
        "root.left: Malformed Durofut JSON: invalid type: boolean `false`, expected a string",
    ),
    (
        '{"node_type":"LOOP","left_node":{"node_type":"JOIN","extra_nodes":{}}}',
        "root.left: Malformed Durofut JSON: invalid type: map, expected a sequence",
    ),
    # The first invalid node in pre-order is reported.
    (
        '{"node_type":"THEN","left_node":{"node_type":"THEN","left_node":{"node_type":"SQL","query":"x"},'
        '"right_node":{"node_type":"BAR"}},"right_node":{"node_type":"FOO"}}',
        f"root.left.right: Unknown node_type 'BAR'. Valid types: {VALID_TYPES}",
    ),
]


@pytest.mark.parametrize(("graph", "message"), GRAPH_ERRORS)
def test_flatten_errors(user: psycopg.Connection, graph: str, message: str) -> None:
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT count(*) FROM df._flatten_v1(%s::jsonb)", (graph,))
    assert info.value.sqlstate == "DF002"
    assert info.value.diag.message_primary == "Invalid durable function graph: " + message


def test_flatten_null_children_are_absent(user: psycopg.Connection) -> None:
    rows = user.execute(
        """SELECT ord, node_type, left_ord, right_ord, cond_ord, extra_ords, query FROM df._flatten_v1(
             '{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"x","result_name":null},
               "right_node":null,"condition_node":null,"extra_nodes":[],"query":"ignored"}')"""
    ).fetchall()
    assert rows == [(1, "LOOP", 2, None, None, None, None), (2, "SQL", None, None, None, None, "x")]


# ----- The e2e script --------------------------------------------------------------


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
@pytest.mark.parametrize("script", ["10_dsl.sql"])
def test_e2e_script(dsn: str, db: psycopg.Connection, make_role: Callable[..., str], script: str) -> None:
    role = make_role(grant=False)
    db.execute("SELECT df.grant_usage(%s, include_http => true)", (role,))
    proc = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn_as(dsn, role),
            "-f",
            str(ROOT / "e2e" / "sql" / script),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
