"""Cron schedules for WAIT_SCHEDULE (CONTRACT 9: standard cron, plus a year field).

Five fields ``minute hour day-of-month month day-of-week``, optionally a sixth
field holding the year (never seconds).  Names (``JAN``, ``MON``) are accepted;
day-of-week runs 0-7 with both 0 and 7 meaning Sunday.  When day-of-month and
day-of-week are both restricted (neither starts with ``*`` or ``?``, as
Vixie cron decides it) a day matches when either matches; otherwise both must.
The ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly`` shorthands are
accepted.  All times are UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from croniter import croniter  # type: ignore[import-untyped]

YEAR_MIN = 1970
YEAR_MAX = 2099

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = frozenset("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())
_DAYS = frozenset("SUN MON TUE WED THU FRI SAT".split())
# Words allowed per field (croniter would also take "R" for random, and "H" hashes).
_WORDS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset(),
    frozenset({"L", "W", "LW"}),
    _MONTHS,
    _DAYS | {"L"},
)

_YEAR_ITEM = re.compile(r"(\*|\d{4}(?:-\d{4})?)(?:/(\d+))?")


class _Schedule:
    def __init__(self, expr: str) -> None:
        text = expr.strip()
        text = _MACROS.get(text.lower(), text)
        fields = text.split()
        if len(fields) not in (5, 6):
            raise ValueError(f"expected 5 fields (or 6 with a year), got {len(fields)}")
        self.five = " ".join(fields[:5])
        for i, f in enumerate(fields[:5]):
            for word in re.findall(r"[A-Za-z]+", f):
                if word.upper() not in _WORDS[i]:
                    raise ValueError(f"unexpected '{word}' in field {i + 1}")
        dom, dow = fields[2], fields[4]
        self.day_or = not (dom[:1] in ("*", "?") or dow[:1] in ("*", "?"))
        if not croniter.is_valid(self.five):
            raise ValueError("a field is out of range or malformed")
        self.years: frozenset[int] | None = _parse_years(fields[5]) if len(fields) == 6 else None

    def next_after(self, after: datetime) -> datetime:
        start = after.astimezone(UTC)
        for _ in range(YEAR_MAX - YEAR_MIN + 2):
            try:
                tick: datetime = croniter(self.five, start, day_or=self.day_or).get_next(datetime)
            except Exception as exc:  # croniter gives up on impossible dates (Feb 30)
                raise ValueError("no time ever matches this schedule") from exc
            tick = tick.astimezone(UTC)
            if self.years is None or tick.year in self.years:
                return tick
            later = [y for y in self.years if y > tick.year]
            if not later:
                raise ValueError("no later year matches this schedule")
            start = datetime(min(later), 1, 1, tzinfo=UTC) - timedelta(seconds=1)
        raise ValueError("no time matches this schedule")  # pragma: no cover


def _parse_years(field: str) -> frozenset[int]:
    years: set[int] = set()
    for item in field.split(","):
        m = _YEAR_ITEM.fullmatch(item)
        if not m:
            raise ValueError(f"invalid year field '{field}'")
        base, step_s = m.group(1), m.group(2)
        step = int(step_s) if step_s else 1
        if step < 1:
            raise ValueError(f"invalid year step in '{field}'")
        if base == "*":
            lo, hi = YEAR_MIN, YEAR_MAX
        elif "-" in base:
            lo_s, hi_s = base.split("-")
            lo, hi = int(lo_s), int(hi_s)
        else:
            lo = int(base)
            hi = YEAR_MAX if step_s else lo
        if not (YEAR_MIN <= lo <= YEAR_MAX and YEAR_MIN <= hi <= YEAR_MAX) or lo > hi:
            raise ValueError(f"year out of range {YEAR_MIN}-{YEAR_MAX} in '{field}'")
        years.update(range(lo, hi + 1, step))
    return frozenset(years)


def validate(expr: str) -> None:
    """Raise ValueError (with a reason) when ``expr`` is not a schedule we accept."""
    _Schedule(expr)


def next_tick(expr: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that the schedule matches (UTC, whole minutes)."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    return _Schedule(expr).next_after(after)
