"""Chat families: template choice, each family's own rendering, the assistant-only mask without
{% generation %} markers, tool-call parsers, and training + serving on a tiny model of each family."""

from __future__ import annotations

import json

import pytest

from modelmill.errors import TrainingError
from modelmill.ml import chat_families as fams
from modelmill.ml import chat_format as cf
from modelmill.ml import dpo, models, sampling, sft
from modelmill.ml.types import ChatExample, ModelRef, PreferencePair
from tools.family_models import SPECS, TEACH_CALL, TEACH_PROMPT, TEMPLATES, TOOLS, family_tokenizer
from tests.ml.reporters import ListReporter

CALL = {"id": "call_1", "type": "function", "function": {"name": "set_light", "arguments": '{"room": "kitchen"}'}}
CONVERSATION = [{"role": "system", "content": "You control a house."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi", "weight": 0},
                {"role": "user", "content": "Kitchen lights on"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
                {"role": "assistant", "content": "Done."}]
MISTRAL_ID = fams.mistral_call_id("call_1")
# The assistant turns each family trains on in CONVERSATION (the weight-0 "Hi" is context).
TRAINED_TURNS = {
    "qwen2": ['<tool_call>\n{"name": "set_light", "arguments": {"room": "kitchen"}}\n</tool_call><|im_end|>',
              "Done.<|im_end|>"],
    "llama": ['{"name": "set_light", "parameters": {"room": "kitchen"}}<|eot_id|>', "Done.<|eot_id|>"],
    "mistral": ['[TOOL_CALLS][{"name": "set_light", "arguments": {"room": "kitchen"}, "id": "' + MISTRAL_ID + '"}]</s>',
                "Done.</s>"],
    "gemma2": ['<tool_call>\n{"name": "set_light", "arguments": {"room": "kitchen"}}\n</tool_call><|im_end|>',
               "Done.<|im_end|>"],
}


@pytest.fixture(scope="module")
def tokenizers():
    """{family: SmolLM2 tokenizer with that family's template, after ModelMill's template choice}."""
    out = {}
    for name, spec in SPECS.items():
        tok = family_tokenizer(spec)
        fams.choose_template(tok, None, cf.chat_template())
        out[name] = tok
    return out


def hf_messages(mistral: bool) -> tuple[list[dict], list[dict]]:
    """CONVERSATION as transformers' chat-template convention writes it by hand (arguments as
    objects, tools as {"type", "function"}), with Mistral's 9-character call ids where needed."""
    call_id = MISTRAL_ID if mistral else "call_1"
    msgs = [dict(m) for m in CONVERSATION]
    msgs[4] = {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "set_light", "arguments": {"room": "kitchen"}}}]}
    msgs[5] = {"role": "tool", "tool_call_id": call_id, "content": '{"ok": true}'}
    return msgs, TOOLS


# ---------------------------------------------------------------- the per-model template choice


def test_each_family_keeps_its_template_or_falls_back(tokenizers):
    for name, spec in SPECS.items():
        assert fams.family_of(tokenizers[name]).name == spec.expected_family, name
    assert tokenizers["qwen2"].chat_template == (TEMPLATES / "qwen2.jinja").read_text()  # kept as shipped
    assert tokenizers["gemma2"].chat_template == cf.chat_template()  # Gemma 2's template ignores tools


def test_choice_reasons(tokenizers):
    gemma = family_tokenizer(SPECS["gemma2"])
    choice = fams.choose_template(gemma, "gemma2", cf.chat_template())
    assert choice == {"family": "chatml", "template": "chatml", "reason": "its chat template ignores tools",
                      "model_type": "gemma2"}
    bare = family_tokenizer(SPECS["qwen2"])
    bare.chat_template = None
    assert fams.choose_template(bare, None, cf.chat_template())["reason"] == "the model has no chat template"
    llama = family_tokenizer(SPECS["llama"])
    assert fams.choose_template(llama, "llama", cf.chat_template())["template"] == "native"


def test_builtin_models_keep_chatml(tiny_model_dir, tiny_tokenizer):
    assert fams.read_choice(tiny_model_dir) is None  # built-ins: ModelMill's ChatML, as before
    assert models.load_model(tiny_model_dir)[1].chat_template == cf.chat_template()
    assert fams.family_of(tiny_tokenizer).name == "chatml"


def test_registered_models_record_the_choice(family_models):
    for name, spec in SPECS.items():
        choice = fams.read_choice(family_models[name])
        assert choice["family"] == spec.expected_family
        assert choice["template"] == ("chatml" if spec.expected_family == "chatml" else "native")
        _, tok = models.load_model(family_models[name])
        assert fams.family_of(tok).name == spec.expected_family


# ---------------------------------------------------------------- rendering and the mask


@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral"])
def test_render_is_the_family_own_rendering(tokenizers, family):
    tok = tokenizers[family]
    msgs, tools = hf_messages(family == "mistral")
    assert cf.render(tok, CONVERSATION, TOOLS) == tok.apply_chat_template(msgs, tools=tools, tokenize=False)
    assert cf.render(tok, CONVERSATION[:4], TOOLS, add_generation_prompt=True) == tok.apply_chat_template(
        msgs[:4], tools=tools, tokenize=False, add_generation_prompt=True)


def _masked_runs(tok, ids, mask) -> list[str]:
    runs, current = [], []
    for i, keep in zip(ids, mask, strict=True):
        if keep:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


@pytest.mark.parametrize("family", list(SPECS))
def test_mask_covers_exactly_the_assistant_tokens(tokenizers, family):
    tok = tokenizers[family]
    ids, mask = cf.tokenize_conversation(tok, CONVERSATION, TOOLS)
    assert _masked_runs(tok, ids, mask) == TRAINED_TURNS[family]
    assert tok.decode(ids) == cf.render(tok, CONVERSATION, TOOLS)  # nothing lost or added around the mask


@pytest.mark.parametrize("family", list(SPECS))
def test_mask_of_a_multi_turn_chat_with_a_system_message(tokenizers, family):
    """Mistral moves the system message into the last user turn: the turns are still found."""
    tok = tokenizers[family]
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"}]
    end = {"llama": "<|eot_id|>", "mistral": "</s>"}.get(family, "<|im_end|>")
    ids, mask = cf.tokenize_conversation(tok, msgs, None)
    assert _masked_runs(tok, ids, mask) == ["a1" + end, "a2" + end]


@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral"])
def test_context_tokens_are_the_served_prompt_tokens(tokenizers, family):
    """Before each trained turn, training sees exactly the tokens sampling sends for that prompt."""
    tok = tokenizers[family]
    convo = [{"role": "user", "content": "Kitchen lights on"}, {"role": "assistant", "content": "Done."}]
    ids, mask = cf.tokenize_conversation(tok, convo, TOOLS)
    prompt = cf.render(tok, convo[:1], TOOLS, add_generation_prompt=True)
    assert ids[:mask.index(True)] == tok(prompt, add_special_tokens=False)["input_ids"]


CHATML_CASES = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
    CONVERSATION,
    [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "weight": 1}],
]


@pytest.mark.parametrize("messages", CHATML_CASES)
def test_chatml_mask_is_unchanged(tiny_tokenizer, messages):
    """modelmill-tiny / SmolLM2: the same tokens and mask as the {% generation %} markers gave."""
    tools = TOOLS if any(m.get("tool_calls") for m in messages) else None
    old = tiny_tokenizer.apply_chat_template(cf.normalize_messages(messages), tools=cf.normalize_tools(tools),
                                             tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = cf.tokenize_conversation(tiny_tokenizer, messages, tools)
    assert ids == list(old["input_ids"])
    assert mask == [bool(m) for m in old["assistant_masks"]]


def test_template_that_cannot_render_a_line_names_it(tokenizers):
    two = [CALL, {**CALL, "id": "call_2"}]
    ex = ChatExample(messages=[{"role": "user", "content": "both"},
                               {"role": "assistant", "content": None, "tool_calls": two}], tools=TOOLS, line=7)
    with pytest.raises(TrainingError, match="line 7: .*single tool-calls"):
        sft.tokenize_example(tokenizers["llama"], ex, 1024)


def test_dpo_answer_follows_the_served_prompt(tokenizers):
    """Mistral moves the system message into the last user turn; the DPO answer is still the text
    the model writes after the prompt sampling sends."""
    tok = tokenizers["mistral"]
    pair = PreferencePair(input_messages=CONVERSATION[:4], tools=TOOLS,
                          chosen={"role": "assistant", "content": None, "tool_calls": [CALL]},
                          rejected={"role": "assistant", "content": "No."})
    out = dpo.render_pair(tok, pair)
    assert out["prompt"].endswith("[INST]You control a house.\n\nKitchen lights on[/INST]")
    assert out["chosen"] == TRAINED_TURNS["mistral"][0]
    assert out["rejected"] == "No.</s>"


# ---------------------------------------------------------------- parsers


def _calls(parsed):
    return parsed[0], [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed[1]]


def test_hermes_parser():
    text = 'Sure.\n<tool_call>\n{"name": "set_light", "arguments": {"room": "hall"}}\n</tool_call>'
    assert _calls(fams.parse_hermes(text)) == ("Sure.", [("set_light", {"room": "hall"})])
    assert fams.parse_hermes("<tool_call>{not json</tool_call>") == ("<tool_call>{not json</tool_call>", [])


def test_llama3_parser():
    assert _calls(fams.parse_llama3('{"name": "set_light", "parameters": {"room": "hall"}}')) == (
        None, [("set_light", {"room": "hall"})])
    two = '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}'
    assert _calls(fams.parse_llama3(two)) == (None, [("a", {}), ("b", {"x": 1})])
    assert fams.parse_llama3("The answer is {42}.") == ("The answer is {42}.", [])
    assert fams.parse_llama3('{"name": "Bob", "age": 3}') == ('{"name": "Bob", "age": 3}', [])  # an answer
    assert fams.parse_llama3('{"name": "a", "parameters": ') == ('{"name": "a", "parameters": ', [])


def test_mistral_parser_with_and_without_the_marker():
    calls = '[{"name": "set_light", "arguments": {"room": "hall"}, "id": "abcdefghi"}]'
    assert _calls(fams.parse_mistral("[TOOL_CALLS]" + calls)) == (None, [("set_light", {"room": "hall"})])
    # decoding with skip_special_tokens=True drops the [TOOL_CALLS] token itself
    assert _calls(fams.parse_mistral(calls)) == (None, [("set_light", {"room": "hall"})])
    assert fams.parse_mistral("Lists look like [{...}]") == ("Lists look like [{...}]", [])
    assert fams.parse_mistral("[TOOL_CALLS][{broken") == ("[TOOL_CALLS][{broken", [])
    assert fams.parse_mistral('[{"name": "Bob"}]') == ('[{"name": "Bob"}]', [])  # a JSON answer, not a call


def test_mistral_call_ids_are_stable_and_nine_alphanumerics():
    assert fams.mistral_call_id("call_abc") == fams.mistral_call_id("call_abc")
    assert len(fams.mistral_call_id("call_abc")) == 9 and fams.mistral_call_id("call_abc").isalnum()
    assert fams.mistral_call_id("abcdefghi") == "abcdefghi"


def test_streaming_holds_back_each_family_marker():
    for name, text, safe in (("llama3", 'x {"na', 2), ("mistral", "ok [TOOL_CALLS][{", 3), ("hermes", "a <tool", 2)):
        family = fams.FAMILIES[name]
        prompt = sampling.prompts.Prompt("p", "", parse_tools=True, family=family)
        assert sampling.prompts.safe_prefix_len(text, list(family.markers), prompt) == safe, name


def test_forced_tool_call_prefill_per_family():
    assert fams.FAMILIES["llama3"].prefill("f") == '{"name": "f", "parameters":'
    assert fams.FAMILIES["mistral"].prefill(None) == '[TOOL_CALLS][{"name": "'
    assert fams.FAMILIES["chatml"].prefill("f") == '<tool_call>\n{"name": "f", "arguments": '


# ---------------------------------------------------------------- training and serving each family


@pytest.mark.parametrize("family", list(SPECS))
def test_tool_call_round_trip_each_family(family_models, tmp_path, family):
    """Train (SFT on a tool call), serve (the prompt is the family's own rendering) and parse the call
    the fine-tuned model writes, in its family's format."""
    base = family_models[family]
    line = json.dumps({"messages": [*TEACH_PROMPT, TEACH_CALL], "tools": TOOLS})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([line] * 2) + "\n")
    config = sft.SFTConfig(base_dir=base, train_path=train, valid_path=None, output_dir=tmp_path / "run",
                           n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, eval_every_steps=0,
                           torch_threads=1)
    result = sft.train_sft(config, ListReporter())
    assert result.status == "succeeded" and (result.adapter_dir / "adapter_model.safetensors").is_file()

    _, tok = models.load_model(base)
    out = sampling.Sampler().generate(ModelRef(base, result.adapter_dir), TEACH_PROMPT, TOOLS,
                                      sampling.SamplingParams(temperature=0, max_tokens=60))
    if family == "gemma2":  # the ChatML fallback
        own = cf.render(tok, TEACH_PROMPT, TOOLS, add_generation_prompt=True)
    else:
        own = tok.apply_chat_template(TEACH_PROMPT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert out.prompt_tokens == len(tok(own, add_special_tokens=False)["input_ids"])
    (choice,) = out.choices
    assert choice.finish_reason == "tool_calls", choice.text
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice.tool_calls] == [
        ("set_light", {"room": "kitchen"})]
