"""`modelmill import openai`: an OpenAI-compatible account's fine-tuning jobs and files, recreated here.

    plan = import_jobs(source, target, parse_model_map("gpt-4o-mini*=SmolLM2-135M-Instruct"), dry_run=False)
    print(plan.report())

For every job of the source (model, method, hyperparameters, suffix, seed, graders, metadata) the
training and validation files are downloaded when the source allows it and uploaded here, and the
job is created here *paused* (resume it to train) with its base model mapped by --model-map. Both
ends are spoken to only with the official SDK, so the source can be OpenAI or another ModelMill.

Rerunning is safe: a job already imported (its target copy carries metadata imported_from=<source
job id>) is skipped, and a file already here with the same name and size is reused.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import openai

from modelmill.errors import InvalidRequestError

SKIPPED_STATUSES = ("failed", "cancelled")  # their recipe is not worth retraining; reported
FILE_REFUSED_HINT = ("OpenAI does not let fine-tune training files be downloaded: rebuild the data with "
                     "`modelmill data label`, using the fine-tuned model as the teacher (docs/data.md)")


@dataclass
class ImportPlan:
    files: dict[str, str] = field(default_factory=dict)  # source file id -> target id ("(dry run)")
    jobs: list[str] = field(default_factory=list)  # "ftjob-src -> ftjob-new (paused): model a -> b"
    not_carried: list[str] = field(default_factory=list)  # what could not come over, and why
    dry_run: bool = False

    def report(self) -> str:
        verb = "would create" if self.dry_run else "created"
        out = [f"{verb} {len(self.jobs)} job(s) and {len(self.files)} file(s)" + (" (dry run)" if self.dry_run else "")]
        out += [f"  job {j}" for j in self.jobs]
        out += [f"  file {s} -> {t}" for s, t in self.files.items()]
        if self.not_carried:
            out.append(f"not carried over ({len(self.not_carried)}):")
            out += [f"  - {why}" for why in self.not_carried]
        return "\n".join(out)


def parse_model_map(specs: list[str]) -> list[tuple[str, str]]:
    """["a=b,c*=d"] -> [("a", "b"), ("c*", "d")]; FROM may be a glob (fnmatch)."""
    pairs = []
    for spec in specs:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            src, eq, dst = part.partition("=")
            if not eq or not src.strip() or not dst.strip():
                raise InvalidRequestError(f"--model-map: {part!r} is not FROM=TO", param="model_map")
            pairs.append((src.strip(), dst.strip()))
    if not pairs:
        raise InvalidRequestError("--model-map: give at least one FROM=TO", param="model_map")
    return pairs


def map_model(model: str, pairs: list[tuple[str, str]]) -> str | None:
    for src, dst in pairs:
        if model == src or fnmatch.fnmatchcase(model, src):
            return dst
    return None


def import_jobs(source: openai.OpenAI, target: openai.OpenAI, pairs: list[tuple[str, str]], *,
                dry_run: bool = False, say=print) -> ImportPlan:
    plan = ImportPlan(dry_run=dry_run)
    done = {(j.metadata or {}).get("imported_from") for j in target.fine_tuning.jobs.list(limit=100)}
    have = {(f.filename, f.bytes): f.id for f in target.files.list()}
    for job in source.fine_tuning.jobs.list(limit=100):
        if job.id in done:
            plan.not_carried.append(f"job {job.id}: already imported (a job here has metadata imported_from={job.id})")
            continue
        if job.status in SKIPPED_STATUSES:
            plan.not_carried.append(f"job {job.id}: skipped, its status is {job.status}")
            continue
        model = map_model(job.model, pairs)
        if model is None:
            plan.not_carried.append(f"job {job.id}: no --model-map entry for its base model {job.model}")
            continue
        files = {}
        for role in ("training_file", "validation_file"):
            fid = getattr(job, role)
            if fid:
                files[role] = _carry_file(source, target, fid, f"{role} of job {job.id}", plan, have, dry_run)
        if files.get("training_file") is None:
            plan.not_carried.append(f"job {job.id}: not recreated, its training file could not be carried over")
            continue
        _recreate(job, model, files, target, plan, dry_run)
        say(f"job {job.id}: done")
    return plan


def _carry_file(source, target, fid: str, what: str, plan: ImportPlan, have: dict, dry_run: bool) -> str | None:
    if fid in plan.files:
        return plan.files[fid]
    try:
        meta = source.files.retrieve(fid)
        content = source.files.content(fid).read()
    except openai.APIStatusError as e:
        refused = e.status_code in (400, 403)
        plan.not_carried.append(f"file {fid} ({what}): the source refused the download ({e.status_code}: "
                                f"{_message(e)})" + (f". {FILE_REFUSED_HINT}" if refused else ""))
        return None
    if dry_run:
        plan.files[fid] = f"(dry run: {meta.filename}, {len(content)} bytes)"
        return plan.files[fid]
    existing = have.get((meta.filename, len(content)))
    if existing is None:
        purpose = meta.purpose if meta.purpose in ("fine-tune", "evals", "user_data") else "fine-tune"
        existing = target.files.create(file=(meta.filename, content), purpose=purpose).id
        have[(meta.filename, len(content))] = existing
    plan.files[fid] = existing
    return existing


def _recreate(job, model: str, files: dict, target, plan: ImportPlan, dry_run: bool) -> None:
    method = _method(job)
    metadata = dict(job.metadata or {})
    if len(metadata) < 16:  # OpenAI's metadata holds 16 keys; the marker makes reruns skip this job
        metadata["imported_from"] = job.id
    body = {"model": model, "training_file": files["training_file"], "method": method, "metadata": metadata,
            **({"validation_file": files["validation_file"]} if files.get("validation_file") else {}),
            **({"suffix": _suffix(job)} if _suffix(job) else {}),
            **({"seed": job.seed} if job.seed is not None else {})}
    if getattr(job, "integrations", None):
        plan.not_carried.append(f"job {job.id}: integrations ({', '.join(i.type for i in job.integrations)}) are "
                                "not carried over: ModelMill records metrics itself")
    if job.fine_tuned_model:
        plan.not_carried.append(f"job {job.id}: the weights of {job.fine_tuned_model} stay at the source (providers "
                                "do not export them); resume the paused job here to train the open model")
    line = f"{job.id} -> {{}}: model {job.model} -> {model}, method {method['type']}"
    if dry_run:
        plan.jobs.append(line.format("(dry run)"))
        return
    try:
        new = target.fine_tuning.jobs.create(**body)
    except openai.APIStatusError as e:
        plan.not_carried.append(f"job {job.id}: this server refused it ({e.status_code}: {_message(e)})")
        return
    try:  # created, then paused at once: the user reviews it and resumes it to train
        new = target.fine_tuning.jobs.pause(new.id)
    except openai.APIStatusError as e:  # e.g. a worker already finished it
        plan.not_carried.append(f"job {job.id}: recreated as {new.id} but not paused ({_message(e)})")
    plan.jobs.append(line.format(f"{new.id} ({new.status})"))


def _method(job) -> dict:
    raw = job.to_dict().get("method") or {}
    kind = raw.get("type") or "supervised"
    inner = {k: v for k, v in (raw.get(kind) or {}).items() if v is not None}
    if not inner.get("hyperparameters") and job.hyperparameters is not None:  # legacy jobs
        inner["hyperparameters"] = {k: v for k, v in job.hyperparameters.to_dict().items() if v is not None}
    return {"type": kind, kind: inner}


def _suffix(job) -> str | None:
    suffix = getattr(job, "suffix", None) or (job.to_dict().get("user_provided_suffix"))
    if suffix:
        return suffix
    # OpenAI names ft:BASE:ORG:SUFFIX:ID; the suffix is not a job field there.
    parts = (job.fine_tuned_model or "").split(":")
    return parts[3] if len(parts) == 5 and parts[0] == "ft" and parts[3] else None


def _message(e: openai.APIStatusError) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    return str(body.get("message") or (body.get("error") or {}).get("message") or e.message)[:300]
