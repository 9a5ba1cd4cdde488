"""Before/after eval reports for fine-tuning jobs, made of ordinary eval runs.

A job gets them when it has a validation file or metadata {"eval": "true"} (metadata
{"eval": "false"} turns them off). The worker calls before_training() once, on the job's first
attempt, right after it starts, and after_training() once training has succeeded, before the
job is marked succeeded. Each phase ensures its runs exist and are complete.

By default every run, the base one included, is made after training: the starting model does
not change, so its score is the same, and the job's first step does not wait for it (the cost
of waiting is measured in BENCHMARKS.md, "Time to first step"). Metadata {"eval_base_first": "true"}
evaluates the base model before training instead, so its score is known while training runs.
Runs:

- "base": the job's starting model (`model` as requested: a base or an ft: model);
- "step N": each kept checkpoint, with metadata {"eval_checkpoints": "true"};
- "final": the fine-tuned model (its adapter on disk; the job is not succeeded yet).

A run left over from an earlier attempt (the worker died or shut down) is continued, not
redone; a missing base run is made after training (the base model does not change).

Items: the first MAX_ITEMS lines (metadata "eval_max_items", up to ITEMS_LIMIT) of the validation
file (else of the training file). SFT line
-> {"input": messages before the last assistant message, "reference": its text}; DPO line ->
{"input": input.messages, "reference": the preferred output's text}; RFT line -> the line as
it is (messages plus the grader's extra fields), prompted with item.messages. Tools on the
lines are passed to the model when every line has the same ones.

Criteria: the RFT job's own grader; for SFT / DPO an exact match of sample.output_text against
item.reference. Metadata {"eval_id": "eval_..."} runs that eval's testing criteria instead (its
runs then appear under that eval; its item_schema must accept the items above).

Sampling is greedy (temperature 0) and seeded with the job's seed. Answers are cut at MAX_TOKENS
tokens; with the default exact match, at the longest reference's length in bytes plus 2 (a
byte-level token covers at least one byte, so a longer answer could not match anyway); for RFT,
at the job's completion budget (ml/rft/config.py COMPLETION_TOKENS for its reasoning_effort). Metadata
"eval_max_tokens" (1 to TOKENS_LIMIT) overrides all three.
The comparison becomes one job event whose data has key "eval_comparison" (docs/graders-evals.md, "Before/after reports").
The eval and its runs belong to the job's project; metadata eval_id must name one of that project's evals.
A failure here never fails the job: it becomes a warn event.
Both phases get the fine-tune task's TaskContext (service/core/tasks.py: the job's lease, its queue for
job events, the store, settings and the worker's stop event), never the worker; each eval run is
claimed on its own lease by the job's worker (the job lease's owner) and run by evals/runner.execute.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from modelmill import errors
from modelmill.reports import comparison_table
from modelmill.service.evals import report, requests, runner
from modelmill.service.schemas.evals import report_url
from modelmill.service.store.evals import EvalRecord, EvalRunRecord, NewRun
from modelmill.service.store.records import JobRecord
from modelmill.service.core.tasks import TaskContext

log = logging.getLogger(__name__)

# Validation (or training) lines evaluated per model.
MAX_ITEMS = 50
# Completion tokens per answer.
MAX_TOKENS = 128
# Highest values metadata eval_max_items / eval_max_tokens may ask for.
ITEMS_LIMIT, TOKENS_LIMIT = 1000, 4096
EXACT_MATCH = {"type": "string_check", "name": "exact_match", "input": "{{sample.output_text}}",
               "reference": "{{item.reference}}", "operation": "eq"}
CHAT_ITEM_SCHEMA = {"type": "object", "properties": {"input": {"type": "array", "items": {"type": "object"}},
                                                     "reference": {"type": "string"}},
                    "required": ["input", "reference"]}
RFT_ITEM_SCHEMA = {"type": "object", "properties": {"messages": {"type": "array", "items": {"type": "object"}}},
                   "required": ["messages"]}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
# The methods whose lines make eval items (_items).
METHODS = ("supervised", "dpo", "reinforcement")


def enabled(job: JobRecord) -> bool:
    # Not for agentic RFT (docs/agentic_rft.md): its reward needs the environment's tools, which this
    # one-turn eval (chat completions, no tools run) cannot give; the job's own validation reward is multi-turn.
    return enabled_for(job.metadata, job.validation_file) and not job.environment


def enabled_for(metadata: dict | None, validation_file: str | None) -> bool:
    flag = str((metadata or {}).get("eval", "")).lower()
    if flag in FALSE:
        return False
    return bool(validation_file) or flag in TRUE


def create_own_eval(store, job_id: str, method: str, grader: dict | None, project_id: str) -> EvalRecord:
    """The job's own before/after eval (found by its metadata fine_tuning_job_id). Made when the job
    is created (service/jobs/requests.py), before the job row exists so no worker can race to make a
    second one, so that the job object carries its eval_id from the start, as OpenAI's does."""
    if method == "reinforcement":
        criteria = requests.check_testing_criteria([grader], require_thresholds=False)
        schema = RFT_ITEM_SCHEMA
    else:
        criteria, schema = [EXACT_MATCH], CHAT_ITEM_SCHEMA
    config = {"type": "custom", "item_schema": schema, "include_sample_schema": True}
    return store.evals.create(f"{job_id} before/after", config, criteria, {"fine_tuning_job_id": job_id}, project_id)


def eval_id_of(store, job: JobRecord) -> str | None:
    """The job object's eval_id: the eval its metadata eval_id names (when it is one of the job's
    project's), else the job's own before/after eval; None when it has neither."""
    named = (job.metadata or {}).get("eval_id")
    if named:
        try:
            return store.evals.get(named, project_id=job.project_id).id
        except errors.NotFoundError:
            return None
    ev = store.evals.by_metadata("fine_tuning_job_id", job.id, project_id=job.project_id)
    return ev.id if ev is not None else None


def base_first(job: JobRecord) -> bool:
    """Metadata {"eval_base_first": "true"}: evaluate the starting model before training."""
    return str((job.metadata or {}).get("eval_base_first", "")).lower() in TRUE


def before_training(ctx: TaskContext, job: JobRecord, reporter) -> None:
    """Evaluate the starting model, when the job asks for it first (base_first). A cancel, pause
    or shutdown stops it between batches (the run is then finished after training, see after_training).
    ctx: the fine-tune task's (its lease is the job's)."""
    if not enabled(job) or not base_first(job):
        return
    with _Phase(ctx, job) as phase:
        plan = phase.plan()
        if plan is not None:
            phase.ensure(plan, "base", job.model, reporter.should_stop, ctx.stop_event)


def after_training(ctx: TaskContext, job: JobRecord, reporter) -> None:
    """Evaluate the starting model (unless before_training did), the final model (and checkpoints
    when asked), finish any earlier run, and record the comparison. Only a cancel stops it:
    pausing a trained job makes no sense."""
    if not enabled(job):
        return
    with _Phase(ctx, job) as phase:
        plan = phase.plan()
        if plan is None:
            return

        def cancel_only():
            return "cancel" if reporter.should_stop() == "cancel" else None

        never = threading.Event()
        runs = [("base", phase.ensure(plan, "base", job.model, cancel_only, never))]
        if str((job.metadata or {}).get("eval_checkpoints", "")).lower() in TRUE:
            for ckpt in ctx.store.checkpoints.all_for(job.id):
                label = f"step {ckpt.step_number}"
                runs.append((label, phase.ensure(plan, label, ckpt.fine_tuned_model_checkpoint, cancel_only, never)))
        runs.append(("final", phase.ensure(plan, "final", job.ft_name, cancel_only, never)))
        phase.compare(plan, runs)


class _Plan:
    """What a job's runs evaluate: the eval (criteria), the items and how they are prompted."""

    def __init__(self, ev: EvalRecord, items: list[dict], input_ref: str, tools: list | None, seed: int,
                 max_tokens: int):
        self.eval, self.items, self.input_ref, self.tools, self.seed = ev, items, input_ref, tools, seed
        self.max_tokens = max_tokens

    def data_source(self, model: str) -> dict:
        params = {"temperature": 0, "top_p": 1, "max_completion_tokens": self.max_tokens, "seed": self.seed}
        if self.tools:
            params["tools"] = self.tools
        return {"type": "completions", "model": model,
                "input_messages": {"type": "item_reference", "item_reference": self.input_ref},
                "sampling_params": params,
                "source": {"type": "file_content", "content": [{"item": it} for it in self.items]}}


class _Phase:
    """One phase's context: job events go through the job's lease (fenced); any other failure
    becomes a warn event and the job goes on."""

    def __init__(self, ctx: TaskContext, job: JobRecord):
        self.ctx, self.job = ctx, job
        self.store, self.settings = ctx.store, ctx.settings

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, errors.FencedOutError) or not isinstance(exc, Exception):
            return False
        log.warning("job %s: before/after eval failed", self.job.id, exc_info=True)
        message = exc.message if isinstance(exc, errors.ModelMillError) else f"{type(exc).__name__}: {exc}"
        self.event("warn", f"Before/after eval skipped: {message}")
        return True

    def event(self, level: str, message: str, data: dict | None = None) -> None:
        self.ctx.queue.add_event(self.ctx.lease, level, message, data=data)

    # -- what to evaluate ------------------------------------------------------------------------

    def plan(self) -> _Plan | None:
        job = self.job
        method = job.method_type
        if method not in METHODS:
            self.event("warn", f"Before/after eval skipped: no eval items for method '{method}'")
            return None
        file_id = job.validation_file or job.training_file
        lines = _read_lines(self.store.files.blob_path(file_id), self._meta_int("eval_max_items", ITEMS_LIMIT)
                            or MAX_ITEMS)
        items, tools = _items(method, lines)
        if not items:
            self.event("warn", f"Before/after eval skipped: no usable lines in {file_id}")
            return None
        ev = self._eval(method)
        if ev is None:
            return None
        return _Plan(ev, items, "item.messages" if method == "reinforcement" else "item.input", tools, job.seed,
                     self._max_tokens(method, items, ev))

    def _meta_int(self, key: str, limit: int) -> int | None:
        """A positive integer from the job's metadata (clamped to limit), or None."""
        raw = (self.job.metadata or {}).get(key)
        try:
            return min(limit, int(raw)) if raw is not None and int(raw) > 0 else None
        except ValueError:
            self.event("warn", f"metadata {key}={raw!r} is not a positive integer; ignored")
            return None

    def _max_tokens(self, method: str, items: list[dict], ev: EvalRecord) -> int:
        asked = self._meta_int("eval_max_tokens", TOKENS_LIMIT)
        if asked:
            return asked
        if method == "reinforcement":
            try:
                from modelmill.ml.rft import COMPLETION_TOKENS
            except ImportError:
                return MAX_TOKENS
            return COMPLETION_TOKENS.get(self.job.hyperparameters.get("reasoning_effort"), MAX_TOKENS)
        if ev.testing_criteria == [EXACT_MATCH]:
            return min(MAX_TOKENS, max(len(it["reference"].encode()) for it in items) + 2)
        return MAX_TOKENS

    def _eval(self, method: str) -> EvalRecord | None:
        job = self.job
        eval_id = (job.metadata or {}).get("eval_id")
        if eval_id:
            try:
                return self.store.evals.get(eval_id, project_id=job.project_id)  # only the job's project's
            except errors.NotFoundError:
                self.event("warn", f"Before/after eval skipped: metadata eval_id {eval_id} is not an eval")
                return None
        ev = self.store.evals.by_metadata("fine_tuning_job_id", job.id, project_id=job.project_id)
        if ev is not None:  # made with the job (jobs from before that get theirs here)
            return ev
        return create_own_eval(self.store, job.id, method, job.grader, job.project_id)

    # -- runs ------------------------------------------------------------------------------------

    def ensure(self, plan: _Plan, label: str, model: str, should_stop, stop_event) -> EvalRunRecord:
        """This job's run for `label` (made if missing), run to its end unless stopped."""
        store, job = self.store, self.job
        mine = [r for r in store.evals.runs_for_job(job.id) if r.job_label == label and r.eval_id == plan.eval.id]
        run = mine[-1] if mine else None
        if run is None:
            run = store.evals.create_run(NewRun(
                eval_id=plan.eval.id, name=f"{job.id} {label}", data_source=plan.data_source(model), model=model,
                metadata={"fine_tuning_job_id": job.id, "label": label}, job_id=job.id, job_label=label))
            self.event("info", f"Evaluating the {label} model {model} on {len(plan.items)} items (eval run {run.id})")
        queue = store.eval_run_queue(self.settings.lease_seconds)
        while run.status in ("queued", "in_progress"):
            lease = queue.claim(self.ctx.lease.owner, run.id)
            if lease is not None:  # done, or handed back because we were told to stop: move on
                runner.execute(TaskContext(store, self.settings, queue, lease, stop_event), should_stop=should_stop)
                return store.evals.run_by_id(run.id)
            # Another worker holds it (or a dead one's lease has not run out yet): wait, then retry.
            if should_stop() == "cancel":
                break
            time.sleep(self.settings.poll_seconds)
            run = store.evals.run_by_id(run.id)
        return run

    def compare(self, plan: _Plan, runs: list[tuple[str, EvalRunRecord]]) -> None:
        criteria = [c["name"] for c in plan.eval.testing_criteria]
        base = public_base_url(self.settings)
        rows = []
        for label, run in runs:
            if run.status != "completed":
                why = f": {run.error['message']}" if run.error else ""
                self.event("warn", f"Eval run {run.id} ({label}) {run.status}{why}")
                continue
            summary = report.criteria_summary(plan.eval.testing_criteria, self.store.evals.all_items(run.id))
            rows.append({"label": label, "model": run.model, "eval_id": run.eval_id, "run_id": run.id,
                         "report_url": report_url(base, run.eval_id, run.id),
                         "scores": {c["name"]: round(c["mean_score"], 6) for c in summary},
                         "passed": int(run.result_counts["passed"]), "total": int(run.result_counts["total"])})
        if rows:
            self.event("info", comparison_table(criteria, rows),
                       data={"eval_comparison": {"criteria": criteria, "rows": rows}})


def public_base_url(settings) -> str:
    """This server's address as settings know it (for report URLs made off a request)."""
    host = settings.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/"


def _read_lines(path, limit: int) -> list[dict]:
    out = []
    with open(path, "rb") as f:
        for raw in f:
            if len(out) >= limit:
                break
            if raw.strip():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict):
                    out.append(line)
    return out


def _items(method: str, lines: list[dict]) -> tuple[list[dict], list | None]:
    """(items, tools shared by every line or None)."""
    items, tools = [], []
    for line in lines:
        if method == "reinforcement":
            item, t = (dict(line), line.get("tools")) if isinstance(line.get("messages"), list) else (None, None)
        elif method == "dpo":
            item, t = _dpo_item(line)
        else:
            item, t = _sft_item(line)
        if item is not None:
            items.append(item)
            tools.append(t)
    shared = tools[0] if tools and tools[0] and all(t == tools[0] for t in tools) else None
    return items, shared


def _sft_item(line: dict):
    messages = line.get("messages")
    if not isinstance(messages, list):
        return None, None
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
               default=None)
    if last is None or last == 0:
        return None, None
    return {"input": messages[:last], "reference": _text(messages[last])}, line.get("tools")


def _dpo_item(line: dict):
    given = line.get("input") if isinstance(line.get("input"), dict) else {}
    preferred = line.get("preferred_output")
    if not isinstance(given.get("messages"), list) or not isinstance(preferred, list) or not preferred:
        return None, None
    return {"input": given["messages"], "reference": _text(preferred[-1])}, given.get("tools")


def _text(message) -> str:
    """A message's text: its content, or its tool calls as JSON [{name, arguments}] (which the
    default exact match compares as text)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content:
        return str(content)
    calls = [c.get("function", {}) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    return json.dumps([{"name": f.get("name"), "arguments": f.get("arguments")} for f in calls]) if calls else ""
