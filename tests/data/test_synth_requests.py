"""The requests `modelmill data synth` writes without a teacher: many shapes, most of them carrying the
values in prose without the parameters' names (as real requests do), every value named, and a
description's third-person verb read as an order."""

from __future__ import annotations

import random
import re

from modelmill.datagen.synth import _imperative, template_request

FN = {"name": "get_forecast", "description": "Fetches the weather forecast for a place. Uses metric units.",
      "parameters": {"type": "object", "properties": {
          "city": {"type": "string"}, "days_ahead": {"type": "integer"}, "hourly": {"type": "boolean"},
          "stops": {"type": "array", "items": {"type": "string"}}}}}


def requests(args: dict, n: int = 300) -> list[str]:
    return [template_request(FN, args, random.Random(seed)) for seed in range(n)]


def test_requests_vary_in_shape_and_mostly_leave_out_parameter_names():
    args = {"city": "Oslo", "days_ahead": 3}
    texts = requests(args)
    shapes = {t.replace("Oslo", "<city>").replace("3", "<n>") for t in texts}
    assert len(shapes) >= 60, len(shapes)
    values_only = [t for t in texts if "city" not in t and "days" not in t]
    assert len(values_only) >= len(texts) // 6, len(values_only)  # "... for Oslo and 3"
    assert any("city" in t for t in texts)  # and named ones ("city: Oslo") stay among them


def test_every_value_is_named_lists_in_prose_and_booleans_by_their_name():
    for hourly in (True, False):
        args = {"city": "Oslo", "days_ahead": 12, "hourly": hourly, "stops": ["Bergen", "Voss"]}
        for text in requests(args, 100):
            assert "Oslo" in text and "12" in text and "hourly" in text, text
            assert "Bergen" in text and "Voss" in text, text
        assert any("Bergen and Voss" in t for t in requests(args, 100))  # a list as a person writes it


def test_values_keep_their_case_at_a_sentence_start():
    for text in requests({"city": "oslo"}, 200):
        assert "oslo" in text, text


def test_description_verb_becomes_an_order():
    texts = requests({"city": "Oslo"})
    assert any(t.startswith("Please fetch the weather forecast for a place") for t in texts)
    assert not any(re.search(r"\b(please|to|you) fetches\b", t, re.IGNORECASE) for t in texts)
    assert _imperative("retrieves the list") == "retrieve the list"
    assert _imperative("searches flights") == "search flights"
    assert _imperative("applies a coupon") == "apply a coupon"
    assert _imperative("analyzes text") == "analyze text"
    assert _imperative("this tool finds") == "this tool finds"  # not a verb: left as written
    assert _imperative("find recipes") == "find recipes"


def test_values_come_in_any_order_and_on_both_sides_of_the_description():
    texts = requests({"city": "Oslo", "days_ahead": 3})
    desc = "fetch the weather forecast for a place"
    assert any(t.index("3") < t.index("Oslo") for t in texts)  # not only the schema's order
    assert any(t.index("Oslo") < t.lower().index(desc) < t.index("3") for t in texts if desc in t.lower())


def test_values_of_one_kind_out_of_order_are_named():
    fn = {"name": "power", "description": "Raises a number to a power.", "parameters": {"type": "object",
          "properties": {"base": {"type": "integer"}, "exponent": {"type": "integer"}}}}
    for seed in range(300):
        text = template_request(fn, {"base": 7, "exponent": 2}, random.Random(seed))
        if text.index("2") < text.index("7"):  # out of order: 2 must say it is the exponent
            assert "exponent" in text.lower(), text
