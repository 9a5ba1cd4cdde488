"""Execute one eval run: read its items -> sample the model (completions) -> grade every
testing criterion -> write output items, a batch at a time.

The job worker calls run_next_eval when no training job is runnable (service/worker/loop.py), and
service/jobs/eval_reports.py runs a job's before/after runs inline through execute(). A run is held
under its own lease (store/run_queue.py, an EvalRunQueue) with a heartbeat thread, so a worker
that dies leaves the run to the next one, which skips the items already written. Cancel is
checked between batches; a worker shutting down hands the run back as queued. The task gets a
TaskContext (service/core/tasks.py), never the worker; it samples and judges with the process's one
Sampler (service/models/sampler.py).

Pass/fail per criterion: a grader's own verdict when it has one (string_check, label_model,
a pass_threshold); otherwise the score must reach the midpoint of the grader's range
(score_model's `range`, else 0..1, so 0.5). An item passes when every criterion passes; an
item whose sampling or grading errored counts as errored (and as failed for each criterion).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.models import registry as model_registry
from modelmill.service.evals import data, requests, stored_sources
from modelmill.service.store.ids import new_id
from modelmill.service.models.sampler import shared_sampler
from modelmill.service.store import Store
from modelmill.service.store.evals import EvalRecord, EvalRunRecord
from modelmill.service.core import tasks
from modelmill.service.core.tasks import TaskContext

log = logging.getLogger(__name__)

# Items sampled and graded per batch (one batch_generate call); cancel is checked between batches.
EVAL_BATCH = 8
# A run whose worker died this many times mid-run is failed instead of being retried again.
MAX_RECLAIMS = 3
# Reported as a sample's max_completion_tokens when none was asked (ml.sampling's cap).
DEFAULT_MAX_TOKENS = 512

def run_next_eval(settings: Settings, store: Store, owner: str, stop_event: threading.Event) -> str | None:
    """Claim and execute the oldest runnable eval run; its id, or None if there was none."""
    return tasks.run_next(store.eval_run_queue(settings.lease_seconds), settings, store, owner, stop_event, execute)


def execute(ctx: TaskContext, *, should_stop: Callable[[], str | None] | None = None) -> str:
    """Run a claimed run (ctx.lease, from an EvalRunQueue) to its end; returns the status it ended
    in, or "lost" (lease lost). should_stop: an extra stop signal ("cancel" ends the run canceled,
    "pause" hands it back), besides ctx.stop_event (a worker shutting down hands it back)."""
    lost_on = (errors.FencedOutError, errors.NotFoundError)  # reclaimed, or deleted with its eval
    return tasks.run_with_heartbeat(ctx, lambda lost: _Execution(ctx, should_stop, lost).run(), lost_on)


class _Execution:
    def __init__(self, ctx: TaskContext, should_stop, lost: threading.Event):
        self.settings, self.store, self.queue, self.lease = ctx.settings, ctx.store, ctx.queue, ctx.lease
        self.stop_event, self.extra_stop, self.lost = ctx.stop_event, should_stop, lost

    def run(self) -> str:
        run = self.store.evals.run_by_id(self.lease.id)
        if run.requested_action == "cancel":
            return self._finish("canceled")
        if run.reclaims > MAX_RECLAIMS:
            return self._finish("failed", {"code": "worker_lost", "message": f"The run's worker stopped "
                                           f"unexpectedly {run.reclaims} times (out of memory?); giving up"})
        try:
            return self._run(run, self.store.evals.get(run.eval_id))
        except errors.FencedOutError:
            raise
        except errors.ModelMillError as e:
            return self._finish("failed", {"code": e.code or "invalid_data_source", "message": e.message})
        except Exception as e:  # noqa: BLE001 - any failure becomes the run's error
            if self.lost.is_set():
                raise errors.FencedOutError(str(e)) from e
            log.exception("eval run %s failed", run.id)
            return self._finish("failed", {"code": "internal_error", "message": f"{type(e).__name__}: {e}"})

    def _run(self, run: EvalRunRecord, ev: EvalRecord) -> str:
        source = run.data_source
        rows = data.load_rows(self.store, source["source"], "data_source.source", project_id=run.project_id)
        data.check_items(rows, ev.data_source_config["item_schema"], lambda i: ("data_source", f"item {i}"))
        self.queue.start(self.lease, len(rows))
        # completions / responses runs with a model sample it; a stored source without one grades what was stored
        sampler = _Sampling(self.settings, self.store, run) if source.get("model") else None
        totals = _Totals.of(run, ev.testing_criteria)
        context = grader_context(self.settings, self.store, run.project_id)
        done = self.queue.done_item_ids(run.id)
        todo = [i for i in range(len(rows)) if i not in done]
        for start in range(0, len(todo), EVAL_BATCH):
            stop = self._stop_reason()
            if stop == "cancel":
                return self._finish("canceled")
            if stop:
                return self._finish("queued")
            batch = todo[start:start + EVAL_BATCH]
            samples = sampler.sample([rows[i][0] for i in batch]) if sampler else [_given(rows[i][1]) for i in batch]
            items = _grade(ev.testing_criteria, [rows[i][0] for i in batch], samples, context, totals)
            for out, i in zip(items, batch):
                out["datasource_item_id"] = i
            self.queue.record_items(self.lease, items, totals.counts, totals.per_criteria(), totals.usage_list())
        return self._finish("completed")

    def _stop_reason(self) -> str | None:
        if self.lost.is_set():
            raise errors.FencedOutError(f"Lost the lease on eval run {self.lease.id}")
        if self.queue.requested_action(self.lease) == "cancel":
            return "cancel"
        extra = self.extra_stop() if self.extra_stop else None
        if extra == "cancel":
            return "cancel"
        if extra or self.stop_event.is_set():
            return "pause"
        return None

    def _finish(self, status: str, error: dict | None = None) -> str:
        self.queue.finish(self.lease, status, error)
        return status


# -- sampling -------------------------------------------------------------------------------------

class _Sampling:
    """A completions data source's model and parameters, ready to sample batches of items."""

    def __init__(self, settings: Settings, store: Store, run: EvalRunRecord):
        self.spec = run.data_source
        self.model = run.model
        self.params, self.tools = requests.sampling_params(stored_sources.chat_sampling_params(self.spec))
        self.ref = model_registry.model_ref(settings, _served(settings, store, run))
        self.sampler = shared_sampler(settings)

    def sample(self, items: list[dict]) -> list[dict]:
        """One output-item `sample` object per item (with `error` set when it could not be sampled)."""
        from modelmill.ml.graders import templating

        out: list[dict | None] = [None] * len(items)
        prompts, where = [], []
        for j, item in enumerate(items):
            try:
                prompts.append(data.render_input(self.spec["input_messages"], item))
                where.append(j)
            except (templating.InvalidVariable, data.DataSourceError) as e:
                out[j] = self._sample([], None, {"code": "invalid_input_messages", "message": str(e)})
        for j, (messages, result) in zip(where, self._generate(prompts)):
            if isinstance(result, Exception):
                code = getattr(result, "code", None) or "sampling_error"
                out[j] = self._sample(messages, None, {"code": code, "message": f"{type(result).__name__}: {result}"})
            else:
                out[j] = self._sample(messages, result, None)
        return out

    def _generate(self, prompts: list[list[dict]]):
        """(messages, GenerationResult or the exception) per prompt: one batch, or one by one
        when the batch fails, so one bad prompt (e.g. too long) errors only its own item."""
        if not prompts:
            return []
        try:
            return list(zip(prompts, self.sampler.batch_generate(self.ref, prompts, self.params, tools=self.tools)))
        except Exception as e:  # noqa: BLE001 - retried per item below
            if len(prompts) == 1:
                return [(prompts[0], e)]
            log.info("batch sampling failed; sampling items one by one", exc_info=True)
        results = []
        for p in prompts:
            try:
                results.append((p, self.sampler.batch_generate(self.ref, [p], self.params, tools=self.tools)[0]))
            except Exception as e:  # noqa: BLE001 - this item's error
                results.append((p, e))
        return results

    def _sample(self, messages: list[dict], result, error: dict | None) -> dict:
        choice = result.choices[0] if result is not None else None
        content = choice.content if choice is not None else None
        prompt = result.prompt_tokens if result is not None else 0
        completion = result.completion_tokens if result is not None else 0
        return {
            "input": [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in messages],
            "output": [] if choice is None else [{"role": "assistant", "content": content or ""}],
            "finish_reason": choice.finish_reason if choice is not None else "",
            "model": self.model,
            "usage": {"total_tokens": prompt + completion, "completion_tokens": completion, "prompt_tokens": prompt,
                      "cached_tokens": 0},
            "error": error,
            "temperature": self.params.temperature, "max_completion_tokens": self.params.max_tokens or DEFAULT_MAX_TOKENS,
            "top_p": self.params.top_p, "seed": self.params.seed if self.params.seed is not None else 42,
            # what the graders see (dropped from the wire object)
            "_grader_sample": None if choice is None else {
                "output_text": content or "", "output_tools": choice.tool_calls or [],
                "choices": [{"index": 0, "finish_reason": choice.finish_reason, "message": {
                    "role": "assistant", "content": content, "tool_calls": choice.tool_calls or None}}]},
        }


def _given(sample: dict | None) -> dict:
    """A jsonl row's own sample as an output item's sample (OpenAI's defaults fill the sampling fields)."""
    from modelmill.ml.graders import normalize_sample

    s = normalize_sample(sample or {})
    return {"input": [], "output": [{"role": "assistant", "content": s["output_text"]}] if sample else [],
            "finish_reason": "", "model": str((sample or {}).get("model") or ""),
            "usage": {"total_tokens": 0, "completion_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0},
            "error": None, "temperature": 1.0, "max_completion_tokens": DEFAULT_MAX_TOKENS, "top_p": 1.0, "seed": 42,
            "_grader_sample": s}


def _text(content) -> str:
    return content if isinstance(content, str) else "" if content is None else str(content)


def _served(settings: Settings, store: Store, run: EvalRunRecord):
    """The run's model, as the run's project sees it (its own, shared with it, or a base model).
    A job's before/after run may name the job's fine-tuned model before the job is marked
    succeeded; then the job's final adapter on disk (checked like any other) is that model."""
    try:
        return model_registry.resolve(store, settings, run.model, param="data_source.model",
                                      project_id=run.project_id)
    except errors.NotFoundError:
        if run.job_id:
            job = store.jobs.get(run.job_id, project_id=run.project_id)
            adapter = settings.jobs_dir / job.id / "adapter"
            if run.model == job.ft_name and adapter.is_dir():
                from modelmill.service.models import adapters

                adapter = adapters.verify(store, settings, adapter, what=f"the adapter of model '{job.ft_name}'")
                return model_registry.ServedModel(job.ft_name, "fine_tuned", job.base_model, adapter, 0,
                                                  settings.owner, job.id)
        raise


# -- grading --------------------------------------------------------------------------------------

def grader_context(settings: Settings, store: Store, project_id: str | None):
    """How graders run in background work of `project_id` (an eval run, an RFT job): the service judge
    answers with ModelMill's own models through the process's one Sampler (or MODELMILL_JUDGES
    endpoints), and may use only the models that project may (its own and those shared with it)."""
    from modelmill.service.graders import requests as graders

    return graders.build_context(settings, store, lambda: shared_sampler(settings), project_id=project_id)


def passed(spec: dict, result) -> bool:
    """A criterion's verdict on one sample (see the module docstring)."""
    if result.has_error:
        return False
    if result.passed is not None:
        return bool(result.passed)
    threshold = spec.get("pass_threshold")
    if threshold is None:
        low, high = spec.get("range") or (0.0, 1.0)
        threshold = (float(low) + float(high)) / 2
    return float(result.reward) >= float(threshold)


def _grade(criteria: list[dict], items: list[dict], samples: list[dict], context, totals: "_Totals") -> list[dict]:
    from modelmill.ml.graders import grade_batch

    ok = [j for j, s in enumerate(samples) if s["error"] is None]
    per_criterion = []
    for spec in criteria:
        results = grade_batch(spec, [samples[j]["_grader_sample"] for j in ok], [items[j] for j in ok],
                              context=context) if ok else []
        per_criterion.append(dict(zip(ok, results)))
    out = []
    for j, (item, sample) in enumerate(zip(items, samples)):
        results, errored = [], sample["error"] is not None
        for spec, graded in zip(criteria, per_criterion):
            r = graded.get(j)
            verdict = r is not None and passed(spec, r)
            entry = {"name": spec["name"], "type": spec["type"], "score": float(r.reward) if r else 0.0,
                     "passed": verdict, "sample": None}
            if r is not None and r.has_error:
                entry["errors"] = {k: v for k, v in r.errors.items() if v}
                errored = True
            results.append(entry)
            totals.add_usage(r.model_grader_token_usage_per_model if r else {})
        status = "error" if errored else "pass" if all(e["passed"] for e in results) else "fail"
        totals.add_item(status, results, sample)
        wire_sample = {k: v for k, v in sample.items() if k != "_grader_sample"}
        out.append({"id": new_id("outputitem_"), "status": status, "datasource_item": item, "results": results,
                    "sample": wire_sample})
    return out


class _Totals:
    """The run's counters, continued from what the run row holds (a reclaimed run resumes them)."""

    def __init__(self, counts: dict, criteria: dict[str, dict], usage: dict[str, dict]):
        self.counts, self.criteria, self.usage = counts, criteria, usage

    @classmethod
    def of(cls, run: EvalRunRecord, criteria: list[dict]) -> "_Totals":
        have = {c["testing_criteria"]: c for c in run.per_testing_criteria_results}
        per = {s["name"]: dict(have.get(s["name"]) or {"testing_criteria": s["name"], "passed": 0, "failed": 0})
               for s in criteria}
        return cls(dict(run.result_counts), per, {u["model_name"]: dict(u) for u in run.per_model_usage})

    def add_item(self, status: str, results: list[dict], sample: dict) -> None:
        self.counts["total"] += 1
        self.counts[{"pass": "passed", "fail": "failed", "error": "errored"}[status]] += 1
        for r in results:
            self.criteria[r["name"]]["passed" if r["passed"] else "failed"] += 1
        if sample.get("model") and sample["usage"]["total_tokens"]:
            self._usage(sample["model"], sample["usage"])

    def add_usage(self, per_model: dict) -> None:
        for model, usage in per_model.items():
            self._usage(model, usage)

    def _usage(self, model: str, usage: dict) -> None:
        u = self.usage.setdefault(model, {"model_name": model, "invocation_count": 0, "prompt_tokens": 0,
                                          "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0})
        u["invocation_count"] += 1
        for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
            u[k] += int(usage.get(k) or 0)

    def per_criteria(self) -> list[dict]:
        return list(self.criteria.values())

    def usage_list(self) -> list[dict]:
        return list(self.usage.values())
