"""bench/results/bfcl.py canonical_args: the training call the SFT story writes for a BFCL example, with
its optional arguments left out, all written out, or written out only when the request states them.
Built examples, no BFCL data (bfcl-eval is installed by `make results` only)."""

from __future__ import annotations

import pytest

from tests.bench.helpers import results_module

with results_module("bfcl") as bfcl:  # pure Python at import: bfcl-eval is imported only by its checker
    pass

FUNCTION = {"name": "geo.distance", "parameters": {"type": "dict", "required": ["start", "end"], "properties": {
    "start": {"type": "string"}, "end": {"type": "string"}, "units": {"type": "string"},
    "round_to": {"type": "integer"}, "exact": {"type": "boolean"}}}}
ANSWER = {"start": ["Boston, MA"], "end": ["Washington, D.C."], "units": ["", "miles", "mile", "mi"],
          "round_to": ["", 2], "exact": ["", False]}


def example(question: str):
    return bfcl.BfclExample("simple_python_x", question, FUNCTION, ANSWER)


def test_omit_leaves_out_every_argument_bfcl_accepts_without():
    assert bfcl.canonical_args(example("Distance from Boston, MA to Washington, D.C. in mile, to 2 places?")) == {
        "start": "Boston, MA", "end": "Washington, D.C."}


def test_all_writes_every_optional_argument_with_its_first_value():
    assert bfcl.canonical_args(example("Distance from Boston, MA to Washington, D.C.?"), "all") == {
        "start": "Boston, MA", "end": "Washington, D.C.", "units": "miles", "round_to": 2, "exact": False}


def test_stated_writes_the_value_the_request_states_and_nothing_it_does_not():
    # "mile" is BFCL's second listed value: the one the request says is the one written
    assert bfcl.canonical_args(example("Distance from Boston, MA to Washington, D.C. in mile, to 2 places?"),
                               "stated") == {"start": "Boston, MA", "end": "Washington, D.C.", "units": "mile",
                                             "round_to": 2}
    # a value inside another word or number is not stated ("2" in "20", "mi" in "Miami"); a bool never is
    assert bfcl.canonical_args(example("Distance from Miami to Washington, D.C., 20 of them, exact?"),
                               "stated") == {"start": "Boston, MA", "end": "Washington, D.C."}


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="optional must be one of"):
        bfcl.canonical_args(example("x"), "some")
