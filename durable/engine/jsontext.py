"""JSON text helpers: order-preserving parsing, exact number text, compact output.

Results are stored as JSON text with column order kept; the engine must not
reformat numbers it merely passes along (``1.50`` stays ``1.50``), so parsing
keeps each number's source text as a :class:`RawNumber`.  Values the engine
re-emits on pg_durable's behalf (a BREAK value, a signal payload) go through
serde_json there, which :func:`normalize` imitates.
"""

from __future__ import annotations

import json
import math
from typing import Any


class RawNumber(str):
    """A JSON number, kept as its source text."""

    __slots__ = ()

    def as_float(self) -> float:
        return float(self)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


_RAW_DECODER = json.JSONDecoder(parse_float=RawNumber, parse_int=RawNumber, parse_constant=_reject_constant)


def loads(text: str) -> Any:
    """Parse JSON text; objects keep key order, numbers are :class:`RawNumber`.

    Raises ValueError on anything that is not a single JSON value.
    """
    return _RAW_DECODER.decode(text)


def try_loads(text: str) -> tuple[bool, Any]:
    """(True, value) when ``text`` is JSON, else (False, None)."""
    try:
        return True, loads(text)
    except ValueError:
        return False, None


def string(s: str) -> str:
    """A JSON string literal, serde_json style (non-ASCII kept, control chars escaped)."""
    return json.dumps(s, ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON text; :class:`RawNumber` values are written as they came."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, RawNumber):
        return str(value)
    if isinstance(value, str):
        return string(value)
    if isinstance(value, bool):  # pragma: no cover - handled above
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_f64(value)
    if isinstance(value, dict):
        return "{" + ",".join(string(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def format_f64(x: float) -> str:
    """Format a finite float the way serde_json (ryu) does: ``1e20``, ``0.1``, ``2.0``."""
    if not math.isfinite(x):
        return "null"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    r = repr(abs(x))
    sign = "-" if x < 0 else ""
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    int_part, _, frac_part = mant.partition(".")
    all_digits = int_part + frac_part
    leading = len(all_digits) - len(all_digits.lstrip("0"))
    digits = all_digits.lstrip("0").rstrip("0") or "0"
    n = len(digits)
    # ryu's layout: kk = decimal point position counted from the first significant digit
    kk = len(int_part) - leading + exp
    if 0 <= kk - n and kk <= 16:
        return sign + digits + "0" * (kk - n) + ".0"
    if 0 < kk <= 16:
        return sign + digits[:kk] + "." + digits[kk:]
    if -5 < kk <= 0:
        return sign + "0." + "0" * (-kk) + digits
    e = kk - 1
    if n == 1:
        return f"{sign}{digits}e{e}"
    return f"{sign}{digits[0]}.{digits[1:]}e{e}"


def _serde_value(value: Any) -> Any:
    if isinstance(value, RawNumber):
        text = str(value)
        if all(c.isdigit() or c == "-" for c in text):
            n = int(text)
            if -(2**63) <= n < 2**64:
                return n
        return float(text)
    if isinstance(value, dict):
        return {k: _serde_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_serde_value(v) for v in value]
    return value


def normalize(text: str) -> str | None:
    """Re-emit JSON text compact as serde_json would; None when it is not JSON."""
    ok, value = try_loads(text)
    if not ok:
        return None
    return dumps(_serde_value(value))
