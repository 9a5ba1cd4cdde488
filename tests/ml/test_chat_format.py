"""The chat format shared by training and sampling: template rendering (tools, tool calls, tool
messages, weight masks) and parsing generated tool calls back into OpenAI's shape."""

from __future__ import annotations

import json

import pytest

from modelmill.ml import chat_format as cf

TOOLS = [{"type": "function", "function": {"name": "set_light", "description": "Switch a light",
                                           "parameters": {"type": "object",
                                                          "properties": {"room": {"type": "string"}}}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "set_light", "arguments": '{"room":"kitchen"}'}}


def render(tok, messages, tools=None, **kw) -> str:
    return tok.apply_chat_template(cf.normalize_messages(messages), tools=cf.normalize_tools(tools),
                                   tokenize=False, **kw)


def assistant_text(tok, messages, tools=None) -> str:
    """The tokens the {% generation %} markers select (what SFT trains on), decoded."""
    out = tok.apply_chat_template(cf.normalize_messages(messages), tools=cf.normalize_tools(tools),
                                  return_assistant_tokens_mask=True, return_dict=True)
    return tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])


def test_saved_tokenizer_carries_our_template(tiny_tokenizer):
    assert tiny_tokenizer.chat_template == cf.chat_template()


def test_plain_chat_and_default_system(tiny_tokenizer):
    text = render(tiny_tokenizer, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_developer_becomes_system_and_parts_are_joined(tiny_tokenizer):
    msgs = [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    text = render(tiny_tokenizer, msgs)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\nyo<|im_end|>\n")


def test_tools_tool_calls_and_tool_messages(tiny_tokenizer):
    msgs = [{"role": "system", "content": "You control a house."},
            {"role": "user", "content": "Kitchen lights on"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
            {"role": "assistant", "content": "Done."}]
    text = render(tiny_tokenizer, msgs, TOOLS)
    assert text.startswith("<|im_start|>system\nYou control a house.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(TOOLS[0]["function"], ensure_ascii=False) + "\n</tools>" in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "set_light", "arguments": {"room": "kitchen"}}\n'
            "</tool_call><|im_end|>\n") in text
    assert '<|im_start|>user\n<tool_response>\n{"ok": true}\n</tool_response><|im_end|>\n' in text
    assert text.endswith("<|im_start|>assistant\nDone.<|im_end|>\n")


def test_content_and_several_tool_calls(tiny_tokenizer):
    second = {"id": "c2", "type": "function", "function": {"name": "set_light", "arguments": '{"room": "hall"}'}}
    msgs = [{"role": "user", "content": "both"},
            {"role": "assistant", "content": "Sure.", "tool_calls": [CALL, second]}]
    text = render(tiny_tokenizer, msgs, TOOLS)
    body = text.split("<|im_start|>assistant\n")[-1]
    assert body == ('Sure.\n<tool_call>\n{"name": "set_light", "arguments": {"room": "kitchen"}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "set_light", "arguments": {"room": "hall"}}\n</tool_call><|im_end|>\n')
    content, calls = cf.parse_tool_calls(body.removesuffix("<|im_end|>\n"))
    assert content == "Sure."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("set_light", {"room": "kitchen"}), ("set_light", {"room": "hall"})]


def test_odd_function_name_still_renders_valid_json(tiny_tokenizer):
    odd = {"id": "x", "type": "function", "function": {"name": 'say"hi', "arguments": "{}"}}
    text = render(tiny_tokenizer, [{"role": "user", "content": "u"},
                                   {"role": "assistant", "tool_calls": [odd]}])
    block = text.split("<tool_call>\n")[1].split("\n</tool_call>")[0]
    assert json.loads(block) == {"name": 'say"hi', "arguments": {}}


def test_weight_masks_select_trainable_assistant_turns(tiny_tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "skip me", "weight": 0},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "learn me", "weight": 1},
            {"role": "user", "content": "c"}, {"role": "assistant", "tool_calls": [CALL]}]
    got = assistant_text(tiny_tokenizer, msgs, TOOLS)
    assert "skip me" not in got
    assert got == ('learn me<|im_end|><tool_call>\n{"name": "set_light", "arguments": {"room": "kitchen"}}\n'
                   "</tool_call><|im_end|>")


def test_normalize_messages_and_tools():
    msgs = cf.normalize_messages([
        {"role": "developer", "content": "d"},
        {"role": "assistant", "content": None, "weight": 0,
         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
    ])
    assert msgs[0] == {"role": "system", "content": "d", "weight": None}
    assert msgs[1]["content"] == "" and msgs[1]["weight"] == 0
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert cf.normalize_tools(None) is None and cf.normalize_tools([]) is None
    assert cf.normalize_tools(TOOLS) == [TOOLS[0]["function"]]


def test_content_text():
    assert cf.content_text(None) == ""
    assert cf.content_text("x") == "x"
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert cf.content_text(parts) == "ab"


@pytest.mark.parametrize("text,content,calls", [
    ("just text", "just text", []),
    ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>', None, [("f", {"x": 1})]),
    ('Let me check.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', "Let me check.", [("f", {})]),
    ('<tool_call>{"name": "a", "arguments": {"k": "v"}}</tool_call><tool_call>{"name": "b", "arguments": {}}'
     "</tool_call>", None, [("a", {"k": "v"}), ("b", {})]),
    ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}', None, [("f", {"x": 1})]),  # unclosed at the end
    ('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 2}"}\n</tool_call>', None, [("f", {"x": 2})]),
    ('<tool_call>\n{"name": "f", "arguments": null}\n</tool_call>', None, [("f", {})]),
    ('<tool_call>\n{"name": "f", "arguments": {"x": \n</tool_call>', '<tool_call>\n{"name": "f", "arguments": {"x": \n'
     "</tool_call>", []),  # broken JSON stays in the content
    ('<tool_call>\n{"arguments": {}}\n</tool_call>', '<tool_call>\n{"arguments": {}}\n</tool_call>', []),
    ('<tool_call>\n{"name": 7, "arguments": {}}\n</tool_call>', '<tool_call>\n{"name": 7, "arguments": {}}\n'
     "</tool_call>", []),
    ("<tool_call>\n[1, 2]\n</tool_call>", "<tool_call>\n[1, 2]\n</tool_call>", []),
], ids=["text", "one", "content_then_call", "two", "unclosed", "string_args", "null_args", "broken_json",
        "no_name", "name_not_string", "not_object"])
def test_parse_tool_calls(text, content, calls):
    got_content, got_calls = cf.parse_tool_calls(text)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == calls
    for c in got_calls:
        assert c["type"] == "function" and c["id"].startswith("call_")
    assert len({c["id"] for c in got_calls}) == len(got_calls)
