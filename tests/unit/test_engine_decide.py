"""Scenarios for decide(): every node type and the combinations the engine must handle.

Expected values come from PGD_REFERENCE.md (2.4-2.9, 3.1-3.2) and the brief, not
from running the engine.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from durable.engine import (
    BREAK_OUTSIDE_LOOP,
    EngineSettings,
    InstanceView,
    Node,
    NodeState,
    Signal,
    decide,
    loop_cap_message,
)
from tests.unit.test_engine_driver import (
    IID,
    T0,
    Driver,
    Env,
    StepFailed,
    brk,
    http,
    if_,
    if_rows,
    join,
    loop,
    mini_select,
    race,
    rows,
    schedule,
    signal,
    sleep,
    sql,
    then,
)

FAST = EngineSettings(loop_min_iteration_seconds=0)


def counter_handler(
    limits: dict[str, int] | None = None,
) -> tuple[dict[str, int], object]:
    """SQL 'SELECT next(<key>)' counts per key; other text goes to mini_select."""
    counts: dict[str, int] = {}

    def handler(text: str, nid: str, n: int) -> str:
        if text.startswith("SELECT next("):
            key = text[len("SELECT next(") : -1]
            counts[key] = counts.get(key, 0) + 1
            return rows({"n": counts[key]})
        if text.startswith("SELECT more("):
            key, _, limit = text[len("SELECT more(") : -1].partition(",")
            counts[key] = counts.get(key, 0) + 1
            return rows({"more": counts[key] < int(limit)})
        return mini_select(text)

    return counts, handler


# --- single steps ------------------------------------------------------------------------


def test_single_sql_completes_with_its_result() -> None:
    d = Driver(sql("SELECT 42 AS answer"))
    first = d.settle()
    assert [r.sql for r in first.run_sql] == ["SELECT 42 AS answer"]
    assert first.instance_status == "running" and first.wake_at is None
    assert d.st().status == "running" and d.exec_id() == f"{IID}::1"
    d.run()
    assert d.status == "completed"
    assert d.output == '{"rows":[{"answer":42}],"row_count":1}'
    assert d.st().status == "completed" and d.exec_id() == f"{IID}::1"
    assert d.execution_count == 1


def test_failed_sql_fails_the_instance_with_its_message() -> None:
    d = Driver(sql('FAIL relation "nope" does not exist')).run()
    assert d.status == "failed"
    assert d.output == 'relation "nope" does not exist'
    assert d.st().status == "failed"
    assert d.st().result_text == json.dumps('relation "nope" does not exist')


def test_a_finished_instance_decides_nothing() -> None:
    d = Driver(sql("SELECT 1 AS x")).run()
    again = decide(d.view())
    assert again.updates == [] and again.run_sql == [] and again.instance_status == "completed"
    assert again.output == d.output and again.wake_at is None


def test_http_steps_fail_until_supported() -> None:
    d = Driver(then(sql("SELECT 1 AS x"), http())).run()
    assert d.status == "failed" and d.output == "HTTP steps are not supported yet"
    assert d.st("right").status == "failed"


# --- THEN and named results -----------------------------------------------------------------


def test_then_runs_in_order_and_substitutes_named_results() -> None:
    d = Driver(
        then(sql("SELECT 42 AS n", "a"), sql("SELECT $a AS b, '$a.n' AS t", "b"), sql("SELECT $b.t AS c"))
    )
    d.run()
    assert [s for _, s in d.executed] == [
        "SELECT 42 AS n",
        "SELECT 42 AS b, '42' AS t",
        "SELECT '42' AS c",
    ]
    assert d.status == "completed" and json.loads(d.output or "")["rows"] == [{"c": "42"}]
    assert d.st("left").status == "completed"  # the inner THEN
    assert d.result("left.left") == {"rows": [{"n": 42}], "row_count": 1}


def test_then_named_result_is_the_right_result() -> None:
    d = Driver(then(then(sql("SELECT 1 AS x"), sql("SELECT 2 AS x"), name="pair"), sql("SELECT $pair AS y")))
    d.run()
    assert d.executed[-1][1] == "SELECT 2 AS y"


def test_vars_and_sys_values_are_inserted_raw() -> None:
    d = Driver(sql("SELECT '{sys_instance_id}' AS i, '{sys_label}' AS l, {n} AS n, '{missing}' AS m"))
    d.vars = {"n": "7"}
    d.label = "nightly"
    d.run()
    assert d.executed[0][1] == f"SELECT '{IID}' AS i, 'nightly' AS l, 7 AS n, '{{missing}}' AS m"


def test_substitution_error_fails_the_node_without_running_it() -> None:
    d = Driver(then(sql("SELECT 1 AS x WHERE false", "r"), sql("SELECT $r AS y")))
    d.run()
    assert d.status == "failed"
    assert d.output == "$r has no rows — query returned zero results"
    assert len(d.executed) == 1
    assert d.st("right").status == "failed"


def test_optional_reference_becomes_null() -> None:
    d = Driver(then(sql("SELECT 1 AS x WHERE false", "r"), sql("SELECT $r? AS y")))
    d.run()
    assert d.executed[1][1] == "SELECT NULL AS y" and d.status == "completed"


# --- IF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "branch"),
    [
        ("SELECT true", "then"),
        ("SELECT false", "else"),
        ("SELECT 0", "else"),
        ("SELECT 2", "then"),
        ("SELECT 'yes'", "then"),
        ("SELECT ' No '", "else"),
        ("SELECT '0.0'", "else"),
        ("SELECT 'banana'", "then"),
        ("SELECT NULL", "else"),
        ("SELECT 1 WHERE false", "else"),
    ],
)
def test_if_takes_the_branch_its_condition_says(cond: str, branch: str) -> None:
    d = Driver(if_(sql(cond), sql("SELECT 'then' AS b"), sql("SELECT 'else' AS b"), name="choice"))
    d.run()
    assert d.status == "completed"
    assert json.loads(d.output or "")["rows"] == [{"b": branch}]
    untaken = "right" if branch == "then" else "left"
    assert d.st(untaken).status == "pending"
    assert d.st().state["branch"] == branch


def test_failing_if_condition_fails_the_if_with_the_same_message() -> None:
    d = Driver(then(if_(sql("FAIL division by zero"), sql("SELECT 1"), sql("SELECT 2")), sql("SELECT 3")))
    d.run()
    assert d.status == "failed" and d.output == "division by zero"
    assert d.st("left").status == "failed"
    assert json.loads(d.st("left").result_text or "") == "division by zero"
    assert d.st("right").status == "pending"


def test_if_condition_names_reach_the_branch() -> None:
    d = Driver(if_(sql("SELECT 5 AS v", "c"), sql("SELECT $c AS got"), sql("SELECT 0")))
    d.run()
    assert d.executed[-1][1] == "SELECT 5 AS got"


def test_if_rows_takes_then_when_the_result_has_rows() -> None:
    d = Driver(
        then(sql("SELECT 1 AS x", "r"), if_rows("r", sql("SELECT 'some' AS v"), sql("SELECT 'none' AS v")))
    )
    d.run()
    assert json.loads(d.output or "")["rows"] == [{"v": "some"}]
    assert len(d.executed) == 2  # nothing executed for the condition itself


def test_if_rows_takes_else_on_zero_rows() -> None:
    d = Driver(
        then(
            sql("SELECT 1 AS x WHERE false", "r"),
            if_rows("r", sql("SELECT 'some' AS v"), sql("SELECT 'none' AS v")),
        )
    )
    d.run()
    assert json.loads(d.output or "")["rows"] == [{"v": "none"}]


def test_if_rows_unknown_result_fails() -> None:
    d = Driver(if_rows("nope", sql("SELECT 1"), sql("SELECT 2"))).run()
    assert d.status == "failed" and d.output == "df.if_rows: result 'nope' not found"


def test_if_rows_on_a_non_sql_result_fails() -> None:
    d = Driver(then(sleep(0), signal("go", result_name="s"), if_rows("s", sql("SELECT 1"), sql("SELECT 2"))))
    d.send("go", '{"k":1}')
    d.run()
    assert d.status == "failed"
    assert d.output == "df.if_rows: result 's' is not a SQL result (missing row_count)"


# --- JOIN -------------------------------------------------------------------------------------------


def test_join_runs_branches_concurrently_and_returns_an_array_in_branch_order() -> None:
    d = Driver(join(sql("SELECT 1 AS a"), sql("SELECT 2 AS b"), sql("SELECT 3 AS c")))
    first = d.settle()
    assert len(first.run_sql) == 3
    # finish them backwards
    d.run(order=lambda pending: pending[-1])
    assert d.status == "completed"
    assert json.loads(d.output or "") == [
        {"rows": [{"a": 1}], "row_count": 1},
        {"rows": [{"b": 2}], "row_count": 1},
        {"rows": [{"c": 3}], "row_count": 1},
    ]
    assert d.output == "[" + ",".join(rows({k: v}) for k, v in (("a", 1), ("b", 2), ("c", 3))) + "]"


def test_join_branch_failure_fails_the_join_and_cancels_the_others() -> None:
    d = Driver(then(join(sql("SELECT 1 AS a"), sql("FAIL boom"), sql("SELECT 3 AS c")), sql("SELECT 4")))
    d.settle()
    left, mid, extra = d.node("left.left"), d.node("left.right"), d.node("left.extra0")
    d.execute(mid)
    dec = d.settle()
    assert dec.instance_status == "failed"
    assert d.output == "JOIN branch 2 failed: boom"
    assert sorted(dec.cancel) == sorted([left, extra])
    assert d.st("left").status == "failed" and d.st("right").status == "pending"
    assert d.st("left.left").status == "running"  # left as pg_durable leaves it; inferred 'skipped'


def test_join_merges_branch_names_back_in_branch_order() -> None:
    d = Driver(
        then(
            sql("SELECT 0 AS v", "x"),
            join(
                then(sql("SELECT 1 AS v", "x"), sql("SELECT $x AS seen", "a")),
                then(sql("SELECT $x AS seen", "b"), sql("SELECT 2 AS v", "x")),
            ),
            sql("SELECT $x AS x, $a AS a, $b AS b"),
        )
    )
    d.run(order=lambda p: p[-1])
    by_query = [s for _, s in d.executed]
    assert "SELECT 1 AS seen" in by_query  # branch 1 sees its own x
    assert "SELECT 0 AS seen" in by_query  # branch 2 starts from the parent map
    assert by_query[-1] == "SELECT 2 AS x, 1 AS a, 0 AS b"  # later branches win


def test_join_status_details_use_child_scopes() -> None:
    d = Driver(then(sql("SELECT 1"), join(sql("SELECT 2"), sql("SELECT 3"))))
    d.run()
    join_id = d.node("right")
    b1, b2 = d.node("right.left"), d.node("right.right")
    assert d.exec_id("right") == f"{IID}::1"
    assert d.exec_id("right.left") == f"{IID}::1::{b1}::1"
    assert d.exec_id("right.right") == f"{IID}::1::{b2}::1"
    assert join_id


# --- RACE -----------------------------------------------------------------------------------------


def test_race_first_to_finish_wins_and_the_loser_is_cancelled() -> None:
    d = Driver(race(sql("SELECT 'slow' AS w"), sql("SELECT 'fast' AS w")))
    d.settle()
    slow, fast = d.node("left"), d.node("right")
    d.execute(fast)
    dec = d.settle()
    assert dec.instance_status == "completed"
    assert json.loads(d.output or "")["rows"] == [{"w": "fast"}]
    assert dec.cancel == [slow]
    assert d.st().state["winner"] == "right"


def test_race_failure_wins_too() -> None:
    d = Driver(race(sql("FAIL nope"), sleep(30)))
    d.run()
    assert d.status == "failed" and d.output == "RACE left branch failed: nope"
    d2 = Driver(race(signal("never"), sql("FAIL nope")))
    d2.run()
    assert d2.output == "RACE right branch failed: nope"


def test_race_against_a_timer() -> None:
    d = Driver(race(signal("approve"), sleep(30), name="r"))
    dec = d.settle()
    assert dec.wake_at == T0 + timedelta(seconds=30)
    d.run()
    assert d.status == "completed" and d.output == '{"slept":true,"seconds":30}'
    assert d.now == T0 + timedelta(seconds=30)
    assert d.st("left").status == "running"  # abandoned, never cancelled into another status


def test_race_names_come_from_the_winner_only() -> None:
    d = Driver(
        then(
            race(then(sleep(0), sql("SELECT 1 AS v", "w")), then(sleep(10), sql("SELECT 2 AS v", "l"))),
            sql("SELECT $w AS w, '$l' AS l"),
        )
    )
    d.run()
    assert d.executed[-1][1] == "SELECT 1 AS w, '$l' AS l"


def test_loop_that_loses_a_race_is_stamped_failed() -> None:
    d = Driver(race(loop(signal("tick")), sleep(5)))
    d.run()
    assert d.status == "completed" and d.output == '{"slept":true,"seconds":5}'
    assert d.st("left").status == "failed"
    assert json.loads(d.st("left").result_text or "") == "Loop branch cancelled after losing RACE"


def test_race_of_loop_against_signal() -> None:
    counts, handler = counter_handler()
    d = Driver(race(loop(then(sql("SELECT next(a)"), sleep(10))), signal("stop", result_name="s")))
    d.handler = handler  # type: ignore[assignment]
    d.run(stop_after=7)  # a few iterations go by
    assert d.status == "running" and counts["a"] >= 2
    d.send("stop", '{"why": "done"}')
    d.run()
    assert d.status == "completed"
    assert d.output == '{"signal_name":"stop","timed_out":false,"data":{"why":"done"}}'
    assert d.st("left").status == "failed"


# --- LOOP -----------------------------------------------------------------------------------------


def test_loop_with_condition_is_a_do_while_returning_the_last_body_result() -> None:
    counts, handler = counter_handler()
    d = Driver(loop(sql("SELECT next(body)"), sql("SELECT more(c,3)")), settings=FAST)
    d.handler = handler  # type: ignore[assignment]
    d.run()
    assert counts == {"body": 3, "c": 3}
    assert d.status == "completed" and d.output == rows({"n": 3})
    assert d.execution_count == 3  # root loop: 1 + restarts


def test_root_loop_generations_stamp_status_details() -> None:
    counts, handler = counter_handler()
    d = Driver(loop(sql("SELECT next(b)"), sql("SELECT more(c,2)")), settings=FAST)
    d.handler = handler  # type: ignore[assignment]
    d.settle()
    assert d.exec_id() == f"{IID}::1" and d.exec_id("left") == f"{IID}::1"
    d.run()
    assert d.exec_id("left") == f"{IID}::2"
    assert d.exec_id("condition") == f"{IID}::2"
    assert d.exec_id() == f"{IID}::2"  # the loop is stamped again when it finishes


def test_non_root_loop_runs_in_a_child_scope() -> None:
    counts, handler = counter_handler()
    d = Driver(then(sql("SELECT 0"), loop(sql("SELECT next(b)"), sql("SELECT more(c,2)"))), settings=FAST)
    d.handler = handler  # type: ignore[assignment]
    d.run()
    lp = d.node("right")
    assert d.exec_id("right") == f"{IID}::1"
    assert d.exec_id("right.left") == f"{IID}::1::{lp}::2"
    assert d.execution_count == 1
    assert d.st("right").state["iteration"] == 2


def test_failing_loop_condition_counts_as_false() -> None:
    d = Driver(loop(sql("SELECT 7 AS v"), sql("FAIL oops")), settings=FAST).run()
    assert d.status == "completed" and d.output == rows({"v": 7})


def test_failing_loop_body_fails_the_loop() -> None:
    d = Driver(then(loop(sql("FAIL inside")), sql("SELECT 1")), settings=FAST).run()
    assert d.status == "failed" and d.output == "inside"
    assert d.st("left").status == "failed"


def test_short_iterations_are_padded() -> None:
    counts, handler = counter_handler()
    d = Driver(loop(sql("SELECT next(b)"), sql("SELECT more(c,3)")))
    d.handler = handler  # type: ignore[assignment]
    d.settle()
    d.execute(d.node("left"))
    d.settle()
    d.execute(d.node("condition"))
    dec = d.settle()
    assert dec.wake_at == T0 + timedelta(seconds=1)  # 1 s minimum per iteration
    assert d.st().state["phase"] == "padding" and d.st().wake_at == T0 + timedelta(seconds=1)
    assert dec.run_sql == []
    d.later(0.5)
    assert d.settle().run_sql == []
    d.later(0.5)
    dec = d.settle()
    assert [r.node_id for r in dec.run_sql] == [d.node("left")]
    assert d.st().state["iteration"] == 2
    assert d.st("condition").status == "pending"  # reset for the new iteration
    d.run()
    assert d.now == T0 + timedelta(seconds=2)  # three iterations, the last not padded
    assert d.status == "completed"


def test_long_iterations_are_not_padded() -> None:
    d = Driver(loop(then(sleep(5), sql("SELECT more(c,2)", "m")), sql("SELECT $m.more")))
    _, handler = counter_handler()
    d.handler = handler  # type: ignore[assignment]
    d.run()
    assert d.now == T0 + timedelta(seconds=10)


def test_iteration_cap() -> None:
    counts, handler = counter_handler()
    d = Driver(loop(sql("SELECT next(b)")), settings=EngineSettings(0, 3))
    d.handler = handler  # type: ignore[assignment]
    d.run()
    assert counts == {"b": 3}
    assert d.status == "failed" and d.output == loop_cap_message(3)
    assert d.output.startswith("Loop exceeded maximum iteration count of 3. ")
    assert loop_cap_message(100000).startswith("Loop exceeded maximum iteration count of 100000. ")


def test_nested_loops_with_named_results() -> None:
    # outer loop (non-root, after a step): body = inner loop |=> 'inner' then a step using $inner and $seed
    counts, handler = counter_handler()
    inner = loop(sql("SELECT next(i)", "i"), sql("SELECT more(ic,2)"), name="inner")
    outer = loop(
        then(inner, sql("SELECT $inner.n AS last, $seed AS seed, '$i' AS i", "o")), sql("SELECT more(oc,2)")
    )
    d = Driver(
        then(sql("SELECT 10 AS s", "seed"), outer, sql("SELECT $o.last AS last, $inner.n AS n")),
        settings=FAST,
    )
    d.handler = handler  # type: ignore[assignment]
    d.run()
    assert d.status == "completed"
    mids = [s for _, s in d.executed if s.endswith("AS i")]
    # the inner loop's own names merge back into the outer iteration; the seed is visible
    # outer iteration 1: the inner loop runs i=1,2; iteration 2: i=3 and the inner loop stops at once
    assert mids == [
        "SELECT 2 AS last, 10 AS seed, '2' AS i",
        "SELECT 3 AS last, 10 AS seed, '3' AS i",
    ]
    # names carried by the outer loop merge back on exit
    assert d.executed[-1][1] == "SELECT 3 AS last, 3 AS n"
    carried = d.st("left.right").state["carried"]
    assert carried["o"] == rows({"last": 3, "seed": 10, "i": "3"})
    assert carried["inner"] == rows({"n": 3}) and "seed" not in carried


def test_non_root_loop_keeps_its_names_across_iterations() -> None:
    counts, handler = counter_handler()
    body = then(sql("SELECT '$prev?' AS p"), sql("SELECT next(x)", "prev"))
    d = Driver(then(sql("SELECT 0"), loop(body, sql("SELECT more(c,3)"))), settings=FAST)
    d.handler = handler  # type: ignore[assignment]
    d.run()
    ps = [s for _, s in d.executed if s.endswith("AS p")]
    assert ps == [
        "SELECT '$prev?' AS p",  # unknown name: untouched
        "SELECT '1' AS p",
        "SELECT '2' AS p",
    ]


def test_root_loop_restarts_every_iteration_with_an_empty_map() -> None:
    counts, handler = counter_handler()
    body = then(sql("SELECT '$prev?' AS p"), sql("SELECT next(x)", "prev"))
    d = Driver(loop(body, sql("SELECT more(c,3)")), settings=FAST)
    d.handler = handler  # type: ignore[assignment]
    d.run()
    ps = [s for _, s in d.executed if s.endswith("AS p")]
    assert ps == ["SELECT '$prev?' AS p"] * 3


def test_loop_containing_join_and_race() -> None:
    counts, handler = counter_handler()
    body = then(
        join(sql("SELECT next(a)", "a"), race(sql("SELECT next(r)"), sleep(60))),
        sql("SELECT more(c,3)", "m"),
    )
    d = Driver(loop(body, sql("SELECT $m.more")), settings=FAST)
    d.handler = handler  # type: ignore[assignment]
    d.run(order=lambda p: p[-1])
    assert d.status == "completed"
    assert counts == {"a": 3, "r": 3, "c": 3}
    assert d.execution_count == 3
    assert d.output == rows({"more": False})
    # every iteration reset the race and join; the sleeps lost each time
    assert d.now == T0


# --- BREAK ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "null"), ('{"status": "done"}', '{"status":"done"}'), ("finished", '"finished"'), ("42", "42")],
)
def test_break_value_becomes_the_loop_result(value: str | None, expected: str) -> None:
    d = Driver(loop(then(sql("SELECT 1"), brk(value))), settings=FAST).run()
    assert d.status == "completed" and d.output == expected
    assert d.st("left.right").status == "completed" and d.st("left.right").result_text == expected
    assert d.st("left").state.get("break") is True


def test_break_from_the_condition() -> None:
    d = Driver(
        loop(sql("SELECT 1 AS x"), if_(sql("SELECT true"), brk("from cond"), sql("SELECT true"))),
        settings=FAST,
    )
    d.run()
    assert d.output == '"from cond"'


def test_break_exits_only_the_innermost_loop() -> None:
    counts, handler = counter_handler()
    inner = loop(then(sql("SELECT next(i)"), brk("inner")), name="in")
    d = Driver(
        then(sql("SELECT 0"), loop(then(inner, sql("SELECT $in AS got")), sql("SELECT more(o,2)"))),
        settings=FAST,
    )
    d.handler = handler  # type: ignore[assignment]
    d.run()
    assert d.status == "completed"
    assert counts == {"i": 2, "o": 2}
    assert d.output == rows({"got": "inner"})


def test_break_from_inside_a_join_in_a_loop() -> None:
    counts, handler = counter_handler()
    body = join(
        then(sql("SELECT next(a)", "a"), if_(sql("SELECT $a.n >= 2"), brk("out"), sql("SELECT 0"))),
        sleep(100),
    )
    d = Driver(loop(body), settings=FAST)

    def h(text: str, nid: str, n: int) -> str:
        if text.startswith("SELECT ") and " >= " in text:
            left, right = text[len("SELECT ") :].split(" >= ")
            return rows({"ok": int(left) >= int(right)})
        return handler(text, nid, n)  # type: ignore[operator, no-any-return]

    d.handler = h
    d.run()
    assert d.status == "completed" and d.output == '"out"'
    assert counts == {"a": 2}
    assert d.now == T0 + timedelta(seconds=100)
    assert d.cancelled == [d.node("left.right")]  # the sleep of the second iteration
    join_state = d.st("left").state
    assert join_state["break"] is True and join_state["break_branch"] == 0


def test_break_through_a_race() -> None:
    d = Driver(loop(race(then(sleep(1), brk("r")), sleep(5))), settings=FAST).run()
    assert d.output == '"r"' and d.now == T0 + timedelta(seconds=1)


def test_break_outside_a_loop_fails_the_instance() -> None:
    d = Driver(brk()).run()
    assert d.status == "failed" and d.output == BREAK_OUTSIDE_LOOP
    assert d.st().status == "completed" and d.st().result_text == "null"
    assert BREAK_OUTSIDE_LOOP == (
        "df.break() was called outside of a loop. df.break() may only be used inside df.loop()."
    )


def test_break_outside_a_loop_through_a_join_is_not_prefixed() -> None:
    d = Driver(then(sql("SELECT 1"), join(brk("x"), sql("SELECT 2")))).run()
    assert d.status == "failed" and d.output == BREAK_OUTSIDE_LOOP
    assert d.st("right.left").status == "completed" and d.st("right.left").result_text == "null"


# --- timers ---------------------------------------------------------------------------------------


def test_sleep() -> None:
    d = Driver(sleep(30))
    dec = d.settle()
    assert dec.wake_at == T0 + timedelta(seconds=30) and dec.run_sql == []
    assert d.st().status == "running" and d.st().wake_at == T0 + timedelta(seconds=30)
    d.later(29)
    assert d.settle().instance_status == "running"
    d.later(1)
    d.settle()
    assert d.status == "completed" and d.output == '{"slept":true,"seconds":30}'
    assert json.loads(d.output) == {"slept": True, "seconds": 30}
    assert d.st().wake_at is None


def test_sleep_zero_finishes_at_once() -> None:
    d = Driver(then(sleep(0), sql("SELECT 1 AS x")))
    dec = d.settle()
    assert len(dec.run_sql) == 1


def test_wait_for_schedule_waits_for_the_next_tick() -> None:
    d = Driver(schedule("*/15 9-17 * * MON-FRI"))  # T0 is Saturday 12:30 UTC
    dec = d.settle()
    monday = T0.replace(day=17, hour=9, minute=0)
    assert dec.wake_at == monday
    d.run()
    assert d.now == monday and d.output == '{"scheduled":true}'


def test_invalid_schedule_fails_the_node() -> None:
    d = Driver(schedule("61 * * * *")).run()
    assert d.status == "failed" and d.output.startswith("Invalid cron expression '61 * * * *': ")  # type: ignore[union-attr]


def test_wake_at_is_the_earliest_active_timer() -> None:
    d = Driver(join(sleep(50), signal("s", timeout=20), sleep(30)))
    assert d.settle().wake_at == T0 + timedelta(seconds=20)
    d.run()
    assert d.output == (
        '[{"slept":true,"seconds":50},{"signal_name":"s","timed_out":true,"data":null},{"slept":true,"seconds":30}]'
    )


# --- signals --------------------------------------------------------------------------------------


def test_signal_waits_then_receives() -> None:
    d = Driver(signal("approve", result_name="a"))
    dec = d.settle()
    assert dec.wake_at is None and d.status == "running"
    sid = d.send("approve", '{"by": "ann"}')
    dec = d.settle()
    assert dec.consume == [(sid, d.root)]
    assert d.output == '{"signal_name":"approve","timed_out":false,"data":{"by":"ann"}}'


def test_signal_payload_that_is_not_json_is_a_string() -> None:
    d = Driver(signal("s"))
    d.settle()
    d.send("s", "plain text")
    d.settle()
    assert json.loads(d.output or "")["data"] == "plain text"


def test_early_signal_is_queued_for_the_first_wait_to_start() -> None:
    d = Driver(then(sql("SELECT 1"), signal("go"), signal("go")))
    first = d.send("go", '"first"')
    second = d.send("go", '"second"')
    d.run()
    assert d.status == "completed"
    assert d.consumed == [(first, d.node("left.right")), (second, d.node("right"))]
    assert json.loads(d.output or "")["data"] == "second"


def test_signal_is_broadcast_to_every_active_wait() -> None:
    d = Driver(join(signal("go"), signal("go"), signal("other")))
    d.settle()
    sid = d.send("go", "1")
    d.send("go", "2")  # stays queued: nobody is left waiting for it
    dec = d.settle()
    assert sorted(dec.consume) == sorted([(sid, d.node("left")), (sid, d.node("right"))])
    assert d.st("left").status == "completed" and d.st("right").status == "completed"
    assert json.loads(d.st("right").result_text or "")["data"] == 1
    assert [s.id for s in d.view().signals] == [2]


def test_signal_timeout() -> None:
    d = Driver(signal("approve", timeout=3600))
    dec = d.settle()
    assert dec.wake_at == T0 + timedelta(hours=1)
    d.run()
    assert d.output == '{"signal_name":"approve","timed_out":true,"data":null}'


def test_signal_for_another_name_is_not_consumed() -> None:
    d = Driver(signal("a"))
    d.send("b")
    assert d.settle().consume == []
    assert d.status == "running"


# --- combinations and propagation -----------------------------------------------------------------


def test_join_inside_if() -> None:
    d = Driver(if_(sql("SELECT true"), join(sql("SELECT 1 AS a"), sql("SELECT 2 AS b")), sql("SELECT 3")))
    d.run()
    assert json.loads(d.output or "") == [
        {"rows": [{"a": 1}], "row_count": 1},
        {"rows": [{"b": 2}], "row_count": 1},
    ]


def test_failure_messages_nest_through_join_and_race() -> None:
    d = Driver(then(join(sql("SELECT 1"), race(sql("FAIL deep"), signal("never"))), sql("SELECT 2")))
    d.run()
    assert d.output == "JOIN branch 2 failed: RACE left branch failed: deep"
    assert d.st("left").status == "failed" and d.st().status == "failed"
    assert json.loads(d.st().result_text or "") == d.output


def test_failure_propagates_to_the_root_through_if_and_loop() -> None:
    d = Driver(
        loop(if_(sql("SELECT true"), then(sql("SELECT 1"), sql("FAIL x")), sql("SELECT 2"))), settings=FAST
    ).run()
    assert d.output == "x" and d.st().status == "failed" and d.st("left").status == "failed"


def test_join_that_failed_does_not_start_new_steps_in_other_branches() -> None:
    d = Driver(join(then(sql("SELECT 1"), sql("SELECT 2")), sql("FAIL boom")))
    d.settle()
    first, bad = d.node("left.left"), d.node("right")
    d.finish(first, rows({"x": 1}))
    d.finish(bad, error="boom")
    dec = d.settle()
    assert dec.run_sql == [] and d.output == "JOIN branch 2 failed: boom"
    assert d.st("left.right").status == "pending"


def test_complete_and_fail_helpers_stamp_the_node() -> None:
    d = Driver(join(sql("SELECT 1"), sql("SELECT 2")))
    d.settle()
    from durable.engine import complete_sql, fail_sql

    b = d.node("right")
    u = complete_sql(d.view(), b, rows({"x": 1}))
    assert u.status == "completed" and u.result_text == rows({"x": 1})
    assert u.status_details == {"execution_id": f"{IID}::1::{b}::1"}
    f = fail_sql(d.view(), b, 'he said "no"')
    assert f.status == "failed" and f.result_text == '"he said \\"no\\""'


def test_view_with_hand_built_nodes() -> None:
    """The worker builds views from rows: parent/slot and a missing state default to pending."""
    nodes = {
        "00000001": Node("00000001", "THEN", left="00000002", right="00000003"),
        "00000002": Node("00000002", "SQL", query="SELECT 1", parent="00000001", slot="left"),
        "00000003": Node("00000003", "SLEEP", query="5", parent="00000001", slot="right"),
    }
    view = InstanceView(IID, None, "00000001", nodes, {"00000001": NodeState()}, now=T0)
    d = decide(view)
    assert [u.node_id for u in d.updates] == ["00000001", "00000002"]
    assert d.run_sql[0].sql == "SELECT 1"
    with pytest.raises(ValueError):
        decide(InstanceView(IID, None, "00000001", nodes, {}, now=T0.replace(tzinfo=None)))


def test_signals_in_a_view_are_not_mutated() -> None:
    sigs = [Signal(1, "go", "{}")]
    d = Driver(signal("go"))
    view = InstanceView(IID, None, d.root, d.nodes, d.states, signals=sigs, now=T0)
    before = (dict(d.states), list(sigs))
    decide(view)
    assert (dict(d.states), list(sigs)) == before


def test_mini_select_failure_type() -> None:
    with pytest.raises(StepFailed):
        mini_select("UPDATE t SET x = 1")


# --- limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["then", "then_right", "join", "race", "if", "loop"])
def test_graphs_as_deep_as_allowed(kind: str) -> None:
    """256 levels below the root (the graph limit) must not exhaust the Python stack."""
    env = sql("SELECT 1 AS x")
    for _ in range(256):
        if kind == "then":
            env = then(env, sleep(0))
        elif kind == "then_right":
            env = then(sleep(0), env)
        elif kind == "join":
            env = join(env, sleep(0))
        elif kind == "race":
            env = race(env, signal("never"))
        elif kind == "if":
            env = if_(sleep(0), env, sleep(0))
        else:
            env = loop(env, sql("SELECT false"))
    d = Driver(env, settings=FAST).run()
    assert d.status == "completed"


def wide(n: int) -> Env:
    branches = [sql(f"SELECT {i} AS x") for i in range(n)]
    while len(branches) > 1:
        branches = [
            join(branches[i], branches[i + 1]) if i + 1 < len(branches) else branches[i]
            for i in range(0, len(branches), 2)
        ]
    return branches[0]


def test_wide_graph() -> None:
    d = Driver(wide(3000))
    assert len(d.settle().run_sql) == 3000
    d = Driver(wide(150)).run(order=lambda p: p[len(p) // 2])
    assert d.status == "completed" and len(d.executed) == 150
    assert json.loads(d.output or "")[0][0][0][0][0][0][0][0]["rows"] == [{"x": 0}]


def test_very_long_sleep_waits_for_ever() -> None:
    d = Driver(sleep(10**15))
    dec = d.settle()
    assert dec.wake_at is not None and dec.wake_at.year == 9999


def test_signal_wait_in_a_loop_takes_one_signal_per_iteration() -> None:
    counts, handler = counter_handler()
    d = Driver(loop(signal("tick", result_name="t"), sql("SELECT more(c,3)")), settings=FAST)
    d.handler = handler  # type: ignore[assignment]
    ids = [d.send("tick", str(i)) for i in range(4)]
    d.run()
    assert d.status == "completed"
    assert [sid for sid, _ in d.consumed] == ids[:3]
    assert json.loads(d.output or "")["data"] == 2
    assert [s.id for s in d.view().signals] == [ids[3]]


def test_signal_beats_a_timeout_that_is_also_due() -> None:
    d = Driver(signal("s", timeout=10))
    d.settle()
    d.later(60)
    d.send("s", '"late but here"')
    d.settle()
    assert json.loads(d.output or "") == {"signal_name": "s", "timed_out": False, "data": "late but here"}


def test_a_cancelled_wait_does_not_consume() -> None:
    d = Driver(then(race(signal("go"), sleep(5)), signal("go", result_name="g")))
    d.settle()
    d.later(5)
    dec = d.settle()  # the race is over: its wait is abandoned, the second wait starts
    assert dec.consume == [] and d.st("right").status == "running"
    sid = d.send("go", '"x"')
    dec = d.settle()
    assert dec.consume == [(sid, d.node("right"))]
    assert d.status == "completed"


def test_early_signal_and_running_wait_in_one_decision() -> None:
    """A wait already running gets the signal; a wait starting in the same decision does not."""
    d = Driver(join(signal("go"), then(sql("SELECT 1"), signal("go"))))
    d.settle()
    sid = d.send("go", "1")
    d.execute(d.node("right.left"))
    dec = d.settle()
    assert dec.consume == [(sid, d.node("left"))]
    assert d.st("right.right").status == "running"
