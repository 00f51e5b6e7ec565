"""The pure engine: stored state + time in, actions out (no I/O, no clock).

- :func:`decide` advances an instance and says what to run, consume, cancel;
- :func:`complete_sql` / :func:`fail_sql` build the update for a finished SQL step;
- :func:`render` substitutes ``{vars}`` and ``$results`` into a step's SQL;
- :func:`truthy` is the condition rule; :mod:`durable.engine.cron` the schedules.
"""

from __future__ import annotations

from durable.engine.cron import next_tick, validate
from durable.engine.decide import (
    BREAK_OUTSIDE_LOOP,
    HTTP_NOT_SUPPORTED,
    LOOP_LOST_RACE,
    complete_sql,
    contexts,
    decide,
    fail_sql,
    loop_cap_message,
)
from durable.engine.model import (
    Decision,
    EngineSettings,
    InstanceView,
    Node,
    NodeState,
    NodeUpdate,
    RunSql,
    Signal,
)
from durable.engine.substitute import SubstitutionError, render
from durable.engine.truth import truthy

__all__ = [
    "BREAK_OUTSIDE_LOOP",
    "HTTP_NOT_SUPPORTED",
    "LOOP_LOST_RACE",
    "Decision",
    "EngineSettings",
    "InstanceView",
    "Node",
    "NodeState",
    "NodeUpdate",
    "RunSql",
    "Signal",
    "SubstitutionError",
    "complete_sql",
    "contexts",
    "decide",
    "fail_sql",
    "loop_cap_message",
    "next_tick",
    "render",
    "truthy",
    "validate",
]
