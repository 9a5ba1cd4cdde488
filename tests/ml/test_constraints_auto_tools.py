"""Strict tools under tool_choice "auto" (ml/constraints.py for_auto_tools): free text, or a call whose
arguments the grammar keeps valid under the strict tool's schema, in each family's own call format.

The grammar tests feed token sequences to llguidance directly (no model). The sampler tests run
modelmill-tiny, whose random weights never write a tool call by themselves: a `logit_bias` on the
call-opening token starts one, and from there on only the grammar makes it a valid call."""

from __future__ import annotations

import json

import jsonschema
import llguidance
import pytest

from modelmill.ml import constraints
from modelmill.ml.chat_families import FAMILIES
from modelmill.ml.sampling import Sampler, SamplingParams, prompts
from modelmill.ml.types import ModelRef

USER = [{"role": "user", "content": "Lock the back door."}]
LOCK = {"type": "object", "properties": {"door": {"type": "string", "enum": ["front", "back"]}}, "required": ["door"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "lock_door", "strict": True, "parameters": LOCK}}]
LOOSE = [{"type": "function", "function": {**t["function"], "strict": False}} for t in TOOLS]


def _call(family: str, name: str, args: str) -> str:
    return "{" + f'"name": "{name}", "{FAMILIES[family].args_key}": {args}' + "}"


def _wrap(family: str, *calls: str) -> str:
    """Calls as the family's model writes them (chat_families' table)."""
    if family == "chatml":
        return "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)
    if family == "mistral":
        return "[TOOL_CALLS][" + ", ".join(calls) + "]"
    return calls[0]


def _accepts(tokenizer, constraint, text: str | list[int]) -> bool:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    matcher = llguidance.LLMatcher(constraints.ll_tokenizer(tokenizer, [eos], len(tokenizer)), constraint.grammar)
    ids = text if isinstance(text, list) else tokenizer(text, add_special_tokens=False)["input_ids"]
    return matcher.consume_tokens(ids) and matcher.is_accepting()


@pytest.fixture(scope="module")
def marked_tokenizer(tiny_model_dir):
    """The tiny tokenizer with the markers as single added tokens, as Qwen2.5's <tool_call> and
    Mistral's [TOOL_CALLS] are (llguidance never lets text match an added token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    tok.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    return tok


def test_no_strict_tool_means_no_grammar(tiny_tokenizer):
    assert constraints.for_auto_tools(LOOSE, "chatml", "arguments", tiny_tokenizer.get_added_vocab()) is None
    assert constraints.for_auto_tools(None, "chatml", "arguments", {}) is None


@pytest.mark.parametrize("family", ["chatml", "llama3", "mistral"])
@pytest.mark.parametrize("marked", [False, True])
def test_text_or_a_schema_valid_call_in_each_familys_format(tiny_tokenizer, marked_tokenizer, family, marked):
    tok = marked_tokenizer if marked else tiny_tokenizer
    c = constraints.for_auto_tools(TOOLS, family, FAMILIES[family].args_key, tok.get_added_vocab())
    good = _wrap(family, _call(family, "lock_door", '{"door": "back"}'))
    assert _accepts(tok, c, "I cannot do that.")  # plain text stays allowed
    assert _accepts(tok, c, good)
    content, calls = FAMILIES[family].parse(good)
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"door": "back"}
    assert not _accepts(tok, c, _wrap(family, _call(family, "lock_door", '{"door": "side"}')))  # off-schema
    assert not _accepts(tok, c, _wrap(family, _call(family, "lock_door", '{"door": "back", "x": 1}')))  # closed
    assert not _accepts(tok, c, _wrap(family, _call(family, "unlock", "{}")))  # not a tool
    assert _accepts(tok, c, _wrap(family, _call(family, "get_weather", '{"any": [1]}')))  # not strict: any object
    if family == "mistral":  # the call id Mistral's template writes into each call
        assert _accepts(tok, c, good[:-2] + ', "id": "a1B2c3D4e"}]')
        assert not _accepts(tok, c, good[:-2] + ', "id": "short"}]')
    if family == "chatml":  # text before calls, several calls; nothing after them
        two = "Sure.\n" + _wrap(family, _call(family, "lock_door", '{"door": "back"}'),
                                _call(family, "lock_door", '{"door": "front"}'))
        assert _accepts(tok, c, two) and len(FAMILIES[family].parse(two)[1]) == 2
        assert not _accepts(tok, c, good + " and more")
    else:  # the call is the whole turn: text may not start like one (the parser would read it as a call)
        assert not _accepts(tok, c, "[{" if family == "mistral" else '{"name": 1}')
        assert not _accepts(tok, c, "Sure. " + good) or family == "llama3"  # llama3: that is plain content
    if marked and family != "llama3":  # the marker as the model's own single token
        marker, closer = ("<tool_call>", "</tool_call>") if family == "chatml" else ("[TOOL_CALLS]", "")
        middle = tok(good[len(marker):len(good) - len(closer)], add_special_tokens=False)["input_ids"]
        ids = [tok.convert_tokens_to_ids(marker)] + middle + ([tok.convert_tokens_to_ids(closer)] if closer else [])
        assert _accepts(tok, c, ids)


def test_render_applies_the_grammar_only_with_a_strict_tool_under_auto(tiny_tokenizer):
    assert prompts.render(tiny_tokenizer, USER, TOOLS, None).constraint is not None
    assert prompts.render(tiny_tokenizer, USER, TOOLS, "auto").constraint is not None
    assert prompts.render(tiny_tokenizer, USER, LOOSE, "auto").constraint is None
    assert prompts.render(tiny_tokenizer, USER, TOOLS, "none").constraint is None
    # response_format's JSON answer wins over the strict tools' grammar under auto
    prompt = prompts.render(tiny_tokenizer, USER, TOOLS, "auto")
    params = SamplingParams(response_format={"type": "json_object"})
    assert prompts.row_constraints([prompt], params) == [params.constraint]


@pytest.fixture(scope="module")
def marked_model_dir(tiny_model_dir, tmp_path_factory):
    """modelmill-tiny with <tool_call> and </tool_call> added as tokens (its embeddings grown to
    match), so one logit_bias entry can open a call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-marked")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sampler():
    return Sampler()


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_a_call_the_model_starts_is_valid(sampler, marked_model_dir, temperature):
    from transformers import AutoTokenizer

    opener = AutoTokenizer.from_pretrained(marked_model_dir).convert_tokens_to_ids("<tool_call>")
    params = SamplingParams(temperature=temperature, seed=3, max_tokens=60, logit_bias={opener: 100})
    (choice,) = sampler.generate(ModelRef(marked_model_dir), USER, tools=TOOLS[1:], params=params).choices
    assert choice.finish_reason == "tool_calls" and choice.tool_calls
    for call in choice.tool_calls:  # (a call the token budget cut short stays in the content)
        assert call["function"]["name"] == "lock_door"
        jsonschema.validate(json.loads(call["function"]["arguments"]), LOCK)
    # the same biased request with the tool not strict: the random model writes no call that parses
    (loose,) = sampler.generate(ModelRef(marked_model_dir), USER, tools=LOOSE[1:], params=params).choices
    assert not loose.tool_calls and loose.text.startswith("<tool_call><tool_call>")


def test_plain_text_is_still_allowed(sampler, tiny_model_dir):
    """A model that answers in text writes what it would without the grammar."""
    plain = SamplingParams(temperature=0, max_tokens=12)
    (choice,) = sampler.generate(ModelRef(tiny_model_dir), USER, tools=TOOLS, params=plain).choices
    (unconstrained,) = sampler.generate(ModelRef(tiny_model_dir), USER, tools=LOOSE, params=plain).choices
    assert choice.content and not choice.tool_calls and choice.text == unconstrained.text



@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral", "gemma2"])
def test_each_familys_own_rendered_call_passes_its_grammar(family):
    """The call each family's real chat template writes (tools/family_models.py: Qwen2.5's, Llama 3's,
    Mistral's with its call id and [TOOL_CALLS] as one special token, Gemma 2 on ModelMill's ChatML),
    tokenized as the model writes it, is allowed token by token and parses back."""
    from modelmill.ml import chat_format
    from modelmill.ml.chat_families import choose_template, family_of
    from tools.family_models import SPECS, TEACH_CALL, TEACH_PROMPT, TOOLS as FAMILY_TOOLS, family_tokenizer

    tok = family_tokenizer(SPECS[family])
    choose_template(tok, None, chat_format.chat_template())
    fam = family_of(tok)
    strict = [{"type": "function", "function": {**FAMILY_TOOLS[0]["function"], "strict": True}}]
    _, turn, _ = chat_format.assistant_turn(tok, TEACH_PROMPT, TEACH_CALL, strict)
    for end in fam.end_tokens:  # the end-of-turn token is EOS, which the grammar allows once complete
        turn = turn.removesuffix(end)
    ids = tok(turn, add_special_tokens=False)["input_ids"]
    c = constraints.for_auto_tools(strict, fam.name, fam.args_key, tok.get_added_vocab())
    matcher = llguidance.LLMatcher(constraints.ll_tokenizer(tok, [tok.eos_token_id], len(tok)), c.grammar)
    assert matcher.consume_tokens(ids) and matcher.is_accepting(), (turn, matcher.get_error())
    _, calls = fam.parse(tok.decode(ids, skip_special_tokens=True))
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("set_light", {"room": "kitchen"})]
