"""The `modelmill` command: a thin shell over the service (serve, worker, keys) and the
public API (files, jobs, evals), plus the local model registry (models)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from modelmill.quiet import quiet_third_party_output  # third-party bars and warnings, unless --verbose
from modelmill.settings import Settings


def _settings(args) -> Settings:
    # Read once here; code that needs the home gets it from these Settings (a `serve --worker-process`
    # child through settings.child_env, the graders' WordNet cache through create_app and run_worker).
    return Settings.from_env(home=getattr(args, "home", None), host=getattr(args, "host", None),
                             port=getattr(args, "port", None))


def _client(args):
    from openai import OpenAI

    return OpenAI(base_url=args.base_url, api_key=args.api_key or "local")


# --- service ---------------------------------------------------------------------------

def cmd_serve(args) -> int:
    settings = _settings(args).with_(run_worker=not args.no_worker)
    if args.worker_process and settings.run_worker:  # before prometheus_client is imported (service/metrics_dir.py)
        from modelmill.service import metrics_dir

        metrics_dir.use_for_this_server(settings.home)
    from modelmill.service.api.app import serve
    from modelmill.ml import inference  # light: imports torch only to check MODELMILL_VLLM_START's GPU

    try:
        inference.check(settings)
    except ValueError as e:
        print(f"modelmill serve: {e}", file=sys.stderr)
        return 2
    serve(settings, log_level=args.log_level, worker_process=args.worker_process)
    return 0


def cmd_worker(args) -> int:
    from modelmill.service.worker import run_worker

    run_worker(_settings(args))
    return 0


def cmd_keys_create(args) -> int:
    from modelmill.service.store import open_store
    from modelmill.service.store.records import DEFAULT_PROJECT_ID

    store = open_store(_settings(args).ensure_dirs())
    project = store.projects.ensure(args.project) if args.project else store.projects.get(DEFAULT_PROJECT_ID)
    key = store.keys.create(args.name, project.id)[1]
    print(key)
    print(f"A key for project {project.name} ({project.id}): it sees only that project's files, jobs, models and "
          "evals.\nStore it now: only its hash is kept. The server now requires a key on every request.",
          file=sys.stderr)
    return 0


def cmd_keys_list(args) -> int:
    """Every key (never its secret: its id, label, first characters, project, created / last used)."""
    from modelmill.service.store import open_store

    store = open_store(_settings(args).ensure_dirs())
    projects = {p.id: p.name for p in store.projects.list()}
    rows = [{"id": k.id, "name": k.name, "prefix": k.prefix, "project": projects.get(k.project_id, k.project_id),
             "project_id": k.project_id, "created": int(k.created_at),
             "last_used": int(k.last_used_at) if k.last_used_at else None} for k in store.keys.list()]
    if args.json:
        return _print_json(rows)
    if not rows:
        print("No API keys: the server accepts requests only on loopback, without a key.", file=sys.stderr)
    for r in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"])) if r["last_used"] else "never used"
        print(f"{r['id']:<22} {r['prefix']}...  {r['name']:<20} {r['project']:<20} {used}")
    return 0


def cmd_keys_revoke(args) -> int:
    """Delete a key and its dashboard sessions: requests with either fail from now on."""
    from modelmill import errors
    from modelmill.service.store import open_store

    store = open_store(_settings(args).ensure_dirs())
    try:
        store.keys.revoke(args.key_id)
    except errors.NotFoundError as e:
        print(f"modelmill keys revoke: {e.message}", file=sys.stderr)
        return 1
    print(f"Revoked {args.key_id}; its dashboard sessions are signed out.", file=sys.stderr)
    if not store.keys.any():
        print("That was the last key: the server now accepts keyless requests, on loopback only.", file=sys.stderr)
    return 0


def cmd_projects_list(args) -> int:
    from modelmill.service.store import open_store

    store = open_store(_settings(args).ensure_dirs())
    keys: dict[str, int] = {}
    for k in store.keys.list():
        keys[k.project_id] = keys.get(k.project_id, 0) + 1
    rows = [{"id": p.id, "name": p.name, "created": int(p.created_at), "keys": keys.get(p.id, 0)}
            for p in store.projects.list()]
    if args.json:
        return _print_json(rows)
    for r in rows:
        print(f"{r['id']:<30} {r['name']:<24} {r['keys']} key(s)")
    return 0


def cmd_demo(args) -> int:
    from modelmill.demo import run_demo

    run_demo(model=args.model, n_epochs=args.n_epochs, base_url=args.base_url_opt)
    return 0


# --- models (local registry) -----------------------------------------------------------

def cmd_models_list(args) -> int:
    from modelmill.ml.models import list_models

    found = list_models(_settings(args).home)
    if args.json:
        return _print_json([{"id": m.name, "created": m.created, "source": m.source} for m in found])
    for m in found:
        print(f"{m.name:<40} {m.source}")
    return 0


def cmd_models_prepare(args) -> int:
    from modelmill.ml.models import ensure_base
    from modelmill.progress import step_progress

    with step_progress(f"preparing {args.name}") as say:
        path = ensure_base(_settings(args).ensure_dirs().home, args.name, progress=say)
    print(path)
    return 0


def cmd_models_add(args) -> int:
    from modelmill.ml.models import add_model

    from modelmill.progress import step_progress

    with step_progress(f"adding {args.name}") as say:
        info = add_model(_settings(args).ensure_dirs().home, args.name, args.path, progress=say)
    print(f"added {info.name} from {info.source}")
    return 0


def cmd_models_export(args) -> int:
    """Download a fine-tuned or checkpoint model from the server (GET /v1/models/{model}/export)."""
    import httpx

    from modelmill.export_download import download_export
    from modelmill.progress import download_progress

    out = Path(args.out or "".join(c if c.isalnum() or c in "-_." else "_" for c in args.model).strip("_")
               + f"-{args.format}")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.base_url.rstrip("/") + "/", headers=headers,
                      timeout=httpx.Timeout(30.0, read=3600.0)) as http, \
            download_progress(f"exporting {args.model} ({args.format})") as progress:
        files = download_export(http, args.model, args.format, out, gguf_type=args.gguf_type, progress=progress)
    print(out)
    print(f"{len(files)} files: {', '.join(p.name for p in files)}", file=sys.stderr)
    return 0


# --- files and jobs (over the API, with the official SDK) --------------------------------

def cmd_files_upload(args) -> int:
    from modelmill.progress import upload_progress

    with upload_progress(args.path) as f:  # a bytes progress bar on a terminal
        obj = _client(args).files.create(file=f, purpose=args.purpose)
    print(json.dumps(obj.to_dict(), indent=2))
    return 0


def cmd_files_list(args) -> int:
    files = _client(args).files.list(**({"purpose": args.purpose} if args.purpose else {})).data
    if args.json:
        return _print_json([f.to_dict() for f in files])
    for f in files:
        print(f"{f.id}  {f.purpose:<18} {f.bytes:>12}  {f.filename}")
    return 0


def cmd_jobs_create(args) -> int:
    hp = {k: v for k, v in (("n_epochs", args.n_epochs), ("batch_size", args.batch_size),
                            ("learning_rate_multiplier", args.learning_rate_multiplier)) if v is not None}
    kwargs = dict(training_file=args.training_file, model=args.model,
                  method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    for name in ("validation_file", "suffix", "seed"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    job = _client(args).fine_tuning.jobs.create(**kwargs)
    print(json.dumps(job.to_dict(), indent=2))
    if args.watch:
        return cmd_jobs_watch(argparse.Namespace(**{**vars(args), "job": job.id}))
    return 0


def cmd_jobs_list(args) -> int:
    jobs = _client(args).fine_tuning.jobs.list(limit=args.limit).data
    if args.json:
        return _print_json([job.to_dict() for job in jobs])
    for job in jobs:
        print(f"{job.id}  {job.status:<16} {job.model:<28} {job.fine_tuned_model or ''}")
    return 0


def cmd_jobs_get(args) -> int:
    job = _client(args).fine_tuning.jobs.retrieve(args.job)
    if args.json:
        return _print_json(job.to_dict())
    from modelmill.watch import summary

    print(summary(job))
    return 0


def _print_json(obj) -> int:
    """--json output for scripts: the API's own objects, one JSON document on stdout."""
    print(json.dumps(obj, indent=2))
    return 0


def cmd_jobs_report(args) -> int:
    """The job's before/after eval table: the newest event whose data has "eval_comparison"."""
    from modelmill.reports import comparison_table

    client = _client(args)
    found = next((e.data["eval_comparison"] for e in client.fine_tuning.jobs.list_events(args.job, limit=100)
                  if isinstance(e.data, dict) and "eval_comparison" in e.data), None)
    if found is None:
        print(f"modelmill: job {args.job} has no before/after eval report (yet): give the job a validation file"
              " or metadata eval=true", file=sys.stderr)
        return 1
    server = args.base_url.rstrip("/").removesuffix("/v1")  # report pages live outside /v1
    for row in found["rows"]:
        row["report_url"] = f"{server}/evals/{row['eval_id']}/runs/{row['run_id']}"
    if args.json:
        return _print_json(found)
    print(comparison_table(found["criteria"], found["rows"]))
    for row in found["rows"]:
        print(f"{row['label']}: {row['report_url']}")
    return 0


def cmd_jobs_watch(args) -> int:
    from modelmill.watch import watch_job

    job = watch_job(_client(args), args.job)
    return 0 if job.status in ("succeeded", "paused") else 1


def _job_action(action: str):
    def run(args) -> int:
        job = getattr(_client(args).fine_tuning.jobs, action)(args.job)
        print(f"{job.id}: {job.status}")
        return 0
    run.__doc__ = f"{action} a job"
    return run


# --- evals (over the API, with the official SDK) ----------------------------------------

def cmd_evals_list(args) -> int:
    evals = _client(args).evals.list(limit=args.limit, order="desc").data
    if args.json:
        return _print_json([e.to_dict() for e in evals])
    for e in evals:
        criteria = ",".join(c.name for c in e.testing_criteria)
        print(f"{e.id}  {e.name:<32} {criteria}")
    return 0


def cmd_evals_runs(args) -> int:
    runs = _client(args).evals.runs.list(args.eval_id, limit=args.limit, order="desc").data
    if args.json:
        return _print_json([r.to_dict() for r in runs])
    for r in runs:
        counts = r.result_counts
        print(f"{r.id}  {r.status:<12} {r.model or '-':<28} {counts.passed}/{counts.total} passed  {r.name}")
    return 0


def cmd_evals_get(args) -> int:
    run = _client(args).evals.runs.retrieve(args.run_id, eval_id=args.eval_id)
    if args.json:
        return _print_json(run.to_dict())
    from modelmill.watch import eval_summary

    print(eval_summary(run))
    return 0


def cmd_evals_watch(args) -> int:
    from modelmill.watch import watch_eval_run

    run = watch_eval_run(_client(args), args.eval_id, args.run_id)
    return 0 if run.status == "completed" else 1


def cmd_evals_run(args) -> int:
    """A run over an uploaded JSONL file: its items (and samples) as they are, or with --model,
    that model sampled on each item's messages (`--input-messages`, an item reference)."""
    source = {"type": "file_id", "id": args.file}
    if args.model:
        data_source = {"type": "completions", "model": args.model, "source": source,
                       "input_messages": {"type": "item_reference", "item_reference": args.input_messages}}
    else:
        data_source = {"type": "jsonl", "source": source}
    kwargs = {"data_source": data_source, **({"name": args.name} if args.name else {})}
    run = _client(args).evals.runs.create(args.eval_id, **kwargs)
    print(f"{run.id}: {run.status}  {run.report_url}")
    if args.watch:
        return cmd_evals_watch(argparse.Namespace(**{**vars(args), "run_id": run.id}))
    return 0


# --- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelmill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true",
                   help="also show the ML libraries' progress bars and warnings (hidden by default)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def local(sp):
        sp.add_argument("--home", help="data directory (default $MODELMILL_HOME or ~/.modelmill)")
        return sp

    def remote(sp):
        sp.add_argument("--base-url", default=os.environ.get("MODELMILL_BASE_URL", "http://127.0.0.1:8000/v1"),
                        help="API base URL (default $MODELMILL_BASE_URL or http://127.0.0.1:8000/v1)")
        sp.add_argument("--api-key", default=os.environ.get("MODELMILL_API_KEY"),
                        help="API key (default $MODELMILL_API_KEY)")
        return sp

    sp = local(sub.add_parser("serve", help="run the API and a worker",
                              description="Run the OpenAI-compatible API and, unless --no-worker, a training worker."))
    sp.add_argument("--host", help="bind address (default 127.0.0.1; non-loopback needs an API key)")
    sp.add_argument("--port", type=int, help="port (default 8000)")
    sp.add_argument("--no-worker", action="store_true", help="serve the API only; run `modelmill worker` apart")
    sp.add_argument("--worker-process", action="store_true",
                    help="run the worker as a child process instead of a thread (API latency under load)")
    sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="log level (default info)")
    sp.set_defaults(func=cmd_serve)

    sp = local(sub.add_parser("worker", help="run a training worker alone",
                              description="Claim queued jobs from the store under a lease and train them."))
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("demo", help="fine-tune SmolLM2 on smart-home function calling, before/after",
                        description="Start a server, upload examples/smart_home, measure, fine-tune, measure again.")
    sp.add_argument("--model", default="SmolLM2-135M-Instruct", help="base model (default SmolLM2-135M-Instruct)")
    sp.add_argument("--n-epochs", type=int, default=1, help="training epochs (default 1)")
    sp.add_argument("--base-url", dest="base_url_opt", help="use a running server instead of starting one")
    sp.set_defaults(func=cmd_demo)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    sp = local(keys.add_parser("create", help="create an API key and print it once"))
    sp.add_argument("--name", default="default", help="a label for the key")
    sp.add_argument("--project", help="the project the key acts in, created if new (default: the default project)")
    sp.set_defaults(func=cmd_keys_create)
    sp = local(keys.add_parser("list", help="list API keys (id, label, first characters, project, last use)"))
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_keys_list)
    sp = local(keys.add_parser("revoke", help="revoke an API key (and its dashboard sessions) at once"))
    sp.add_argument("key_id", help="the key's id, from `modelmill keys list` (key_...)")
    sp.set_defaults(func=cmd_keys_revoke)

    projects = sub.add_parser("projects", help="projects (what API keys are scoped to)").add_subparsers(
        dest="projects_cmd", required=True, metavar="ACTION")
    sp = local(projects.add_parser("list", help="list projects with their ids (to share models between them)"))
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_projects_list)

    models = sub.add_parser("models", help="the base-model registry").add_subparsers(
        dest="models_cmd", required=True, metavar="ACTION")
    sp = local(models.add_parser("list", help="list base models"))
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_models_list)
    sp = local(models.add_parser("prepare", help="build or convert a base model now, with progress",
                                 description="Materialise a base model (SmolLM2's one-time GGUF conversion "
                                             "takes about 25 s); jobs and chat otherwise do it on first use."))
    sp.add_argument("name", help="base model name, e.g. SmolLM2-135M-Instruct")
    sp.set_defaults(func=cmd_models_prepare)
    sp = local(models.add_parser("add", help="register a local HF directory (safetensors) or a hub id"))
    sp.add_argument("name", help="the model name clients will use")
    sp.add_argument("path", help="local Hugging Face directory, or a hub id when online")
    sp.set_defaults(func=cmd_models_add)
    sp = remote(models.add_parser("export", help="download a fine-tuned model: adapter, merged HF directory or GGUF",
                                  description="Download an ft: or checkpoint model from the server into a directory: "
                                              "its PEFT adapter, a merged Hugging Face directory (transformers, "
                                              "vLLM) or a GGUF file (llama.cpp). See docs/operations.md."))
    sp.add_argument("model", help="the ft: model or checkpoint name")
    sp.add_argument("--format", required=True, choices=["adapter", "merged", "gguf"], help="what to export")
    sp.add_argument("--gguf-type", choices=["f32", "f16", "bf16", "q8_0"],
                    help="with --format gguf: tensor type (default f16; f32 is lossless)")
    sp.add_argument("--out", help="directory to create (default ./<model>-<format>)")
    sp.set_defaults(func=cmd_models_export)

    files = sub.add_parser("files", help="training files").add_subparsers(dest="files_cmd", required=True,
                                                                          metavar="ACTION")
    sp = remote(files.add_parser("upload", help="upload a JSONL file"))
    sp.add_argument("path", help="the file to upload")
    sp.add_argument("--purpose", default="fine-tune", help="file purpose (default fine-tune)")
    sp.set_defaults(func=cmd_files_upload)
    sp = remote(files.add_parser("list", help="list uploaded files"))
    sp.add_argument("--purpose", help="only files with this purpose, e.g. fine-tune")
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_files_list)

    jobs = sub.add_parser("jobs", help="fine-tuning jobs").add_subparsers(dest="jobs_cmd", required=True,
                                                                         metavar="ACTION")
    sp = remote(jobs.add_parser("create", help="create a supervised fine-tuning job"))
    sp.add_argument("training_file", help="file id of the uploaded training file")
    sp.add_argument("--model", default="SmolLM2-135M-Instruct", help="base or ft: model")
    sp.add_argument("--validation-file", help="file id of a validation file")
    sp.add_argument("--suffix", help="suffix for the fine-tuned model name")
    sp.add_argument("--seed", type=int, help="random seed")
    sp.add_argument("--n-epochs", type=int, help="epochs (default auto)")
    sp.add_argument("--batch-size", type=int, help="batch size (default auto)")
    sp.add_argument("--learning-rate-multiplier", type=float, help="LR multiplier (default auto)")
    sp.add_argument("--watch", action="store_true", help="watch the job after creating it")
    sp.set_defaults(func=cmd_jobs_create)
    sp = remote(jobs.add_parser("list", help="list jobs"))
    sp.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_jobs_list)
    sp = remote(jobs.add_parser("get", help="show one job"))
    sp.add_argument("job", help="job id")
    sp.add_argument("--json", action="store_true", help="print the job object as JSON (for scripts)")
    sp.set_defaults(func=cmd_jobs_get)
    sp = remote(jobs.add_parser("report", help="the job's before/after eval table",
                                description="Print the before/after eval comparison of a job that had a validation "
                                            "file or metadata eval=true (base, checkpoints, final model)."))
    sp.add_argument("job", help="job id")
    sp.add_argument("--json", action="store_true", help="print the eval_comparison object as JSON")
    sp.set_defaults(func=cmd_jobs_report)
    sp = remote(jobs.add_parser("watch", help="live progress bar with loss and ETA, then a summary"))
    sp.add_argument("job", help="job id")
    sp.set_defaults(func=cmd_jobs_watch)
    for action in ("cancel", "pause", "resume"):
        sp = remote(jobs.add_parser(action, help=f"{action} a job"))
        sp.add_argument("job", help="job id")
        sp.set_defaults(func=_job_action(action))

    evals = sub.add_parser("evals", help="evals and their runs").add_subparsers(dest="evals_cmd", required=True,
                                                                             metavar="ACTION")
    sp = remote(evals.add_parser("list", help="list evals, newest first"))
    sp.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_evals_list)
    sp = remote(evals.add_parser("runs", help="list an eval's runs, newest first"))
    sp.add_argument("eval_id", help="eval id")
    sp.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_evals_runs)
    sp = remote(evals.add_parser("get", help="show one run: counts, pass rate per criterion, report URL"))
    sp.add_argument("eval_id", help="eval id")
    sp.add_argument("run_id", help="run id")
    sp.add_argument("--json", action="store_true", help="print the run object as JSON (for scripts)")
    sp.set_defaults(func=cmd_evals_get)
    sp = remote(evals.add_parser("watch", help="live progress bar of items graded, then a summary"))
    sp.add_argument("eval_id", help="eval id")
    sp.add_argument("run_id", help="run id")
    sp.set_defaults(func=cmd_evals_watch)
    sp = remote(evals.add_parser("run", help="start a run over an uploaded JSONL file",
                                 description="Start an eval run over an uploaded JSONL file: its items and samples "
                                             "as they are, or, with --model, that model sampled on each item."))
    sp.add_argument("eval_id", help="eval id")
    sp.add_argument("--file", required=True, help="file id of the uploaded JSONL file (e.g. purpose evals)")
    sp.add_argument("--model", help="sample this model (base, ft: or checkpoint) instead of the file's samples")
    sp.add_argument("--input-messages", default="item.messages",
                    help="with --model: the item field holding the messages (default item.messages)")
    sp.add_argument("--name", help="the run's name")
    sp.add_argument("--watch", action="store_true", help="watch the run after creating it")
    sp.set_defaults(func=cmd_evals_run)

    from modelmill.datagen.cli import add_commands  # data synth/label/from-stored, import openai

    add_commands(sub, remote)
    from modelmill import webhooks_cli  # webhooks add/list/delete

    webhooks_cli.add_commands(sub, remote)
    return p


def main(argv: list[str] | None = None) -> int:
    from modelmill.errors import ModelMillError

    args = build_parser().parse_args(argv)
    quiet_third_party_output(verbose=args.verbose)
    try:
        return args.func(args) or 0
    except ModelMillError as e:  # e.g. binding a public address with no API key
        print(f"modelmill: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
