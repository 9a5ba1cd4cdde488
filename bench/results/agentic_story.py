"""Agentic RFT story (issue 22): multi-digit multiplication with a calculator tool.

Task: "What is 437 times 58?" (a 3-digit times a 2-digit number). SmolLM2-135M-Instruct cannot
multiply such numbers in its head; with the `multiply` tool it only has to call it with the right
operands and repeat the result. Training lines and held-out questions are generated here from a seed
(no file is downloaded), and no held-out question appears in training.

Training: the product's "SFT, then RFT" path, both jobs through the server. The base model's reward
was 0 on every rollout of the first RFT steps (it never called the tool in the right format, so GRPO
had no gradient), so first a short SFT warm-up job on `sft_lines` tool-use traces made by this task's
own generator (a question, the assistant's multiply call, the tool's result, "Answer: N"; none of them
a held-out question), then one agentic RFT job (docs/agentic_rft.md) from the SFT job's model: the
environment has one python tool, `multiply(a, b)`, run in the grader sandbox; the reward (GRADER
below) is 0.7 for the right final number and 0.3 for a multiply call with the question's operands.

Metric: on `test_questions` held-out questions, the same reward for the base, the SFT warm-up and the
fine-tuned (SFT then RFT) model,
each run as an agent by this script through /v1/chat/completions with `tools` (greedy, up to
max_turns turns, the tool executed locally exactly as the sandboxed one computes it), plus the rate of
correct tool use (a multiply call with the right operands). Target: the held-out reward at least
doubles and is >= 0.4. Greedy runs of the SFT warm-up alone can already reach the target (its traces
teach the exact call), so the SFT model and the RFT model are also run sampled, at the rollouts'
temperature, `sampled_per_question` times per held-out question: what RFT itself added.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import Context, job_events, machine, result, row, today, wait_job

TOOL = {"type": "python", "name": "multiply", "description": "Multiply two integers exactly.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
        "source": "def multiply(a, b):\n    state['calls'] = state.get('calls', 0) + 1\n    return a * b\n"}
CHAT_TOOLS = [{"type": "function", "function": {k: TOOL[k] for k in ("name", "description", "parameters")}}]
SYSTEM = "You can call a calculator tool. Use multiply(a, b) for every multiplication."
GRADER_SOURCE = r'''
import json, re


def _right_call(calls, a, b):
    for call in calls:
        fn = call.get("function", {})
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            continue
        if fn.get("name") == "multiply" and isinstance(args, dict) and {args.get("a"), args.get("b")} == {a, b}:
            return True
    return False


def grade(sample, item):
    numbers = re.findall(r"-?\d[\d,]*", sample.get("output_text") or "")
    right = bool(numbers) and numbers[-1].replace(",", "") == str(item["answer"])
    used = _right_call(sample.get("output_tools") or [], item["a"], item["b"])
    return 0.7 * right + 0.3 * used
'''
GRADER = {"type": "python", "name": "calculator", "source": GRADER_SOURCE}


@dataclass(frozen=True)
class AgenticStory:
    model: str = "SmolLM2-135M-Instruct"
    train_lines: int = 96
    valid_lines: int = 16
    test_questions: int = 40
    max_turns: int = 3
    answer_tokens: int = 64  # per turn, in the held-out agent runs (the job's "low" effort is the same)
    seed: int = 22
    # One epoch (24 steps): the warmed-up model's rollouts take two turns each, so a step costs about
    # twice a one-turn step's time.
    hyperparameters: dict = field(default_factory=lambda: {
        "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 4.0, "reasoning_effort": "low",
        "compute_multiplier": 2.0, "eval_interval": 12, "eval_samples": 1})
    max_rollout_tokens: int = 256
    target: float = 0.4
    # Held-out runs sampled as the job's rollouts sample (RFT's temperature 1.0), this many per question:
    # greedy runs of the SFT warm-up alone can already be right, and sampled ones show what RFT added.
    sampled_per_question: int = 2
    sample_temperature: float = 1.0
    concurrency: int = 8  # held-out agent runs in flight at once (the server batches their generations)
    # Tool-use traces of the SFT warm-up (disjoint from the held-out questions). Fewer steps did not
    # teach SmolLM2 the call format at all (16 traces x 1 epoch, 24 x 2: no tool call on held-out questions).
    sft_lines: int = 48
    sft_hyperparameters: dict = field(default_factory=lambda: {
        "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0})


FULL = AgenticStory()
QUICK = AgenticStory(model="modelmill-tiny", train_lines=10, valid_lines=2, test_questions=3, max_turns=2,
                     answer_tokens=8, max_rollout_tokens=64, hyperparameters={
                         "n_epochs": 1, "batch_size": 10, "learning_rate_multiplier": 1.0,
                         "reasoning_effort": "low", "compute_multiplier": 0.5, "eval_interval": 1, "eval_samples": 1},
                     sft_lines=10, sft_hyperparameters={"n_epochs": 1, "batch_size": 10, "learning_rate_multiplier": 1.0})


def questions(n: int, rng: random.Random, seen: set) -> list[dict]:
    """n lines "What is a times b?" (a: 3 digits, b: 2 digits), none whose (a, b) is in `seen` (updated)."""
    out = []
    while len(out) < n:
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append({"messages": [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": f"What is {a} times {b}?"}],
                    "a": a, "b": b, "answer": str(a * b)})
    return out


def sft_trace(line: dict, k: int) -> dict:
    """A question solved as the agentic rollouts should solve it, for the SFT warm-up: the prompt as RFT
    renders it (the system message carries the reasoning instruction), a multiply call with the
    question's operands, the tool's result (as the sandboxed tool returns it), then the answer line."""
    from modelmill.ml.rft.rewards import REASONING_INSTRUCTION, with_instruction

    a, b, product = line["a"], line["b"], line["answer"]
    call = {"id": f"call_{k}", "type": "function",
            "function": {"name": "multiply", "arguments": json.dumps({"a": a, "b": b})}}
    return {"messages": [*with_instruction(line["messages"], REASONING_INSTRUCTION),
                         {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": call["id"], "content": product},
                         {"role": "assistant", "content": f"The calculator says {a} times {b} is {product}.\n"
                                                          f"Answer: {product}"}],
            "tools": CHAT_TOOLS}


def _upload(client, name: str, lines: list[dict]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"agentic_{name}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return client.files.create(file=path.open("rb"), purpose="fine-tune").id


def _grader() -> dict:
    namespace: dict = {}
    exec(compile(GRADER_SOURCE, "agentic_grader", "exec"), namespace)  # the job's grader, scored locally
    return namespace


def run_agent(client, model: str, line: dict, cfg: AgenticStory, temperature: float = 0.0) -> dict:
    """One held-out question as the job's rollouts run it: the model's turns through chat completions
    with the tools (greedy, or sampled at `temperature`), each multiply call answered locally, until an
    answer or max_turns; the sample the grader gets (output_text of the last turn, every tool call)."""
    from modelmill.ml.rft.rewards import REASONING_INSTRUCTION, split_answer, with_instruction

    messages = with_instruction(line["messages"], REASONING_INSTRUCTION)  # as training renders the prompt
    calls, text = [], ""
    for turn in range(cfg.max_turns):
        reply = client.chat.completions.create(model=model, messages=messages, tools=CHAT_TOOLS,
                                               temperature=temperature, max_tokens=cfg.answer_tokens).choices[0].message
        text = reply.content or ""
        made = [c.model_dump() for c in reply.tool_calls or []]
        calls += made  # as in training, a call in the last turn counts though it does not run
        if not made or turn == cfg.max_turns - 1:
            break
        messages.append({"role": "assistant", "content": text, "tool_calls": made})
        for call in made:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": _multiply(call)})
    return {"output_text": split_answer(text)[0], "output_tools": calls}


def _multiply(call: dict) -> str:
    try:
        args = json.loads(call["function"]["arguments"])
        if call["function"]["name"] != "multiply":
            return f"Error: there is no tool named {call['function']['name']!r}; the tools are multiply"
        return json.dumps(int(args["a"]) * int(args["b"]))
    except (ValueError, KeyError, TypeError) as e:
        return f"Error: the arguments do not match the tool's parameters: {e}"


def score(client, model: str, lines: list[dict], cfg: AgenticStory, temperature: float = 0.0,
          per_question: int = 1) -> tuple[float, float, float]:
    """(mean reward, share with the right final number, share with a right multiply call) over
    per_question runs of each line (greedy when temperature is 0), cfg.concurrency runs at once."""
    from concurrent.futures import ThreadPoolExecutor

    grader = _grader()
    lines = [line for line in lines for _ in range(per_question)]
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        samples = list(pool.map(lambda line: run_agent(client, model, line, cfg, temperature), lines))
    rewards, right, used = [], 0, 0
    for line, sample in zip(lines, samples, strict=True):
        rewards.append(grader["grade"](sample, line))
        tool_ok = grader["_right_call"](sample["output_tools"], line["a"], line["b"])
        used += tool_ok
        right += rewards[-1] - 0.3 * tool_ok > 0.5  # the 0.7 of the right final number
    n = max(1, len(lines))
    return sum(rewards) / n, right / n, used / n


def run(ctx: Context, cfg: AgenticStory | None = None) -> dict:
    cfg = cfg or (QUICK if ctx.quick else FULL)
    rng, seen = random.Random(cfg.seed), set()
    test = questions(cfg.test_questions, rng, seen)
    train, valid = questions(cfg.train_lines, rng, seen), questions(cfg.valid_lines, rng, seen)
    warm = [sft_trace(line, k) for k, line in enumerate(questions(cfg.sft_lines, rng, seen))]
    t0 = time.monotonic()
    base = score(ctx.client, cfg.model, test, cfg)
    sft = ctx.client.fine_tuning.jobs.create(
        model=cfg.model, training_file=_upload(ctx.client, "sft", warm), seed=cfg.seed, suffix="agentic-sft",
        metadata={"eval": "false"},
        method={"type": "supervised", "supervised": {"hyperparameters": cfg.sft_hyperparameters}})
    sft = wait_job(ctx.client, sft.id)
    warmed = score(ctx.client, sft.fine_tuned_model, test, cfg)
    environment = {"tools": [TOOL], "max_turns": cfg.max_turns, "max_rollout_tokens": cfg.max_rollout_tokens}
    job = ctx.client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=_upload(ctx.client, "train", train),
        validation_file=_upload(ctx.client, "valid", valid), seed=cfg.seed, suffix="agentic",
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": cfg.hyperparameters,
                                                           "environment": environment}})
    job = wait_job(ctx.client, job.id)
    tuned = score(ctx.client, job.fine_tuned_model, test, cfg)
    sampled = {name: score(ctx.client, model, test, cfg, cfg.sample_temperature, cfg.sampled_per_question)
               for name, model in (("sft", sft.fine_tuned_model), ("rft", job.fine_tuned_model))}
    wall = time.monotonic() - t0
    metrics = [e.data for e in job_events(ctx.client, job.id) if e.type == "metrics"]
    met = tuned[0] >= cfg.target and tuned[0] >= 2 * base[0]
    rows = [row(f"held-out reward ({len(test)} questions, greedy agent runs)", base[0], tuned[0],
                f">= {cfg.target} and >= 2x base", met),
            row("right final number", base[1], tuned[1], None, None),
            row("correct tool use (multiply with the question's operands)", base[2], tuned[2], None, None),
            row("held-out reward after the SFT warm-up alone (fine-tuned column)", base[0], warmed[0], None, None),
            row(f"held-out reward sampled at temperature {cfg.sample_temperature:g} as in training "
                f"({cfg.sampled_per_question} runs per question): SFT warm-up alone -> SFT then RFT",
                sampled["sft"][0], sampled["rft"][0], None, None),
            row("correct tool use, sampled as above: SFT warm-up alone -> SFT then RFT",
                sampled["sft"][2], sampled["rft"][2], None, None)]
    notes = [f"SFT warm-up: {len(warm)} tool-use traces from the task's generator (no held-out question), "
             f"{cfg.sft_hyperparameters}; job {sft.id}; after it: reward {warmed[0]:.3f}, right number {warmed[1]:.3f}, "
             f"correct tool use {warmed[2]:.3f}.",
             f"RFT from the SFT model: {len(train)} questions, {cfg.hyperparameters}, environment max_turns {cfg.max_turns}, "
             f"max_rollout_tokens {cfg.max_rollout_tokens}; tool calls per rollout by step: "
             + ", ".join(f"{m['step']}: {m.get('tool_calls_mean', 0):.2f}"
                         for m in metrics[::max(1, len(metrics) // 8)]),
             "Reward: 0.7 for the right final number + 0.3 for a multiply call with the question's operands "
             "(bench/results/agentic_story.py GRADER); the held-out runs score the same function locally."]
    details = {"rows": rows, "notes": notes, "date": today(), "machine": machine(), "job_id": job.id,
               "sft_job_id": sft.id, "sft_model": sft.fine_tuned_model, "sft_hyperparameters": cfg.sft_hyperparameters,
               "fine_tuned_model": job.fine_tuned_model, "metrics": metrics, "hyperparameters": cfg.hyperparameters}
    return result("agentic", cfg.model, rows[0]["metric"], base[0], tuned[0], rows[0]["target"], met, wall, details)
