"""decide(): the pure state machine that advances one workflow instance.

It walks the node tree from the root in evaluation order, over the stored
statuses, results and bookkeeping (``NodeState.state``), and runs everything
forward that needs no outside work: composite nodes react to their children,
timers that are due fire, queued signals are delivered, loops iterate.  What
needs outside work (a SQL step) is started and handed back; the worker
executes it, records the result with :func:`complete_sql`/:func:`fail_sql` and
calls :func:`decide` again.

Named results (``|=>``) are never stored apart from the nodes: the map a node
sees is derived by replaying completed nodes in evaluation order, plus the
additions a non-root loop carries across iterations (kept in the LOOP node's
state).  Engine bookkeeping kept in ``state``:

- IF ``{"branch": "then"|"else"}`` once decided;
- RACE ``{"winner": "left"|"right"}``; JOIN ``{"break_branch": i}`` after a break;
- any composite that ended because a BREAK passed through it: ``{"break": true}``;
- LOOP ``{"iteration": k, "started_at": iso, "phase": "body"|"padding", "carried": {name: text}}``;
- a failure that must not be prefixed by JOIN/RACE (break outside a loop): ``{"raw": true}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from durable.engine import cron, jsontext
from durable.engine.model import (
    LEAF_TYPES,
    TERMINAL,
    Decision,
    InstanceView,
    Node,
    NodeState,
    NodeUpdate,
    RunSql,
    Signal,
)
from durable.engine.substitute import SubstitutionError, render
from durable.engine.truth import truthy

BREAK_OUTSIDE_LOOP = "df.break() was called outside of a loop. df.break() may only be used inside df.loop()."
HTTP_NOT_SUPPORTED = "HTTP steps are not supported yet"
LOOP_LOST_RACE = "Loop branch cancelled after losing RACE"


def loop_cap_message(limit: int) -> str:
    return (
        f"Loop exceeded maximum iteration count of {limit}. "
        "Use df.break() or a loop condition to end the loop."
    )


Names = dict[str, str]


@dataclass(frozen=True)
class _Ctx:
    """Where a node runs: its execution scope and generation, and whether a loop encloses it."""

    scope: str
    gen: int
    in_loop: bool

    @property
    def execution_id(self) -> str:
        return f"{self.scope}::{self.gen}"

    def branch(self, child_id: str) -> _Ctx:
        return _Ctx(f"{self.scope}::{self.gen}::{child_id}", 1, self.in_loop)


@dataclass(frozen=True)
class _Out:
    """A node's outcome: still waiting, done with a result, failed with a message, or broke."""

    kind: str  # "wait" | "done" | "failed" | "break"
    text: str = ""
    raw: bool = False  # failed: pass up without JOIN/RACE prefixes


_WAIT = _Out("wait")


def _message(result_text: str | None) -> str:
    if result_text is None:
        return ""
    ok, value = jsontext.try_loads(result_text)
    return value if ok and isinstance(value, str) else result_text


def _config(node: Node) -> dict[str, Any]:
    ok, value = jsontext.try_loads(node.query or "")
    return value if ok and isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _diff(names: Mapping[str, str], base: Mapping[str, str]) -> Names:
    return {k: v for k, v in names.items() if base.get(k) != v}


def _same(a: NodeState, b: NodeState) -> bool:
    return (
        a.status == b.status
        and a.result_text == b.result_text
        and a.wake_at == b.wake_at
        and dict(a.state) == dict(b.state)
        and (dict(a.status_details) if a.status_details is not None else None)
        == (dict(b.status_details) if b.status_details is not None else None)
    )


@dataclass(frozen=True)
class _Snapshot:
    """A point to roll a decision back to (JOIN/RACE undo what a finished sibling made moot)."""

    journal: int
    sql_journal: int
    n_run: int
    n_consume: int
    n_cancel: int
    taken: frozenset[int]


class _Run:
    def __init__(self, view: InstanceView) -> None:
        if view.now is None or view.now.tzinfo is None:
            raise ValueError("InstanceView.now must be a timezone-aware datetime")
        self.view = view
        self.now: datetime = view.now
        self.nodes = view.nodes
        self.st: dict[str, NodeState] = {}
        self.order: list[str] = []  # nodes changed, in first-change order
        self.order_set: set[str] = set()
        # undo logs: (node id, previous working entry, first change of that node)
        self.journal: list[tuple[str, NodeState | None, bool]] = []
        self.sql_journal: list[tuple[str, str | None]] = []
        self.run_sql: list[RunSql] = []
        self.consume: list[tuple[int, str]] = []
        self.cancel: list[str] = []
        self.cancel_set: set[str] = set()
        self.taken: set[int] = set()  # signal ids consumed (or reserved) in this decision
        self.sql_text: dict[str, str] = {}
        self.deliveries: dict[str, Signal] = {}
        self.sys = {"sys_instance_id": view.instance_id, "sys_label": view.label or ""}

    # -- state access ------------------------------------------------------------------

    def get(self, nid: str) -> NodeState:
        s = self.st.get(nid)
        return s if s is not None else self.view.state_of(nid)

    def put(self, nid: str, **fields: Any) -> None:
        first = nid not in self.order_set
        self.journal.append((nid, self.st.get(nid), first))
        self.st[nid] = replace(self.get(nid), **fields)
        if first:
            self.order.append(nid)
            self.order_set.add(nid)

    def remember_sql(self, nid: str, text: str) -> None:
        self.sql_journal.append((nid, self.sql_text.get(nid)))
        self.sql_text[nid] = text

    def snapshot(self) -> _Snapshot:
        return _Snapshot(
            journal=len(self.journal),
            sql_journal=len(self.sql_journal),
            n_run=len(self.run_sql),
            n_consume=len(self.consume),
            n_cancel=len(self.cancel),
            taken=frozenset(self.taken),
        )

    def restore(self, snap: _Snapshot) -> None:
        while len(self.journal) > snap.journal:
            nid, old, first = self.journal.pop()
            if old is None:
                del self.st[nid]
            else:
                self.st[nid] = old
            if first:
                self.order.pop()
                self.order_set.discard(nid)
        while len(self.sql_journal) > snap.sql_journal:
            nid, old_text = self.sql_journal.pop()
            if old_text is None:
                del self.sql_text[nid]
            else:
                self.sql_text[nid] = old_text
        del self.run_sql[snap.n_run :]
        del self.consume[snap.n_consume :]
        for nid in self.cancel[snap.n_cancel :]:
            self.cancel_set.discard(nid)
        del self.cancel[snap.n_cancel :]
        self.taken = set(snap.taken)

    def stamp(self, ctx: _Ctx) -> dict[str, Any]:
        return {"execution_id": ctx.execution_id}

    def start(self, nid: str, ctx: _Ctx, **fields: Any) -> None:
        fields.setdefault("result_text", None)
        fields.setdefault("wake_at", None)
        self.put(nid, status="running", status_details=self.stamp(ctx), **fields)

    def complete(self, nid: str, ctx: _Ctx, text: str, state: Mapping[str, Any] | None = None) -> _Out:
        fields: dict[str, Any] = {}
        if state is not None:
            fields["state"] = dict(state)
        self.put(
            nid,
            status="completed",
            result_text=text,
            wake_at=None,
            status_details=self.stamp(ctx),
            **fields,
        )
        return _Out("done", text)

    def fail(
        self, nid: str, ctx: _Ctx, message: str, *, raw: bool = False, state: Mapping[str, Any] | None = None
    ) -> _Out:
        new_state = dict(self.get(nid).state if state is None else state)
        if raw:
            new_state["raw"] = True
        self.put(
            nid,
            status="failed",
            result_text=jsontext.string(message),
            wake_at=None,
            state=new_state,
            status_details=self.stamp(ctx),
        )
        return _Out("failed", message, raw)

    def broke(self, nid: str, ctx: _Ctx, value: str, **extra: Any) -> _Out:
        state = dict(self.get(nid).state)
        state.update(extra)
        state["break"] = True
        self.complete(nid, ctx, value, state)
        return _Out("break", value)

    def stored(self, nid: str, ctx: _Ctx) -> _Out:
        s = self.get(nid)
        if s.status == "failed":
            return _Out("failed", _message(s.result_text), bool(s.state.get("raw")))
        text = s.result_text if s.result_text is not None else "null"
        if self.nodes[nid].node_type == "BREAK":
            return _Out("break", text) if ctx.in_loop else _Out("failed", BREAK_OUTSIDE_LOOP, True)
        if s.state.get("break"):
            return _Out("break", text)
        return _Out("done", text)

    def is_break(self, nid: str) -> bool:
        s = self.get(nid)
        return s.status == "completed" and (
            self.nodes[nid].node_type == "BREAK" or bool(s.state.get("break"))
        )

    # -- named results -----------------------------------------------------------------

    def replay(self, nid: str, names: Names) -> Names:
        """The names map after completed node ``nid``, given the map it started from."""
        node = self.nodes[nid]
        s = self.get(nid)
        t = node.node_type
        if t in ("SLEEP", "WAIT_SCHEDULE", "BREAK"):
            return names
        if t in ("SQL", "SIGNAL", "HTTP", "HTTP_MULTIPART"):
            return self._own(node, s, names)
        broke = bool(s.state.get("break"))
        out: Names
        if t == "THEN":
            assert node.left is not None and node.right is not None
            out = self.replay(node.left, names)
            if self.is_break(node.left):
                return out
            out = self.replay(node.right, out)
        elif t == "IF":
            out = names
            if node.condition is not None:
                out = self.replay(node.condition, out)
                if self.is_break(node.condition):
                    return out
            taken = node.left if s.state.get("branch") == "then" else node.right
            assert taken is not None
            out = self.replay(taken, out)
        elif t == "JOIN":
            out = dict(names)
            branches = _branches(node)
            if broke:
                b = branches[int(s.state.get("break_branch", 0))]
                out.update(_diff(self.replay(b, names), names))
                return out
            for b in branches:
                out.update(_diff(self.replay(b, names), names))
        elif t == "RACE":
            winner = node.left if s.state.get("winner") == "left" else node.right
            assert winner is not None
            out = dict(names)
            out.update(_diff(self.replay(winner, names), names))
        elif t == "LOOP":
            out = dict(names)
            if nid != self.view.root:
                out.update(s.state.get("carried") or {})
        else:
            return names
        return out if broke else self._own(node, s, out)

    @staticmethod
    def _own(node: Node, s: NodeState, names: Names) -> Names:
        if node.result_name and s.status == "completed" and s.result_text is not None:
            out = dict(names)
            out[node.result_name] = s.result_text
            return out
        return names

    # -- the walk ----------------------------------------------------------------------

    def advance(self, nid: str, ctx: _Ctx, names: Names) -> _Out:
        s = self.get(nid)
        if s.status in TERMINAL:
            return self.stored(nid, ctx)
        node = self.nodes[nid]
        handler = _HANDLERS.get(node.node_type)
        if handler is None:
            return self.fail(nid, ctx, f"Unknown node_type '{node.node_type}'")
        out: _Out = handler(self, node, s, ctx, names)
        return out

    def _sql(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        try:
            sql = render(node.query or "", names, self.view.vars, self.sys)
        except SubstitutionError as exc:
            if s.status == "pending":
                return self.fail(node.id, ctx, exc.message)
            return _WAIT
        self.remember_sql(node.id, sql)
        if s.status == "pending":
            self.start(node.id, ctx)
            self.run_sql.append(RunSql(node.id, sql))
        return _WAIT

    def _http(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        return self.fail(node.id, ctx, HTTP_NOT_SUPPORTED)

    def _break(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        if not ctx.in_loop:
            self.complete(node.id, ctx, "null")
            return _Out("failed", BREAK_OUTSIDE_LOOP, True)
        value = _config(node).get("break_value")
        if value is None:
            text = "null"
        elif isinstance(value, str):
            text = jsontext.normalize(value) or jsontext.string(value)
        else:
            text = jsontext.normalize(jsontext.dumps(value)) or "null"
        self.complete(node.id, ctx, text)
        return _Out("break", text)

    def _sleep(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        seconds = _int((node.query or "").strip())
        if seconds is None or seconds < 0:
            return self.fail(node.id, ctx, f"Invalid sleep duration '{node.query}'")
        wake = s.wake_at
        if s.status == "pending" or wake is None:
            try:
                wake = self.now + timedelta(seconds=seconds)
            except OverflowError:
                wake = datetime.max.replace(tzinfo=self.now.tzinfo)
            self.start(node.id, ctx, wake_at=wake)
        if self.now >= wake:
            return self.complete(node.id, ctx, f'{{"slept":true,"seconds":{seconds}}}')
        return _WAIT

    def _schedule(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        wake = s.wake_at
        if s.status == "pending" or wake is None:
            expr = str(_config(node).get("cron_expr", ""))
            try:
                wake = cron.next_tick(expr, self.now)
            except ValueError as exc:
                return self.fail(node.id, ctx, f"Invalid cron expression '{expr}': {exc}")
            self.start(node.id, ctx, wake_at=wake)
        if self.now >= wake:
            return self.complete(node.id, ctx, '{"scheduled":true}')
        return _WAIT

    def _signal(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        cfg = _config(node)
        name = str(cfg.get("signal_name", ""))
        if s.status == "pending":
            for sig in self.view.signals:
                if sig.name == name and sig.id not in self.taken:
                    self.taken.add(sig.id)
                    return self._received(node, ctx, name, sig)
            timeout = _int(cfg.get("timeout_seconds"))
            wake = self.now + timedelta(seconds=timeout) if timeout is not None else None
            self.start(node.id, ctx, wake_at=wake)
            s = self.get(node.id)
        else:
            sig_for = self.deliveries.get(node.id)
            if sig_for is not None:
                return self._received(node, ctx, name, sig_for)
        if s.wake_at is not None and self.now >= s.wake_at:
            return self.complete(
                node.id, ctx, '{"signal_name":' + jsontext.string(name) + ',"timed_out":true,"data":null}'
            )
        return _WAIT

    def _received(self, node: Node, ctx: _Ctx, name: str, sig: Signal) -> _Out:
        data = jsontext.normalize(sig.data_text)
        if data is None:
            data = jsontext.string(sig.data_text)
        self.consume.append((sig.id, node.id))
        text = '{"signal_name":' + jsontext.string(name) + ',"timed_out":false,"data":' + data + "}"
        return self.complete(node.id, ctx, text)

    def _then(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        assert node.left is not None and node.right is not None
        if s.status == "pending":
            self.start(node.id, ctx)
        o = self.advance(node.left, ctx, names)
        if o.kind == "done":
            o = self.advance(node.right, ctx, self.replay(node.left, names))
        return self._finish_like(node, ctx, o)

    def _finish_like(self, node: Node, ctx: _Ctx, o: _Out, **extra: Any) -> _Out:
        """THEN/IF pass outcomes through unchanged."""
        if o.kind == "wait":
            return _WAIT
        if o.kind == "failed":
            return self.fail(node.id, ctx, o.text, raw=o.raw, state={**self.get(node.id).state, **extra})
        if o.kind == "break":
            return self.broke(node.id, ctx, o.text, **extra)
        state = {**self.get(node.id).state, **extra}
        return self.complete(node.id, ctx, o.text, state)

    def _if(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        assert node.left is not None and node.right is not None
        if s.status == "pending":
            self.start(node.id, ctx)
        branch = self.get(node.id).state.get("branch")
        cond_names = names
        if node.condition is not None:
            o = self.advance(node.condition, ctx, names)
            if o.kind != "done":
                return self._finish_like(node, ctx, o)
            cond_names = self.replay(node.condition, names)
            if branch is None:
                branch = "then" if truthy(o.text) else "else"
        elif branch is None:
            cfg = _config(node)
            if cfg.get("condition_type") != "result_has_rows":
                return self.fail(node.id, ctx, "IF has no condition")
            rn = str(cfg.get("result_name"))
            if rn not in names:
                return self.fail(node.id, ctx, f"df.if_rows: result '{rn}' not found")
            ok, value = jsontext.try_loads(names[rn])
            if not (ok and isinstance(value, dict) and "row_count" in value):
                return self.fail(
                    node.id, ctx, f"df.if_rows: result '{rn}' is not a SQL result (missing row_count)"
                )
            count = value["row_count"]
            try:
                has_rows = float(str(count)) > 0
            except ValueError:
                has_rows = False
            branch = "then" if has_rows else "else"
        if self.get(node.id).state.get("branch") != branch:
            self.put(node.id, state={**self.get(node.id).state, "branch": branch})
        taken = node.left if branch == "then" else node.right
        return self._finish_like(node, ctx, self.advance(taken, ctx, cond_names))

    def _join(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        if s.status == "pending":
            self.start(node.id, ctx)
        branches = _branches(node)
        snap = self.snapshot()
        outs = [self.advance(b, ctx.branch(b), names) for b in branches]
        bad = next((i for i, o in enumerate(outs) if o.kind in ("failed", "break")), None)
        if bad is not None and len(branches) > 1:
            # It ended before anything this decision started in the other branches was needed.
            self.restore(snap)
            o = self.advance(branches[bad], ctx.branch(branches[bad]), names)
            if o.kind in ("failed", "break"):
                outs[bad] = o
            else:  # pragma: no cover - a branch's outcome does not depend on its siblings
                outs = [self.advance(b, ctx.branch(b), names) for b in branches]
                bad = next((i for i, o in enumerate(outs) if o.kind in ("failed", "break")), None)
        if bad is not None:
            for j, b in enumerate(branches):
                if j != bad:
                    self.cancel_subtree(b)
            o = outs[bad]
            if o.kind == "break":
                return self.broke(node.id, ctx, o.text, break_branch=bad)
            msg = o.text if o.raw else f"JOIN branch {bad + 1} failed: {o.text}"
            return self.fail(node.id, ctx, msg, raw=o.raw)
        if any(o.kind == "wait" for o in outs):
            return _WAIT
        return self.complete(node.id, ctx, "[" + ",".join(o.text.strip() for o in outs) + "]")

    def _race(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        assert node.left is not None and node.right is not None
        if s.status == "pending":
            self.start(node.id, ctx)
        snap = self.snapshot()
        side, o = "left", self.advance(node.left, ctx.branch(node.left), names)
        if o.kind == "wait":
            ro = self.advance(node.right, ctx.branch(node.right), names)
            if ro.kind == "wait":
                return _WAIT
            # The right branch finished: nothing the left one started in this decision is wanted.
            self.restore(snap)
            side, o = "right", self.advance(node.right, ctx.branch(node.right), names)
            if o.kind == "wait":  # pragma: no cover - outcomes do not depend on siblings
                return _WAIT
        loser = node.right if side == "left" else node.left
        self.cancel_subtree(loser)
        ls = self.get(loser)
        if self.nodes[loser].node_type == "LOOP" and ls.status == "running":
            self.fail(loser, ctx.branch(loser), LOOP_LOST_RACE)
        if o.kind == "break":
            return self.broke(node.id, ctx, o.text, winner=side)
        if o.kind == "failed":
            msg = o.text if o.raw else f"RACE {side} branch failed: {o.text}"
            return self.fail(node.id, ctx, msg, raw=o.raw, state={**self.get(node.id).state, "winner": side})
        return self.complete(node.id, ctx, o.text, {**self.get(node.id).state, "winner": side})

    def _loop(self, node: Node, s: NodeState, ctx: _Ctx, names: Names) -> _Out:
        nid = node.id
        body = node.left
        assert body is not None
        is_root = nid == self.view.root
        settings = self.view.settings
        min_iteration = timedelta(seconds=settings.loop_min_iteration_seconds)
        if s.status == "pending":
            own = _Ctx(self.view.instance_id, 1, ctx.in_loop) if is_root else ctx
            self.start(
                nid,
                own,
                state={"iteration": 1, "started_at": self.now.isoformat(), "phase": "body", "carried": {}},
            )
        while True:
            st = dict(self.get(nid).state)
            k = int(st.get("iteration", 1))
            if is_root:
                own = _Ctx(self.view.instance_id, k, ctx.in_loop)
                inner = _Ctx(self.view.instance_id, k, True)
                start_names: Names = {}
            else:
                own = ctx
                inner = _Ctx(f"{ctx.scope}::{ctx.gen}::{nid}", k, True)
                start_names = {**names, **(st.get("carried") or {})}
            carried: Names = dict(st.get("carried") or {})
            if st.get("phase") != "padding":
                o = self.advance(body, inner, start_names)
                if o.kind == "wait":
                    return _WAIT
                if o.kind == "failed":
                    return self.fail(nid, own, o.text, raw=o.raw)
                after = self.replay(body, start_names)
                if o.kind == "break":
                    return self._exit(nid, own, o.text, after, names, is_root)
                result = o.text
                final = after
                if node.condition is not None:
                    c = self.advance(node.condition, inner, after)
                    if c.kind == "wait":
                        return _WAIT
                    if c.kind == "failed":  # a failing condition counts as false
                        return self._exit(nid, own, result, after, names, is_root)
                    final = self.replay(node.condition, after)
                    if c.kind == "break":
                        return self._exit(nid, own, c.text, final, names, is_root)
                    if not truthy(c.text):
                        return self._exit(nid, own, result, final, names, is_root)
                carried = {} if is_root else _diff(final, names)
                if k >= settings.loop_max_iterations:
                    return self.fail(nid, own, loop_cap_message(settings.loop_max_iterations))
                started = datetime.fromisoformat(str(st.get("started_at")))
                if self.now - started < min_iteration:
                    st.update(phase="padding", carried=carried)
                    self.put(nid, state=st, wake_at=started + min_iteration)
                    return _WAIT
            else:
                pad_until = self.get(nid).wake_at
                if pad_until is not None and self.now < pad_until:
                    return _WAIT
            # the next iteration
            self.reset_subtree(body)
            if node.condition is not None:
                self.reset_subtree(node.condition)
            self.put(
                nid,
                wake_at=None,
                state={
                    **st,
                    "iteration": k + 1,
                    "started_at": self.now.isoformat(),
                    "phase": "body",
                    "carried": carried,
                },
            )

    def _exit(self, nid: str, own: _Ctx, value: str, final: Names, names: Names, is_root: bool) -> _Out:
        st = dict(self.get(nid).state)
        st["carried"] = {} if is_root else _diff(final, names)
        st["phase"] = "done"
        return self.complete(nid, own, value, st)

    # -- subtrees ----------------------------------------------------------------------

    def subtree(self, nid: str) -> list[str]:
        out: list[str] = []
        stack = [nid]
        seen: set[str] = set()
        while stack:
            n = stack.pop()
            if n in seen or n not in self.nodes:
                continue
            seen.add(n)
            out.append(n)
            stack.extend(reversed(self.nodes[n].children()))
        return out

    def cancel_subtree(self, nid: str) -> None:
        for n in self.subtree(nid):
            if (
                self.get(n).status == "running"
                and self.nodes[n].node_type in LEAF_TYPES
                and n not in self.cancel_set
            ):
                self.cancel.append(n)
                self.cancel_set.add(n)

    def reset_subtree(self, nid: str) -> None:
        for n in self.subtree(nid):
            s = self.get(n)
            if s.status != "pending" or s.result_text is not None or s.wake_at is not None or s.state:
                self.put(n, status="pending", result_text=None, wake_at=None, state={})

    def active_running(self, states: Mapping[str, NodeState] | None = None) -> list[str]:
        """Running nodes whose ancestors are all running: the live frontier of the instance."""
        get = self.get if states is None else (lambda n: states.get(n) or NodeState())
        out: list[str] = []
        stack = [self.view.root]
        seen: set[str] = set()
        while stack:
            n = stack.pop()
            if n in seen or n not in self.nodes:
                continue
            seen.add(n)
            if get(n).status != "running":
                continue
            out.append(n)
            stack.extend(reversed(self.nodes[n].children()))
        return out

    # -- signals -----------------------------------------------------------------------

    def prepare_deliveries(self) -> None:
        """Signals go to every wait for their name that was already active when they arrived."""
        waiting: dict[str, list[str]] = {}
        for n in self.active_running(self.view.states):
            node = self.nodes[n]
            if node.node_type == "SIGNAL":
                waiting.setdefault(str(_config(node).get("signal_name", "")), []).append(n)
        for sig in self.view.signals:
            targets = [n for n in waiting.get(sig.name, []) if n not in self.deliveries]
            if targets:
                self.taken.add(sig.id)
                for n in targets:
                    self.deliveries[n] = sig

    # -- the decision ------------------------------------------------------------------

    def root_ctx(self) -> _Ctx:
        root = self.nodes[self.view.root]
        gen = 1
        if root.node_type == "LOOP":
            gen = int(self.view.state_of(root.id).state.get("iteration", 1) or 1)
        return _Ctx(self.view.instance_id, gen, False)

    def decide(self) -> Decision:
        self.prepare_deliveries()
        out = self.advance(self.view.root, self.root_ctx(), {})
        updates = []
        for nid in self.order:
            new = self.get(nid)
            if _same(new, self.view.state_of(nid)):
                continue
            updates.append(
                NodeUpdate(
                    node_id=nid,
                    status=new.status,
                    result_text=new.result_text,
                    wake_at=new.wake_at,
                    state=dict(new.state),
                    status_details=dict(new.status_details) if new.status_details is not None else None,
                )
            )
        active = self.active_running()
        wake: datetime | None = None
        in_flight: list[RunSql] = []
        for n in active:
            s = self.get(n)
            if s.wake_at is not None and (wake is None or s.wake_at < wake):
                wake = s.wake_at
            if self.nodes[n].node_type == "SQL" and n in self.sql_text:
                in_flight.append(RunSql(n, self.sql_text[n]))
        root = self.nodes[self.view.root]
        execution_count = self.view.execution_count
        if root.node_type == "LOOP":
            execution_count = int(self.get(root.id).state.get("iteration", 1) or 1)
        if out.kind == "done":
            status, output = "completed", out.text
        elif out.kind == "wait":
            status, output = "running", None
        else:
            status, output = "failed", out.text if out.kind == "failed" else BREAK_OUTSIDE_LOOP
        return Decision(
            updates=updates,
            run_sql=list(self.run_sql),
            consume=list(self.consume),
            cancel=list(self.cancel),
            instance_status=status,
            output=output,
            execution_count=execution_count,
            wake_at=wake if status == "running" else None,
            in_flight=in_flight if status == "running" else [],
        )


_Handler = Any
_HANDLERS: dict[str, _Handler] = {
    "SQL": _Run._sql,
    "HTTP": _Run._http,
    "HTTP_MULTIPART": _Run._http,
    "BREAK": _Run._break,
    "SLEEP": _Run._sleep,
    "WAIT_SCHEDULE": _Run._schedule,
    "SIGNAL": _Run._signal,
    "THEN": _Run._then,
    "IF": _Run._if,
    "JOIN": _Run._join,
    "RACE": _Run._race,
    "LOOP": _Run._loop,
}


def _branches(node: Node) -> list[str]:
    return [b for b in (node.left, node.right, *node.extras) if b is not None]


def decide(view: InstanceView) -> Decision:
    """Advance ``view`` as far as it goes without outside work; see the module docstring."""
    return _Run(view).decide()


# --- the worker's helpers when a step finishes --------------------------------------------


def contexts(view: InstanceView) -> dict[str, str]:
    """The execution id every node currently runs under (``<scope>::<gen>``)."""
    out: dict[str, str] = {}
    root = view.nodes[view.root]
    gen = int(view.state_of(root.id).state.get("iteration", 1) or 1) if root.node_type == "LOOP" else 1
    stack: list[tuple[str, _Ctx]] = [(view.root, _Ctx(view.instance_id, gen, False))]
    while stack:
        nid, ctx = stack.pop()
        if nid in out or nid not in view.nodes:
            continue
        out[nid] = ctx.execution_id
        node = view.nodes[nid]
        t = node.node_type
        if t in ("JOIN", "RACE"):
            stack.extend((b, ctx.branch(b)) for b in _branches(node))
        elif t == "LOOP":
            k = int(view.state_of(nid).state.get("iteration", 1) or 1)
            inner = (
                _Ctx(view.instance_id, k, True)
                if nid == view.root
                else _Ctx(f"{ctx.scope}::{ctx.gen}::{nid}", k, True)
            )
            stack.extend((c, inner) for c in node.children())
        else:
            stack.extend((c, ctx) for c in node.children())
    return out


def _finished(view: InstanceView, node_id: str, status: str, result_text: str) -> NodeUpdate:
    s = view.state_of(node_id)
    execution_id = contexts(view).get(node_id)
    details = {"execution_id": execution_id} if execution_id else s.status_details
    return NodeUpdate(
        node_id=node_id,
        status=status,
        result_text=result_text,
        wake_at=None,
        state=dict(s.state),
        status_details=dict(details) if details is not None else None,
    )


def complete_sql(view: InstanceView, node_id: str, result_text: str) -> NodeUpdate:
    """The update that records a finished SQL step's result (JSON text, column order kept)."""
    return _finished(view, node_id, "completed", result_text)


def fail_sql(view: InstanceView, node_id: str, message: str) -> NodeUpdate:
    """The update that records a failed SQL step (the message is stored as a JSON string)."""
    return _finished(view, node_id, "failed", jsontext.string(message))
