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


# -- string_variants: the same request with the names, places and enum values it states swapped ----------

TRIP = {"name": "trip.plan", "parameters": {"type": "dict", "required": ["city", "company_name", "mode", "diet"],
                                            "properties": {
    "city": {"type": "string"}, "company_name": {"type": "string"},
    "mode": {"type": "string", "enum": ["car", "train", "plane"]}, "diet": {"type": "string"},
    "days": {"type": "integer"}, "note": {"type": "string"}}}}
TRIP_ANSWER = {"city": ["Paris, France", "Paris"], "company_name": ["Acme"], "mode": ["train"], "diet": ["vegan"],
               "days": [3], "note": ["", "window seat"]}
TRIP_QUESTION = "Plan 3 days in Paris, France for Acme by train, vegan meals."


def trip(question: str = TRIP_QUESTION):
    return bfcl.BfclExample("simple_python_y", question, TRIP, TRIP_ANSWER)


def test_string_swappable_finds_each_stated_value_as_written():
    # the longest acceptable value the request writes ("Paris, France", not "Paris"); a common word
    # ("vegan") is found too (string_variants keeps it); an optional argument never
    assert bfcl.string_swappable(trip()) == {"city": "Paris, France", "company_name": "Acme", "mode": "train",
                                             "diet": "vegan"}
    # a value written twice, or inside another word, is not swappable
    assert "company_name" not in bfcl.string_swappable(trip("Plan 3 days in Paris for Acme and Acme by train, vegan."))
    assert "mode" not in bfcl.string_swappable(trip("Plan 3 days in Paris for Acme by trains, vegan."))


def test_string_variants_swap_values_of_the_same_kind_in_request_and_call_alike():
    import random

    out = bfcl.string_variants(trip(), 3, random.Random(0))
    assert len(out) == 3 and len({q for q, _ in out}) == 3
    for question, args in out:
        assert args["mode"] in ("car", "plane")  # another member of the enum
        assert args["city"] != "Paris, France" and args["company_name"] != "Acme"
        assert args["diet"] == "vegan"  # no value of its kind at hand: kept
        assert args["days"] != 3 or "3 days" in question  # numbers are swapped too (rarely to the same)
        for value in (args["city"], args["company_name"], args["mode"], f"{args['days']} days"):
            assert value in question  # every value in the call is the one the request states
        assert "note" not in args  # optional arguments as canonical_args writes them ("omit")


def test_string_variants_are_none_where_nothing_has_another_value():
    import random

    # a company's name written lower-case, a common word; the city and the mode optional ("" listed)
    only_common = {**TRIP_ANSWER, "city": ["", "Paris"], "company_name": ["someone"], "mode": ["", "train"]}
    ex = bfcl.BfclExample("simple_python_z", "Plan 3 days in Paris for someone by train, vegan.", TRIP, only_common)
    assert bfcl.string_variants(ex, 2, random.Random(0)) == []


def test_with_defaults_describes_a_default_without_touching_the_original_or_one_already_described():
    fn = {"name": "f", "parameters": {"type": "dict", "properties": {
        "unit": {"type": "string", "description": "The unit"}, "n": {"type": "integer"},
        "mode": {"type": "string", "description": "How. Default is 'fast'."}}}}
    out = bfcl.with_defaults(fn, {"unit": "km", "n": 3, "mode": "slow", "absent": 1})
    props = out["parameters"]["properties"]
    assert props["unit"]["description"] == "The unit. Default is 'km'."
    assert props["n"]["description"] == "Default is 3."
    assert props["mode"]["description"] == "How. Default is 'fast'."  # its own default stays the only one
    assert "absent" not in props and fn["parameters"]["properties"]["unit"]["description"] == "The unit"
