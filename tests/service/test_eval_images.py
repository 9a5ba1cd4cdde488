"""Eval input_messages templates with image parts (service/evals/data.py; docs/vision.md)."""

from __future__ import annotations

import pytest

from modelmill.service.evals import data


def test_input_image_parts_are_templated_and_kept_for_the_model():
    spec = {"type": "template", "template": [
        {"role": "system", "content": "Answer with a colour."},
        {"role": "user", "content": [{"type": "input_text", "text": "What colour is {{item.name}}?"},
                                     {"type": "input_image", "image_url": "{{item.image}}", "detail": "low"}]}]}
    messages = data.render_input(spec, {"name": "this", "image": "data:image/png;base64,AAAA"})
    assert messages == [
        {"role": "system", "content": "Answer with a colour."},
        {"role": "user", "content": [{"type": "text", "text": "What colour is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}}]}]


def test_an_input_image_without_a_url_is_an_item_error():
    spec = {"type": "template", "template": [{"role": "user", "content": [{"type": "input_image"}]}]}
    with pytest.raises(data.DataSourceError):
        data.render_input(spec, {})


def test_item_reference_messages_keep_their_image_parts_in_order():
    spec = {"type": "item_reference", "item_reference": "item.chat"}
    item = {"chat": [
        {"role": "system", "content": [{"type": "input_text", "text": "Answer with a colour."}]},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                                     {"type": "input_text", "text": "and"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}]}]}
    assert data.render_input(spec, item) == [
        {"role": "system", "content": "Answer with a colour."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}},
                                     {"type": "text", "text": "and"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}]}]
    bad = {"chat": [{"role": "user", "content": [{"type": "input_image", "image_url": {"url": "x"}}]}]}
    with pytest.raises(data.DataSourceError) as e:
        data.render_input(spec, bad)
    assert e.value.param == "content[0]"
