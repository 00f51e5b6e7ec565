"""df.explain: dispatch, dry-run layout (PGD_FIXTURES.md section 3), evaluation
of DSL text as the caller in a subtransaction that is always rolled back.

Every expected string is written from PGD_FIXTURES.md / PGD_REFERENCE.md 3.4
(JSON string literals copied from the fixtures where they give one).  Where
we deliberately differ (CONTRACT.md 9: truncation by characters, never a
failure on multi-byte text) the test says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
import pytest
from psycopg import errors


def padded(*lines: str) -> str:
    """PGD_FIXTURES 3 layout: every line right-padded to (longest, in characters) + 4."""
    width = max(len(line) for line in lines) + 4
    return "\n".join(line.ljust(width) for line in lines)


G1 = json.loads(
    r'''"SQL: SELECT count(*) FROM orders |=> 'n'    \n→ SQL: SELECT $n * 2                        "'''
)
G2 = json.loads(
    r'''"IF                          \n    ? condition:            \n      └─SQL: SELECT true    \n    ✓ then:                 \n      └─SQL: SELECT 1       \n    ✗ else:                 \n      └─SQL: SELECT 2       "'''
)
G3 = json.loads(
    r'''"JOIN (3)                 \n    ║ branch 1:          \n      ├─SQL: SELECT 1    \n    ║ branch 2:          \n      ├─SLEEP 5s         \n    ║ branch 3:          \n      └─SQL: SELECT 3    "'''
)
G4 = json.loads(
    r'''"LOOP (while)                        \n    ↻ body:                         \n      └─RACE                        \n          ║ branch 1:               \n            ├─SQL: SELECT poll()    \n          ║ branch 2:               \n            └─SLEEP 30s             \n      → SQL: SELECT log_it()        \n    ? while:                        \n      └─SQL: SELECT more()          "'''
)

# (DSL expression, expected df.explain output), all from PGD_FIXTURES.md section 3.
FIXTURES = [
    pytest.param("df.as('SELECT count(*) FROM orders','n') ~> 'SELECT $n * 2'", G1, id="G1-seq"),
    pytest.param("df.if('SELECT true','SELECT 1','SELECT 2')", G2, id="G2-if"),
    pytest.param("df.join3('SELECT 1', df.sleep(5), 'SELECT 3')", G3, id="G3-join3"),
    pytest.param(
        "df.loop(df.race('SELECT poll()', df.sleep(30)) ~> 'SELECT log_it()', 'SELECT more()')",
        G4,
        id="G4-loop",
    ),
    pytest.param(
        "'SELECT 1' ~> 'SELECT 2' |=> 'last'",
        json.loads(r'''"SQL: SELECT 1      \n→ SQL: SELECT 2    "'''),
        id="then-name-hidden",
    ),
    pytest.param(
        "df.if_rows('r', df.wait_for_signal('approve',3600), df.break('a very long break value here'))",
        json.loads(
            r'''"IF                                      \n    ✓ then:                             \n      └─SIGNAL 'approve' (3600s)        \n    ✗ else:                             \n      └─BREAK 'a very long break...'    "'''
        ),
        id="if_rows-signal-break",
    ),
    pytest.param(
        "df.http('https://example.com/hook/with/a/very/long/path/segment') ~> df.wait_for_schedule('*/5 * * * *')",
        json.loads(
            r'''"HTTP POST https://example.com/hook/with/a/very/...    \n→ WAIT '*/5 * * * *'                                  "'''
        ),
        id="http-wait",
    ),
    pytest.param(
        "df.sql('SELECT id, name, email FROM customers WHERE region = 42 ORDER BY id')",
        json.loads(r'''"SQL: SELECT id, name, email FROM customers WHERE reg...    "'''),
        id="sql-truncated",
    ),
]


@pytest.fixture
def user(
    db: psycopg.Connection, make_role: Callable[..., str], connect_as: Callable[..., psycopg.Connection]
) -> psycopg.Connection:
    """An ordinary LOGIN role with df usage, HTTP builders included (operators resolve under the default search_path)."""
    role = make_role()
    db.execute("SELECT df.grant_usage(%s, include_http => true)", (role,))
    return connect_as(role)


def explain(conn: psycopg.Connection, text: str | None) -> str | None:
    row = conn.execute("SELECT df.explain(%s)", (text,)).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


@pytest.mark.parametrize(("expr", "expected"), FIXTURES)
def test_fixture_dsl_evaluated_by_sql(user: psycopg.Connection, expr: str, expected: str) -> None:
    # The fixture's own form: df.explain(<DSL expression>).
    row = user.execute(f"SELECT df.explain({expr})").fetchone()
    assert row is not None and row[0] == expected


@pytest.mark.parametrize(("expr", "expected"), FIXTURES)
def test_fixture_dsl_text_evaluated_by_explain(user: psycopg.Connection, expr: str, expected: str) -> None:
    # The same expression passed as text: it contains df. or an operator, so
    # explain runs SELECT <input> as the caller, then dry-runs the envelope.
    assert explain(user, expr) == expected


def test_envelope_text_is_dry_run(user: psycopg.Connection) -> None:
    # PGD_FIXTURES E11 (the envelope of df.if) gives G2; E9 (join3 without the sleep) a JOIN (3).
    e11 = (
        '{"node_type":"IF","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"},'
        '"condition_node":{"node_type":"SQL","query":"SELECT true"}}'
    )
    assert explain(user, e11) == G2
    assert explain(user, "  \n" + e11 + "\t ") == G2
    e9 = (
        '{"node_type":"JOIN","left_node":{"node_type":"SQL","query":"SELECT 1"},'
        '"right_node":{"node_type":"SQL","query":"SELECT 2"},"extra_nodes":[{"node_type":"SQL","query":"SELECT 3"}]}'
    )
    assert explain(user, e9) == padded(
        "JOIN (3)",
        "    ║ branch 1:",
        "      ├─SQL: SELECT 1",
        "    ║ branch 2:",
        "      ├─SQL: SELECT 2",
        "    ║ branch 3:",
        "      └─SQL: SELECT 3",
    )


def test_leading_sql_keyword_is_one_sql_node(user: psycopg.Connection) -> None:
    assert explain(user, "SELECT 1") == "SQL: SELECT 1    "
    assert explain(user, "  SELECT 1 \n") == "SQL: SELECT 1    "
    assert explain(user, "INSERT INTO t VALUES (1)") == "SQL: INSERT INTO t VALUES (1)    "
    assert explain(user, "DO $$BEGIN NULL; END$$") == "SQL: DO $$BEGIN NULL; END$$    "
    # "+ space": the keyword alone, or followed by a newline, is not one.
    assert (explain(user, "SELECT") or "").startswith("Cannot explain input:")


CANNOT = (
    "Cannot explain input: not a valid Durofut JSON, instance ID, SQL statement, or DSL expression.\n"
    "Hint: DSL expressions use df.*() functions and operators like ~>, |=>, &, |."
)


def test_dispatch_texts(user: psycopg.Connection) -> None:
    assert explain(user, "hello") == CANNOT
    # & and | are not DSL markers: as *text* this is not explainable.
    assert explain(user, "'SELECT 1' & 'SELECT 2'") == CANNOT
    assert explain(user, '{"a": 1}') == CANNOT  # JSON without node_type
    assert explain(user, "deadbeef") == "Instance 'deadbeef' not found"
    assert explain(user, " deadbeef ") == "Instance 'deadbeef' not found"
    assert explain(user, "NULL::text || 'df.'") == "Expression returned NULL"
    assert explain(user, "df.sql(NULL)") == "Expression returned NULL"


def test_strict(user: psycopg.Connection) -> None:
    assert explain(user, None) is None


def test_graph_error_is_returned_as_text(user: psycopg.Connection) -> None:
    # PGD_FIXTURES X7b: the same validation as df.start, the error as text.
    env = '{"node_type":"THEN","left_node":{"node_type":"FOO"},"right_node":{"node_type":"SQL","query":"x"}}'
    assert explain(user, env) == (
        "Invalid durable function graph: root.left: Unknown node_type 'FOO'. Valid types: SQL, THEN, IF, JOIN, "
        "LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL"
    )
    # An unknown type at the root of an envelope is the same graph error (path "root").
    assert explain(user, '{"node_type":"FOO"}') == (
        "Invalid durable function graph: root: Unknown node_type 'FOO'. Valid types: SQL, THEN, IF, JOIN, "
        "LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL"
    )


def test_node_texts_and_name_suffix(user: psycopg.Connection) -> None:
    # 3.4: " |=> '<name>'" on every node but RACE; LOOP (infinite); BREAK without a value.
    assert explain(user, "df.as(df.sleep(5), 's')") == "SLEEP 5s |=> 's'    "
    assert explain(user, "df.as(df.race('SELECT 1', 'SELECT 2'), 'r')") == padded(
        "RACE",
        "    ║ branch 1:",
        "      ├─SQL: SELECT 1",
        "    ║ branch 2:",
        "      └─SQL: SELECT 2",
    )
    text = explain(user, "df.as(df.if('SELECT true', 'SELECT 1', 'SELECT 2'), 'x')")
    assert text is not None and text.split("\n")[0].rstrip() == "IF |=> 'x'"
    assert explain(user, "df.loop(df.break())") == padded("LOOP (infinite)", "    ↻ body:", "      └─BREAK")
    assert explain(user, "df.wait_for_signal('go')") == "SIGNAL 'go'    "
    assert explain(user, "df.as(df.wait_for_signal('go', 10), 'g')") == "SIGNAL 'go' (10s) |=> 'g'    "
    assert explain(user, "df.break('done')") == "BREAK 'done'    "
    assert explain(user, "df.http('https://example.com/x', 'get')") == "HTTP GET https://example.com/x    "


def test_non_last_branch_children_get_a_bar(user: psycopg.Connection) -> None:
    # 3.4 layout rule: a non-THEN node's children sit at parent prefix + "│   " when it is not last.
    assert explain(user, "df.join(df.race('SELECT 1', 'SELECT 2'), 'SELECT 3')") == padded(
        "JOIN (2)",
        "    ║ branch 1:",
        "      ├─RACE",
        "      │   ║ branch 1:",
        "      │     ├─SQL: SELECT 1",
        "      │   ║ branch 2:",
        "      │     └─SQL: SELECT 2",
        "    ║ branch 2:",
        "      └─SQL: SELECT 3",
    )


def test_then_chain_items_with_children_at_then_prefix_plus_4(user: psycopg.Connection) -> None:
    assert explain(
        user, "'SELECT 0' ~> df.if('SELECT true', 'SELECT 1', 'SELECT 2') ~> 'SELECT 3'"
    ) == padded(
        "SQL: SELECT 0",
        "→ IF",
        "    ? condition:",
        "      └─SQL: SELECT true",
        "    ✓ then:",
        "      └─SQL: SELECT 1",
        "    ✗ else:",
        "      └─SQL: SELECT 2",
        "→ SQL: SELECT 3",
    )
    # Right-nested chains flatten too.
    assert explain(user, "df.seq('SELECT 1', df.seq('SELECT 2', 'SELECT 3'))") == padded(
        "SQL: SELECT 1", "→ SQL: SELECT 2", "→ SQL: SELECT 3"
    )


def test_newline_in_query_splits_the_line(user: psycopg.Connection) -> None:
    # "A newline inside a SQL query splits the line (continuation lines carry no prefix)."
    assert explain(user, "df.sql(E'SELECT 1\\nFROM t') ~> 'SELECT 2'") == padded(
        "SQL: SELECT 1", "FROM t", "→ SQL: SELECT 2"
    )


def test_truncation_counts_characters(user: psycopg.Connection) -> None:
    # CONTRACT.md 9: we cut by characters.  pg_durable cuts by bytes and
    # raises "end byte index 47 is not a char boundary ..." for the first
    # query below (59 bytes, 34 characters: no cut for us), and keeps only
    # 19 é of the second; both are shown whole here (< 50 characters).
    q1 = "SELECT '" + "é" * 25 + "'"
    assert explain(user, q1) == "SQL: " + q1 + "    "
    q2 = "SELECT 'x" + "é" * 25 + "'"
    assert explain(user, q2) == "SQL: " + q2 + "    "
    # Over 50 characters: 47 characters + "...".
    q3 = "SELECT '" + "é" * 60 + "'"
    assert explain(user, q3) == "SQL: SELECT '" + "é" * 39 + "...    "
    q4 = "SELECT '" + "😀" * 50 + "'"
    assert explain(user, q4) == "SQL: SELECT '" + "😀" * 39 + "...    "
    # Exactly 50 characters are kept.
    q5 = "SELECT '" + "€" * 41 + "'"
    assert len(q5) == 50
    assert explain(user, q5) == "SQL: " + q5 + "    "
    # BREAK values (> 20 -> 17 + ...), URLs (> 40 -> 37 + ...).
    assert explain(user, "df.break('" + "ü" * 21 + "')") == "BREAK '" + "ü" * 17 + "...'    "
    url = "https://example.com/" + "ß" * 30
    assert explain(user, f"df.http('{url}')") == "HTTP POST " + url[:37] + "...    "


def test_evaluation_runs_as_the_caller(
    make_role: Callable[..., str], connect_as: Callable[..., psycopg.Connection]
) -> None:
    role = make_role()
    conn = connect_as(role)
    assert explain(conn, "df.sql(current_user)") == padded(f"SQL: {role}")


def test_evaluation_is_rolled_back(db: psycopg.Connection, user: psycopg.Connection) -> None:
    db.execute("CREATE TABLE public.side_effects (x int)")
    db.execute("GRANT INSERT, SELECT ON public.side_effects TO PUBLIC")
    db.execute(
        "CREATE FUNCTION public.step_with_side_effect() RETURNS text LANGUAGE sql VOLATILE "
        "AS $$ INSERT INTO public.side_effects VALUES (1) RETURNING 'SELECT 42' $$"
    )
    # public is on the evaluation's search_path, like a default one.
    assert explain(user, "df.sql(step_with_side_effect())") == "SQL: SELECT 42    "
    assert explain(user, "df.sql(public.step_with_side_effect()) ~> 'SELECT 1'") == padded(
        "SQL: SELECT 42", "→ SQL: SELECT 1"
    )
    row = db.execute("SELECT count(*) FROM public.side_effects").fetchone()
    assert row == (0,)
    # A setting changed by the expression is undone as well.
    user.execute("SET application_name = 'before'")
    explain(user, "df.sql(set_config('application_name', 'after', false))")
    assert user.execute("SHOW application_name").fetchone() == ("before",)


def test_explaining_start_starts_nothing(db: psycopg.Connection, user: psycopg.Connection) -> None:
    def counts() -> tuple[int, ...]:
        row = db.execute(
            "SELECT (SELECT count(*) FROM df.instances), (SELECT count(*) FROM df.nodes), "
            "(SELECT count(*) FROM df.instance_queue), (SELECT count(*) FROM df.instance_vars), "
            "(SELECT count(*) FROM df.caller_tickets)"
        ).fetchone()
        assert row is not None
        return tuple(row)

    user.execute("SELECT df.setvar('v', '1')")
    before = counts()
    # The answer is the graph df.start would have run.
    assert explain(user, "df.start('SELECT 1' ~> 'SELECT 2')") == padded("SQL: SELECT 1", "→ SQL: SELECT 2")
    assert explain(user, "df.start(df.if('SELECT true', 'SELECT 1', 'SELECT 2'), 'lbl')") == G2
    assert counts() == before
    # Also inside an explicit transaction that then commits.
    with user.transaction():
        assert explain(user, "df.start('SELECT 1')") == "SQL: SELECT 1    "
    assert counts() == before


def test_expression_errors_propagate(user: psycopg.Connection) -> None:
    # PGD_FIXTURES 6.7: an SQL error while evaluating propagates as that error.
    with pytest.raises(errors.UndefinedFunction):
        explain(user, "df.no_such_function()")
    with pytest.raises(errors.SyntaxError):
        explain(user, "SELECT * FROM df.instances")  # contains "df.": evaluated as SELECT SELECT ...
    # Our own rollback marker raised by the user's code is not swallowed.
    user.execute(
        "CREATE FUNCTION pg_temp.boom() RETURNS text LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'mine' USING ERRCODE = 'DF099'; END$$"
    )
    with pytest.raises(psycopg.Error) as info:
        explain(user, "df.sql(pg_temp.boom())")
    assert info.value.sqlstate == "DF099"
    assert info.value.diag.message_primary == "mine"


def test_operators_resolve_for_a_role_without_search_path_tricks(user: psycopg.Connection) -> None:
    user.execute("SET search_path = public")
    assert explain(user, "'SELECT 1' ~> 'SELECT 2'") == padded("SQL: SELECT 1", "→ SQL: SELECT 2")
