"""Cron schedules (CONTRACT 9: standard cron, day-of-week 0 or 7 = Sunday, OR rule, year field)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from durable.engine.cron import next_tick, validate

SAT = datetime(2024, 6, 15, 12, 30, 0, tzinfo=UTC)  # Saturday 15 June 2024, 12:30 UTC


def ticks(expr: str, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        after = next_tick(expr, after)
        out.append(after)
    return out


def day(d: int, h: int = 0, m: int = 0, month: int = 6, year: int = 2024) -> datetime:
    return datetime(year, month, d, h, m, tzinfo=UTC)


def test_every_minute_is_strictly_after() -> None:
    assert next_tick("* * * * *", SAT) == day(15, 12, 31)
    assert next_tick("* * * * *", SAT + timedelta(seconds=59.5)) == day(15, 12, 31)
    assert next_tick("*/5 * * * *", SAT) == day(15, 12, 35)


@pytest.mark.parametrize("expr", ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN", "0 9 * * sun"])
def test_sunday_is_0_and_7(expr: str) -> None:
    assert ticks(expr, SAT, 2) == [day(16, 9), day(23, 9)]


def test_one_to_five_is_monday_to_friday() -> None:
    assert [t.strftime("%a") for t in ticks("0 9 * * 1-5", SAT, 6)] == [
        "Mon",
        "Tue",
        "Wed",
        "Thu",
        "Fri",
        "Mon",
    ]


def test_business_hours_every_quarter() -> None:
    got = ticks("*/15 9-17 * * MON-FRI", SAT, 3)
    assert got == [day(17, 9, 0), day(17, 9, 15), day(17, 9, 30)]
    # after the last slot of Friday comes Monday morning
    assert next_tick("*/15 9-17 * * MON-FRI", day(21, 17, 45)) == day(24, 9, 0)


def test_restricted_day_of_month_or_day_of_week() -> None:
    # June 2024: Fridays are 7, 14, 21, 28; the 13th is a Thursday
    assert ticks("0 0 13 * 5", day(1), 4) == [day(7), day(13), day(14), day(21)]


def test_star_day_of_month_means_only_day_of_week() -> None:
    assert ticks("0 0 * * 5", day(1), 2) == [day(7), day(14)]
    assert ticks("0 0 13 * *", day(1), 2) == [day(13), day(13, month=7)]


def test_month_names_and_lists() -> None:
    assert next_tick("30 6 1 JAN,jul *", SAT) == day(1, 6, 30, month=7)


def test_year_field_filters_years() -> None:
    assert next_tick("0 0 1 1 * 2026", SAT) == day(1, month=1, year=2026)
    assert next_tick("0 12 * * * 2024", SAT) == day(16, 12)
    assert next_tick("0 0 1 * * 2025-2026", SAT) == day(1, month=1, year=2025)
    assert next_tick("0 0 1 1 * 2024/2", SAT) == day(1, month=1, year=2026)
    with pytest.raises(ValueError):
        next_tick("0 0 1 1 * 2023", SAT)  # no later year


def test_sixth_field_is_a_year_not_seconds() -> None:
    with pytest.raises(ValueError):
        validate("* * * * * 30")  # 30 is not a year


def test_shorthands() -> None:
    assert next_tick("@daily", SAT) == day(16)
    assert next_tick("@hourly", SAT) == day(15, 13)


@pytest.mark.parametrize(
    "expr",
    [
        "61 * * * *",
        "every minute",
        "",
        "* * * *",
        "* * * * * * *",
        "0 0 0 * *",
        "0 0 * 13 *",
        "0 9 * * 8",
        "0 0 R * *",
        "H * * * *",
        "*/0 * * * *",
        "0 0 * * * 1969",
        "0 0 * * * 2100",
        "0 0 * * * 2030-2025",
        "0 0 * * * abc",
    ],
)
def test_invalid(expr: str) -> None:
    with pytest.raises(ValueError):
        validate(expr)


@pytest.mark.parametrize(
    "expr", ["* * * * *", "0 9 * * 0", "0 9 * * 7", "*/15 9-17 * * MON-FRI", "0 0 1 1 * 2030", "@weekly"]
)
def test_valid(expr: str) -> None:
    validate(expr)


def test_impossible_date_has_no_tick() -> None:
    with pytest.raises(ValueError):
        next_tick("0 0 30 2 *", SAT)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        next_tick("* * * * *", SAT.replace(tzinfo=None))
