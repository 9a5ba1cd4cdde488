"""`modelmill files ...` and `modelmill jobs ...`: training files and fine-tuning jobs over the API, with the
official SDK."""

from __future__ import annotations

import argparse
import json
import sys

from modelmill.commands import client, json_flag, list_flags, print_json, print_list


def add_commands(sub, local, remote) -> None:
    """Add this group's commands to the top-level subparsers (`local` adds --home, `remote` --base-url/--api-key)."""
    files = sub.add_parser("files", help="training files").add_subparsers(dest="files_cmd", required=True,
                                                                          metavar="ACTION")
    sp = remote(files.add_parser("upload", help="upload a JSONL file"))
    sp.add_argument("path", help="the file to upload")
    sp.add_argument("--purpose", default="fine-tune", help="file purpose (default fine-tune)")
    sp.set_defaults(func=cmd_files_upload)
    sp = remote(files.add_parser("list", help="list uploaded files"))
    sp.add_argument("--purpose", help="only files with this purpose, e.g. fine-tune")
    json_flag(sp)
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
    list_flags(sp)
    sp.set_defaults(func=cmd_jobs_list)
    sp = remote(jobs.add_parser("get", help="show one job"))
    sp.add_argument("job", help="job id")
    json_flag(sp, "the job object as JSON (for scripts)")
    sp.set_defaults(func=cmd_jobs_get)
    sp = remote(jobs.add_parser("report", help="the job's before/after eval table",
                                description="Print the before/after eval comparison of a job that had a validation "
                                            "file or metadata eval=true (base, checkpoints, final model)."))
    sp.add_argument("job", help="job id")
    json_flag(sp, "the eval_comparison object as JSON")
    sp.set_defaults(func=cmd_jobs_report)
    sp = remote(jobs.add_parser("watch", help="live progress bar with loss and ETA, then a summary"))
    sp.add_argument("job", help="job id")
    sp.set_defaults(func=cmd_jobs_watch)
    for action in ("cancel", "pause", "resume"):
        sp = remote(jobs.add_parser(action, help=f"{action} a job"))
        sp.add_argument("job", help="job id")
        sp.set_defaults(func=_job_action(action))


def cmd_files_upload(args) -> int:
    from modelmill.progress import upload_progress

    with upload_progress(args.path) as f:  # a bytes progress bar on a terminal
        obj = client(args).files.create(file=f, purpose=args.purpose)
    print(json.dumps(obj.to_dict(), indent=2))
    return 0


def cmd_files_list(args) -> int:
    files = client(args).files.list(**({"purpose": args.purpose} if args.purpose else {})).data
    return print_list(args, files, lambda f: f"{f.id}  {f.purpose:<18} {f.bytes:>12}  {f.filename}")


def cmd_jobs_create(args) -> int:
    hp = {k: v for k, v in (("n_epochs", args.n_epochs), ("batch_size", args.batch_size),
                            ("learning_rate_multiplier", args.learning_rate_multiplier)) if v is not None}
    kwargs = dict(training_file=args.training_file, model=args.model,
                  method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    for name in ("validation_file", "suffix", "seed"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    job = client(args).fine_tuning.jobs.create(**kwargs)
    print(json.dumps(job.to_dict(), indent=2))
    if args.watch:
        return cmd_jobs_watch(argparse.Namespace(**{**vars(args), "job": job.id}))
    return 0


def cmd_jobs_list(args) -> int:
    jobs = client(args).fine_tuning.jobs.list(limit=args.limit).data
    return print_list(args, jobs,
                      lambda job: f"{job.id}  {job.status:<16} {job.model:<28} {job.fine_tuned_model or ''}")


def cmd_jobs_get(args) -> int:
    job = client(args).fine_tuning.jobs.retrieve(args.job)
    if args.json:
        return print_json(job.to_dict())
    from modelmill.watch import summary

    print(summary(job))
    return 0


def cmd_jobs_report(args) -> int:
    """The job's before/after eval table: the newest event whose data has "eval_comparison"."""
    from modelmill.reports import comparison_table

    api = client(args)
    found = next((e.data["eval_comparison"] for e in api.fine_tuning.jobs.list_events(args.job, limit=100)
                  if isinstance(e.data, dict) and "eval_comparison" in e.data), None)
    if found is None:
        print(f"modelmill: job {args.job} has no before/after eval report (yet): give the job a validation file"
              " or metadata eval=true", file=sys.stderr)
        return 1
    server = args.base_url.rstrip("/").removesuffix("/v1")  # report pages live outside /v1
    for row in found["rows"]:
        row["report_url"] = f"{server}/evals/{row['eval_id']}/runs/{row['run_id']}"
    if args.json:
        return print_json(found)
    print(comparison_table(found["criteria"], found["rows"]))
    for row in found["rows"]:
        print(f"{row['label']}: {row['report_url']}")
    return 0


def cmd_jobs_watch(args) -> int:
    from modelmill.watch import watch_job

    job = watch_job(client(args), args.job)
    return 0 if job.status in ("succeeded", "paused") else 1


def _job_action(action: str):
    def run(args) -> int:
        job = getattr(client(args).fine_tuning.jobs, action)(args.job)
        print(f"{job.id}: {job.status}")
        return 0
    run.__doc__ = f"{action} a job"
    return run
