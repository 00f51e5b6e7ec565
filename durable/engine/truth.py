"""Truthiness of a result, for IF and LOOP conditions (PGD_REFERENCE 2.7)."""

from __future__ import annotations

import re
from typing import Any

from durable.engine import jsontext

# What Rust's f64::from_str accepts (after trimming): no underscores, no hex.
_FLOAT = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)",
    re.IGNORECASE,
)


def truthy_text(s: str) -> bool:
    """The string rule: trimmed and lower-cased; words, then numbers, else true."""
    t = s.strip().lower()
    if t == "":
        return False
    if t in ("true", "t", "yes"):
        return True
    if t in ("false", "f", "no"):
        return False
    if _FLOAT.fullmatch(t):
        return float(t) != 0.0
    return True


def truthy_value(value: Any) -> bool:
    """Truthiness of one parsed JSON value."""
    if value is None:
        return False
    if value is True or value is False:
        return bool(value)
    if isinstance(value, jsontext.RawNumber):
        return value.as_float() != 0.0
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return truthy_text(value)
    if isinstance(value, list | dict):
        return len(value) > 0
    return True


def truthy(result_text: str | None) -> bool:
    """Truthiness of a stored result.

    A row set is false when empty, else the first column of its first row
    decides; other JSON decides by its value; non-JSON text by the string rule.
    """
    if result_text is None:
        return False
    ok, value = jsontext.try_loads(result_text)
    if not ok:
        return truthy_text(result_text)
    if isinstance(value, dict) and "rows" in value and isinstance(value["rows"], list):
        rows = value["rows"]
        if not rows:
            return False
        first = rows[0]
        if isinstance(first, dict):
            if not first:
                return False
            return truthy_value(next(iter(first.values())))
        return truthy_value(first)
    return truthy_value(value)
