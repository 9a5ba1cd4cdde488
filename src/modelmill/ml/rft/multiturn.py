"""Multi-turn (agentic) rollouts: the model calls tools, reads their results and goes on, until it
answers, reaches the environment's max_turns, or runs out of max_rollout_tokens.

One rollout is a `Trajectory`, kept in tokens (what GRPO trains on) and in messages (what graders
see). `run_rollouts` drives many at once, turn by turn:
1. one batched generation over every trajectory still going (prompt + everything so far, left-padded);
2. each new turn is parsed with the model's chat family (chat_families: <tool_call> blocks for ChatML,
   Llama 3 JSON, Mistral [TOOL_CALLS]); a turn without calls, or one that did not end with an
   end-of-turn token, ends the rollout; so does a turn with calls at max_turns (its calls do not run:
   the model would never read their results);
3. all the turn's calls run together (environments.run_tool_calls: one sandbox launch for the python
   ones; MCP tools on the servers of the rollout's group, started for these rollouts: ml/mcp_tools.py);
   each result is a `tool` message;
4. the tool messages are rendered by the model's own chat template and appended as tokens, with the
   next assistant prompt; env_mask marks them 0, so the loss covers only the model's own tokens.

The tokens of the model's turns are never re-tokenized: the sequence is prompt + generated ids +
template ids of the tool results, as in TRL's own tool loop (GRPOTrainer._tool_call_loop).

Why TRL's rollout_func and not its `tools=` / `environment_factory` (TRL 1.16): its tool loop parses
calls with transformers' `parse_response`, which needs a response schema that TRL sets only for chat
templates it knows by their exact text (Qwen, Llama 3.x, GLM, ...); ModelMill's ChatML fallback
(SmolLM2, modelmill-tiny) and its own family parsers are not among them. Its tools are Python callables
run in the trainer's process, one call at a time, with no time limit; ours are untrusted code that
must run in the sandbox (one launch per turn for all rollouts) or on an allow-listed HTTP host, with a
timeout, latency and error counts. So TRL's `rollout_func` hook runs this loop and returns `env_mask`
(TRL's own name for "the model's tokens"), and TRL does the rest of GRPO unchanged. Generation in
training goes through the trainer's own per-turn generation (`_generate_single_turn`, the method
TRL's tool loop calls), so the transformers and colocated-vLLM backends both work.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from modelmill.ml import chat_format, environments

# generate(list of token id lists) -> (completion id lists, their sampling logprobs or None)
Generate = Callable[[list[list[int]]], tuple[list[list[int]], list[list[float]] | None]]


@dataclass
class Trajectory:
    """One rollout. completion_ids / env_mask / logprobs run in step: everything after the prompt."""

    prompt_ids: list[int]
    messages: list[dict]  # the line's prompt messages, then every assistant turn and tool result
    state: dict  # the environment's state as the python tools left it
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)  # 1: a token the model generated; 0: tool results
    logprobs: list[float] | None = field(default_factory=list)  # None once a generation gave none
    turns: int = 0  # model turns taken
    tool_calls: list[dict] = field(default_factory=list)  # every call the model made, OpenAI's shape
    tool_errors: int = 0  # calls that ended in an error message (ToolResult.error)
    tool_failures: int = 0  # of those, the tool's own (not environments.MODEL_ERRORS): timeouts, crashes, ...
    tool_seconds: list[float] = field(default_factory=list)  # wall time of each call that ran
    ended: str = ""  # "answer" | "turn_limit" | "token_budget"
    final_text: str = ""  # the last assistant turn's text, tool calls removed
    group: int = 0  # the rollout group (one prompt's rollouts): its MCP servers are the group's own

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    def summary(self) -> dict:
        """What graders and the metrics get (JSON): rollout_messages are the messages after the prompt."""
        return {"final_text": self.final_text, "tool_calls": self.tool_calls, "messages": self.messages,
                "environment_state": self.state, "turns": self.turns, "tool_errors": self.tool_errors,
                "tool_seconds": self.tool_seconds, "ended": self.ended, "model_tokens": sum(self.env_mask)}


@dataclass(frozen=True)
class RolloutSetup:
    """What run_rollouts needs besides the trajectories and the generator."""

    tokenizer: object
    family: object  # chat_families.Family: parse(text) -> (content, calls), end_tokens
    env: dict  # environments.validate_environment's result
    eos_ids: tuple[int, ...]  # token ids that end an assistant turn
    sandbox: object = None  # graders.sandbox.SandboxConfig for python tools; None = the default
    tool_hosts: tuple[str, ...] = ()  # allow-list of HTTP tools' hosts


def start(tokenizer, prompt_text: str, messages: list[dict], state: dict) -> Trajectory:
    """A trajectory before its first turn. The prompt is tokenized as TRL tokenizes text prompts."""
    return Trajectory(prompt_ids=list(tokenizer(text=prompt_text)["input_ids"]), messages=list(messages), state=state)


def run_rollouts(trajs: list[Trajectory], generate: Generate, setup: RolloutSetup) -> list[Trajectory]:
    """Take every trajectory to its end (see the module docstring); returns them, filled in. An
    environment with MCP servers gets a fresh set of server processes per rollout group (Trajectory.group),
    stopped when the rollouts end, whatever happens."""
    if not any(tool["type"] == "mcp" for tool in setup.env["tools"]):
        return _run(trajs, generate, setup, None)
    from modelmill.ml import mcp_tools

    keys = [t.group for t in trajs]
    groups = mcp_tools.start_groups(setup.env, keys, setup.sandbox, max(keys.count(k) for k in set(keys)))
    try:
        return _run(trajs, generate, setup, {id(t): g for t, g in zip(trajs, groups, strict=True)})
    finally:
        mcp_tools.close_groups(groups)


def _run(trajs: list[Trajectory], generate: Generate, setup: RolloutSetup, servers: dict | None) -> list[Trajectory]:
    env = setup.env
    active = list(trajs)
    while active:
        new_ids, new_logps = generate([t.prompt_ids + t.completion_ids for t in active])
        waiting: list[Trajectory] = []
        calls: list[environments.ToolCall] = []
        for k, (t, ids) in enumerate(zip(active, new_ids, strict=True)):
            room = env["max_rollout_tokens"] - len(t.completion_ids)
            ended_turn = bool(ids) and ids[-1] in setup.eos_ids and len(ids) <= room
            ids = list(ids[:room])
            t.completion_ids += ids
            t.env_mask += [1] * len(ids)
            if t.logprobs is not None:
                t.logprobs = None if new_logps is None else t.logprobs + list(new_logps[k][:len(ids)])
            t.turns += 1
            text = setup.tokenizer.decode(ids, skip_special_tokens=True)
            content, parsed = setup.family.parse(text)
            t.final_text = content or ""
            message = {"role": "assistant", "content": content or ""}
            if parsed:
                message["tool_calls"] = parsed
                t.tool_calls += parsed
            t.messages.append(message)
            if not ended_turn:
                t.ended = "token_budget"
            elif not parsed:
                t.ended = "answer"
            elif t.turns >= env["max_turns"]:
                t.ended = "turn_limit"
            else:
                calls += [environments.ToolCall(len(waiting), c["id"], c["function"]["name"],
                                                c["function"]["arguments"]) for c in parsed]
                waiting.append(t)
        results = environments.run_tool_calls(
            env, calls, [t.state for t in waiting], sandbox=setup.sandbox, tool_hosts=setup.tool_hosts,
            servers=None if servers is None else [servers[id(t)] for t in waiting]) if calls else []
        active = [t for t in waiting if _append_results(t, [(c, r) for c, r in zip(calls, results, strict=True)
                                                            if waiting[c.rollout] is t], setup)]
    return trajs


def _append_results(t: Trajectory, done: list, setup: RolloutSetup) -> bool:
    """Add one turn's tool results to the trajectory (messages and tokens); False when they do not fit
    in max_rollout_tokens (the rollout then ends as the model left it)."""
    tool_messages = [{"role": "tool", "tool_call_id": call.call_id, "name": call.name, "content": result.content}
                     for call, result in done]
    for _, result in done:
        t.tool_errors += result.error is not None
        t.tool_failures += result.error is not None and result.error not in environments.MODEL_ERRORS
        t.tool_seconds.append(result.seconds)
    suffix = tool_suffix_ids(setup.tokenizer, setup.family, t.messages[-1], tool_messages,
                             environments.template_tools(setup.env))
    if len(t.completion_ids) + len(suffix) >= setup.env["max_rollout_tokens"]:
        t.ended = "token_budget"
        return False
    t.messages += tool_messages
    t.completion_ids += suffix
    t.env_mask += [0] * len(suffix)
    if t.logprobs is not None:
        t.logprobs += [0.0] * len(suffix)
    return True


def tool_suffix_ids(tokenizer, family, assistant: dict, tool_messages: list[dict], tools: list[dict]) -> list[int]:
    """The tokens the chat template puts after an assistant turn's end-of-turn token: the tool results
    and the next assistant prompt. Rendered after a one-line stand-in conversation and cut where the
    assistant turn ends (as TRL's _get_tool_suffix_ids does), so the model's own tokens stay as generated."""
    stand_in = [{"role": "user", "content": "x"}, assistant]
    before = chat_format.render(tokenizer, stand_in, tools)
    after = chat_format.render(tokenizer, stand_in + tool_messages, tools, add_generation_prompt=True)
    cut = max(before.rfind(end) + len(end) for end in family.end_tokens if end in before) \
        if any(end in before for end in family.end_tokens) else len(before.rstrip())
    if not after.startswith(before[:cut]):
        raise ValueError("the chat template renders tool results in a way that changes the assistant turn before them")
    return list(tokenizer(after[cut:], add_special_tokens=False)["input_ids"])


def rollout_stats(trajs: list[Trajectory]) -> dict[str, float]:
    """Metrics of one step's rollouts: rollout_turns_mean, tool_calls_mean (per rollout),
    tool_error_rate (failed share of the calls that were made), tool_latency_mean (seconds per call),
    tool_failed_rollout_rate (share of rollouts where a tool itself failed: a timeout, crash, exception, HTTP
    error; not the model's unknown tools or bad arguments)."""
    n = max(1, len(trajs))
    calls = sum(len(t.tool_seconds) for t in trajs)
    seconds = [s for t in trajs for s in t.tool_seconds]
    return {"rollout_turns_mean": sum(t.turns for t in trajs) / n,
            "tool_calls_mean": sum(len(t.tool_calls) for t in trajs) / n,
            "tool_error_rate": sum(t.tool_errors for t in trajs) / calls if calls else 0.0,
            "tool_latency_mean": statistics.fmean(seconds) if seconds else 0.0,
            "tool_failed_rollout_rate": sum(t.tool_failures > 0 for t in trajs) / n}
