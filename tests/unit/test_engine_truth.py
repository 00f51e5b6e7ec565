"""Truthiness (PGD_REFERENCE 2.7)."""

from __future__ import annotations

import json

import pytest

from durable.engine import truthy


def result(*records: dict[str, object]) -> str:
    return json.dumps({"rows": list(records), "row_count": len(records)})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # row sets: empty -> false, else the first column of the first row
        (result(), False),
        (result({"a": True}), True),
        (result({"a": False, "b": True}), False),
        (result({"b": 1, "a": 0}), True),  # column order kept: b is first
        (result({"a": 0}, {"a": 1}), False),  # first row only
        (result({"a": None}), False),
        (result({"a": "yes"}), True),
        (result({"a": []}), False),
        (result({"a": [0]}), True),
        ('{"rows":[{"zeta":1,"a":0}],"row_count":1}', True),
        ('{"rows":[{"a":0,"zeta":1}],"row_count":1}', False),
        # other JSON: the value
        ("true", True),
        ("false", False),
        ("null", False),
        ("0", False),
        ("0.0", False),
        ("-0", False),
        ("2", True),
        ("-1.5", True),
        ("1e-300", True),
        ("[]", False),
        ("[false]", True),
        ("{}", False),
        ('{"signal_name":"s","timed_out":false,"data":null}', True),
        ('""', False),
        ('"  "', False),
        ('"true"', True),
        ('" T "', True),
        ('"YES"', True),
        ('"false"', False),
        ('"F"', False),
        ('"No"', False),
        ('"0"', False),
        ('"0.0"', False),
        ('"-0.000"', False),
        ('"1e3"', True),
        ('"0e5"', False),
        ('".5"', True),
        ('"nan"', True),  # parses as a float that is not 0
        ('"inf"', True),
        ('"1_0"', True),  # not a float in Rust: any other text is true
        ('"banana"', True),
        ('"off"', True),  # only the listed words are false
        # not JSON: the string rule on the raw text
        ("yes", True),
        ("no", False),
        ("  False ", False),
        ("0.00", False),
        ("hello world", True),
        ("", False),
    ],
)
def test_truthy(text: str, expected: bool) -> None:
    assert truthy(text) is expected


def test_none_is_false() -> None:
    assert truthy(None) is False
