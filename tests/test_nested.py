"""The tests' comparison of nested JSON answers: a tolerance on every number however deep, exact on the rest."""

from .nested import approx_nested

ANSWER = {"path": "a.jpg", "not_a_pet": False, "error": None,
          "predictions": [{"label": "pug", "probability": 0.999998}, {"label": "beagle", "probability": 2e-06}]}


def changed(path: tuple, value) -> dict:
    """ANSWER with the value at `path` (keys and list indices) replaced."""
    copy = {**ANSWER, "predictions": [dict(p) for p in ANSWER["predictions"]]}
    *parents, last = path
    inner = copy
    for key in parents:
        inner = inner[key]
    inner[last] = value
    return copy


def test_numbers_deep_inside_match_within_the_tolerance_only():
    assert changed(("predictions", 0, "probability"), 0.999991) == approx_nested(ANSWER, abs=1e-5)
    assert changed(("predictions", 1, "probability"), 0.0) == approx_nested(ANSWER, abs=1e-5)
    assert changed(("predictions", 0, "probability"), 0.99997) != approx_nested(ANSWER, abs=1e-5)
    assert changed(("predictions", 1, "probability"), 2e-06) != approx_nested(changed(
        ("predictions", 1, "probability"), 3e-05), abs=1e-5)


def test_structure_strings_booleans_and_none_must_match_exactly():
    assert ANSWER == approx_nested(ANSWER, abs=1e-5)
    assert changed(("predictions", 1, "label"), "pugg") != approx_nested(ANSWER, abs=1e-5)
    assert changed(("not_a_pet",), 0) != approx_nested(ANSWER, abs=1e-5)  # 0 == False in Python, not here
    assert changed(("not_a_pet",), None) != approx_nested(ANSWER, abs=1e-5)
    assert changed(("error",), 0.0) != approx_nested(ANSWER, abs=1e-5)
    assert {**ANSWER, "extra": 1} != approx_nested(ANSWER, abs=1e-5)
    assert changed(("predictions",), ANSWER["predictions"][:1]) != approx_nested(ANSWER, abs=1e-5)
