"""The `modelmill data ...` and `modelmill import openai` commands (registered from modelmill.cli).

Every command writes its output to a temporary file renamed at the end, prints a progress bar
on a terminal and, at the end, a summary with the teacher's usage on stderr. Bad input is a
clear message and exit code 2, with no output file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from modelmill.errors import InvalidRequestError
from modelmill.settings import ClientSettings


def add_commands(sub, remote) -> None:
    """Add `data` and `import` to the top-level subparsers; `remote` adds --base-url/--api-key."""
    data = sub.add_parser("data", help="make training data: synthetic calls, teacher labels, stored completions"
                          ).add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    sp = data.add_parser("synth", help="chat SFT lines with tool calls from function schemas",
                         description="Generate SFT lines (tools + an assistant tool_calls message) from a JSON list "
                                     "of OpenAI tools. See docs/data.md.")
    sp.add_argument("tools", help="a JSON file: a list of {\"type\": \"function\", \"function\": {...}}")
    sp.add_argument("--out", required=True, help="output JSONL (with --split: OUT.{train,valid,test}.jsonl, "
                                                 "or DIR/{train,valid,test}.jsonl when OUT is not *.jsonl)")
    sp.add_argument("--per-function", type=int, default=20,
                    help="lines per function, and the enumeration budget (default 20)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument("--split", action="store_true", help="write train/valid/test split by argument combination")
    _teacher_args(sp, required=False)
    sp.add_argument("--max-tokens", type=int, default=96, help="cap on each teacher-written request (default 96)")
    sp.add_argument("--concurrency", type=int, default=4, help="teacher requests in flight (default 4)")
    sp.set_defaults(func=cmd_synth)

    sp = data.add_parser("label", help="answer unlabelled prompts with a teacher model (distillation)",
                         description="Each prompt line ({messages, tools?}) is answered by the teacher; the answers "
                                     "become SFT lines. Reruns resend nothing already answered (a local cache).")
    sp.add_argument("prompts", help="JSONL of unlabelled prompts")
    sp.add_argument("--out", required=True, help="output JSONL")
    _teacher_args(sp, required=True)
    sp.add_argument("--grader", help="a grader JSON file (any type of the engine): keep only answers it passes")
    sp.add_argument("--n", type=int, default=1, help="answers per prompt; keep the best by the grader (default 1)")
    sp.add_argument("--concurrency", type=int, default=4, help="prompts in flight (default 4)")
    sp.add_argument("--max-tokens", type=int, help="cap on each answer (default: the teacher's)")
    sp.add_argument("--temperature", type=float, help="sampling temperature (default: the teacher's)")
    sp.add_argument("--min-reward", type=float, default=0.5,
                    help="pass mark for graders without pass/fail (no pass_threshold) (default 0.5)")
    sp.add_argument("--cache", help="the answers cache (default OUT.cache.jsonl); delete it to ask again")
    sp.set_defaults(func=cmd_label)

    sp = remote(data.add_parser("from-stored", help="SFT lines from chat completions stored with store: true",
                                description="List the server's stored chat completions (filtered by metadata and "
                                            "model) and write each as an SFT line."))
    sp.add_argument("--metadata", action="append", default=[], help="k=v filter (repeatable)")
    sp.add_argument("--model", help="only completions of this model")
    sp.add_argument("--out", required=True, help="output JSONL")
    sp.set_defaults(func=cmd_from_stored)

    imp = sub.add_parser("import", help="bring fine-tuning jobs and files over from another provider"
                         ).add_subparsers(dest="import_cmd", required=True, metavar="SOURCE")
    sp = remote(imp.add_parser("openai", help="recreate an OpenAI-compatible account's jobs here, paused",
                               description="Read the source's fine-tuning jobs and the files it lets you download, "
                                           "recreate them on this server (--base-url) paused, base models mapped by "
                                           "--model-map, and report what could not be carried over."))
    sp.add_argument("--source-base-url", default=None, help="source API (default OpenAI's)")
    sp.add_argument("--source-api-key", default=ClientSettings.from_env().openai_api_key,
                    help="source API key (default $OPENAI_API_KEY)")
    sp.add_argument("--model-map", action="append", required=True,
                    help="FROM=TO[,FROM=TO...]; FROM may be a glob, e.g. 'gpt-4o-mini*=SmolLM2-135M-Instruct'")
    sp.add_argument("--dry-run", action="store_true", help="only plan: upload and create nothing")
    sp.set_defaults(func=cmd_import_openai)


def _teacher_args(sp, required: bool) -> None:
    sp.add_argument("--teacher", required=required, help="the teacher model (e.g. ft:gpt-4o-mini:acme::abc)")
    sp.add_argument("--teacher-base-url", help="the teacher's OpenAI-compatible API (default OpenAI's)")
    sp.add_argument("--teacher-api-key", default=ClientSettings.from_env().openai_api_key,
                    help="the teacher's API key (default $OPENAI_API_KEY)")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds per teacher request (default 60)")
    sp.add_argument("--max-attempts", type=int, default=5,
                    help="tries per teacher request, retried with backoff (default 5)")


def _teacher(args, cache_path: Path | None):
    from modelmill.settings import Settings

    from .teacher import ResponseCache, Teacher, make_client

    client = make_client(args.teacher_base_url, args.teacher_api_key, args.timeout)
    return Teacher(client, args.teacher, cache=ResponseCache(cache_path), max_attempts=args.max_attempts,
                   backoff=Settings.from_env().teacher_backoff)


def _progress() -> bool:
    return sys.stderr.isatty()


def _load_json(path: str, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidRequestError(f"{what} {path}: {e.strerror}", param=what) from None
    except ValueError as e:
        raise InvalidRequestError(f"{what} {path}: not valid JSON ({e})", param=what) from None


def cmd_synth(args) -> int:
    from .output import split_paths, write_lines
    from .schema import load_tools
    from .synth import SynthConfig, split, synthesize
    from .teacher import TeacherError

    if args.per_function < 1:
        raise InvalidRequestError("--per-function must be at least 1", param="per_function")
    tools = load_tools(_load_json(args.tools, "tools file"))
    out = Path(args.out)
    teacher = _teacher(args, out.with_name(out.name + ".cache.jsonl")) if args.teacher else None
    config = SynthConfig(per_function=args.per_function, seed=args.seed, teacher_max_tokens=args.max_tokens,
                         concurrency=max(1, args.concurrency))
    try:
        report = synthesize(tools, config, teacher, progress=_progress())
    except TeacherError as e:
        print(f"modelmill data synth: not written: {e}\n{teacher.usage.summary()}", file=sys.stderr)
        return 1
    if args.split:
        parts = split(report, config)
        for name, path in split_paths(out).items():
            write_lines(path, parts[name])
            print(f"{path}: {len(parts[name])} lines", file=sys.stderr)
    else:
        write_lines(out, report.lines)
        print(f"{out}: {len(report.lines)} lines", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    if teacher:
        print(teacher.usage.summary(), file=sys.stderr)
    return 0


def cmd_label(args) -> int:
    from .label import LabelConfig, label, read_prompts
    from .output import write_lines

    if args.n < 1 or args.concurrency < 1:
        raise InvalidRequestError("--n and --concurrency must be at least 1", param="n")
    grader = _load_json(args.grader, "grader file") if args.grader else None
    prompts = read_prompts(Path(args.prompts))
    out = Path(args.out)
    teacher = _teacher(args, Path(args.cache) if args.cache else out.with_name(out.name + ".cache.jsonl"))
    config = LabelConfig(n=args.n, concurrency=args.concurrency, max_tokens=args.max_tokens,
                         temperature=args.temperature, min_reward=args.min_reward)
    try:
        result = label(prompts, teacher, config, grader=grader, progress=_progress())
    finally:
        print(teacher.usage.summary(), file=sys.stderr)
    print(result.summary(len(prompts)), file=sys.stderr)
    if result.failed:
        print(f"modelmill data label: not written: the teacher failed on {len(result.failed)} prompt(s). Answered "
              f"ones are cached in {teacher.cache.path}: run the same command again to retry only the rest.",
              file=sys.stderr)
        return 1
    if not result.lines:
        print("modelmill data label: not written: no answer was kept", file=sys.stderr)
        return 1
    write_lines(out, result.lines)
    print(f"{out}: {len(result.lines)} lines", file=sys.stderr)
    return 0


def cmd_from_stored(args) -> int:
    from openai import OpenAI

    from .output import write_lines
    from .stored import stored_lines

    metadata = {}
    for kv in args.metadata:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            raise InvalidRequestError(f"--metadata: {kv!r} is not k=v", param="metadata")
        metadata[k] = v
    client = OpenAI(base_url=args.base_url, api_key=args.api_key or "local")
    lines, skipped = stored_lines(client, metadata=metadata, model=args.model, progress=_progress())
    for why in skipped:
        print(f"skipped {why}", file=sys.stderr)
    if not lines:
        print("modelmill data from-stored: not written: no stored completion matched", file=sys.stderr)
        return 1
    write_lines(Path(args.out), lines)
    print(f"{args.out}: {len(lines)} lines ({len(skipped)} stored completions skipped)", file=sys.stderr)
    return 0


def cmd_import_openai(args) -> int:
    from openai import OpenAI

    from .importer import import_jobs, parse_model_map

    pairs = parse_model_map(args.model_map)
    source = OpenAI(base_url=args.source_base_url, api_key=args.source_api_key or "local", max_retries=2)
    target = OpenAI(base_url=args.base_url, api_key=args.api_key or "local", max_retries=2)
    plan = import_jobs(source, target, pairs, dry_run=args.dry_run,
                       say=lambda m: print(m, file=sys.stderr))
    print(plan.report())
    return 0
