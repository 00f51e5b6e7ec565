"""Named queries from queries.sql, loaded once (works from a wheel)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_BLOCK = re.compile(r"^-- name: (\w+) --\n(?:--[^\n]*\n)*(.*?)(?=^-- name: |\Z)", re.S | re.M)


@cache
def all_queries() -> dict[str, LiteralString]:
    text = (resources.files("durable.store") / "queries.sql").read_text()
    return {m[1]: cast(LiteralString, m[2].strip()) for m in _BLOCK.finditer(text)}


def query(name: str) -> LiteralString:
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in durable/store/queries.sql") from None
