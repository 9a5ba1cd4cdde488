"""`modelmill evals list | runs | get | watch | run`: evals and their runs over the API, with the official SDK."""

from __future__ import annotations

import argparse

from modelmill.commands import client, json_flag, list_flags, print_json, print_list


def add_commands(sub, local, remote) -> None:
    """Add this group's commands to the top-level subparsers (`local` adds --home, `remote` --base-url/--api-key)."""
    evals = sub.add_parser("evals", help="evals and their runs").add_subparsers(dest="evals_cmd", required=True,
                                                                             metavar="ACTION")
    sp = remote(evals.add_parser("list", help="list evals, newest first"))
    list_flags(sp)
    sp.set_defaults(func=cmd_evals_list)
    sp = remote(evals.add_parser("runs", help="list an eval's runs, newest first"))
    sp.add_argument("eval_id", help="eval id")
    list_flags(sp)
    sp.set_defaults(func=cmd_evals_runs)
    sp = remote(evals.add_parser("get", help="show one run: counts, pass rate per criterion, report URL"))
    sp.add_argument("eval_id", help="eval id")
    sp.add_argument("run_id", help="run id")
    json_flag(sp, "the run object as JSON (for scripts)")
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


def cmd_evals_list(args) -> int:
    evals = client(args).evals.list(limit=args.limit, order="desc").data
    return print_list(args, evals, lambda e: f"{e.id}  {e.name:<32} {','.join(c.name for c in e.testing_criteria)}")


def cmd_evals_runs(args) -> int:
    runs = client(args).evals.runs.list(args.eval_id, limit=args.limit, order="desc").data
    return print_list(args, runs, lambda r: f"{r.id}  {r.status:<12} {r.model or '-':<28} "
                                            f"{r.result_counts.passed}/{r.result_counts.total} passed  {r.name}")


def cmd_evals_get(args) -> int:
    run = client(args).evals.runs.retrieve(args.run_id, eval_id=args.eval_id)
    if args.json:
        return print_json(run.to_dict())
    from modelmill.watch import eval_summary

    print(eval_summary(run))
    return 0


def cmd_evals_watch(args) -> int:
    from modelmill.watch import watch_eval_run

    run = watch_eval_run(client(args), args.eval_id, args.run_id)
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
    run = client(args).evals.runs.create(args.eval_id, **kwargs)
    print(f"{run.id}: {run.status}  {run.report_url}")
    if args.watch:
        return cmd_evals_watch(argparse.Namespace(**{**vars(args), "run_id": run.id}))
    return 0
