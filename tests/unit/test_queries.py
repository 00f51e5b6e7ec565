"""Every named query the code uses exists in durable/store/queries.sql, and every query there is used."""

from __future__ import annotations

import re
from pathlib import Path

from durable.store.queries import all_queries

ROOT = Path(__file__).resolve().parents[2]


def test_names_used_and_defined_match():
    code = "\n".join(p.read_text() for p in (ROOT / "durable").rglob("*.py"))
    used = set(re.findall(r'query\("(\w+)"\)', code)) | set(re.findall(r'_one\("(\w+)"', code))
    defined = set(all_queries())
    assert used - defined == set(), "used but not defined"
    assert defined - used == set(), "defined but never used"
