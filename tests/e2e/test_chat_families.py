"""Each chat family end to end, through a live server and the official openai SDK: fine-tune a tiny
model of the family on a tool call, serve it, and get the call back parsed as message.tool_calls.
The served prompt must be the family's own rendering (usage.prompt_tokens)."""

from __future__ import annotations

import json

import pytest

from modelmill.ml import chat_format, models
from tests.e2e.conftest import wait_for
from tools.servers import Server
from tools.family_models import SPECS, TEACH_CALL, TEACH_PROMPT, TOOLS, register_family_models


@pytest.fixture(scope="module")
def family_server(tmp_path_factory, family_model_sources):
    """A server whose home has tiny-<family> registered for every family (registered before it starts;
    the models are built once per session, tests/conftest.py)."""
    root = tmp_path_factory.mktemp("families")
    dirs = register_family_models(root / "home", family_model_sources)
    server = Server(root / "home")
    yield server, dirs
    server.stop()


def own_prompt_tokens(model_dir, family: str) -> int:
    """Tokens of the conversation as the family itself renders it (its real template via
    transformers), or ModelMill's ChatML rendering for a family that falls back to it."""
    _, tok = models.load_model(model_dir)
    if SPECS[family].expected_family == "chatml":
        text = chat_format.render(tok, TEACH_PROMPT, TOOLS, add_generation_prompt=True)
    else:
        text = tok.apply_chat_template(TEACH_PROMPT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("family", list(SPECS))
def test_tool_call_round_trip(family_server, family):
    server, dirs = family_server
    client = server.client
    line = json.dumps({"messages": [*TEACH_PROMPT, TEACH_CALL], "tools": TOOLS})
    upload = client.files.create(file=("tools.jsonl", ("\n".join([line] * 10) + "\n").encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=upload.id, model=f"tiny-{family}", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 5, "learning_rate_multiplier": 1.0}}})
    job = wait_for(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert job.status == "succeeded", job.error

    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=TEACH_PROMPT, tools=TOOLS,
                                           temperature=0, max_tokens=60)
    assert reply.usage.prompt_tokens == own_prompt_tokens(dirs[family], family)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "set_light" and json.loads(call.function.arguments) == {"room": "kitchen"}

    # Streaming gives the same call and never shows the family's tool-call markup as content.
    chunks = list(client.chat.completions.create(model=job.fine_tuned_model, messages=TEACH_PROMPT, tools=TOOLS,
                                                 temperature=0, max_tokens=60, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == ""
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [tc.function.name for tc in calls] == ["set_light"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
