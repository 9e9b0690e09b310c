"""Comparing nested JSON answers (dicts of lists of dicts) with a tolerance on their numbers.

`pytest.approx` compares a flat dict or list; since pytest 9 it refuses a dict nested in one, and before that it
compared the nested numbers exactly. `approx_nested(expected, abs=1e-5)` puts the tolerance on every number, however
deep: `actual == approx_nested(expected, abs=1e-5)` holds when both have the same keys, lengths, strings, booleans and
None in the same places and every number is within the tolerance.
"""

from __future__ import annotations

import pytest


class _Exactly:
    """A boolean that only the same boolean equals (in Python, True == 1 and False == 0.0)."""

    def __init__(self, value: bool):
        self.value = value

    def __eq__(self, actual) -> bool:
        return isinstance(actual, bool) and actual == self.value

    def __repr__(self) -> str:
        return repr(self.value)


def approx_nested(expected, **tolerance):
    """`expected` with each number replaced by `pytest.approx(number, **tolerance)` and each boolean by one that only
    a boolean equals, through dicts, lists and tuples."""
    if isinstance(expected, dict):
        return {key: approx_nested(value, **tolerance) for key, value in expected.items()}
    if isinstance(expected, (list, tuple)):
        return type(expected)(approx_nested(value, **tolerance) for value in expected)
    if isinstance(expected, bool):
        return _Exactly(expected)
    if isinstance(expected, (int, float)):
        return pytest.approx(expected, **tolerance)
    return expected
