"""`modelmill serve | worker | demo | keys | projects`: run the service, and manage its API keys and
projects in the local store (these read the data directory, --home, directly: no server needed)."""

from __future__ import annotations

import sys
import time

from modelmill.commands import json_flag, print_json, settings_for


def add_commands(sub, local, remote) -> None:
    """Add this group's commands to the top-level subparsers (`local` adds --home, `remote` --base-url/--api-key)."""
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
    json_flag(sp)
    sp.set_defaults(func=cmd_keys_list)
    sp = local(keys.add_parser("revoke", help="revoke an API key (and its dashboard sessions) at once"))
    sp.add_argument("key_id", help="the key's id, from `modelmill keys list` (key_...)")
    sp.set_defaults(func=cmd_keys_revoke)

    projects = sub.add_parser("projects", help="projects (what API keys are scoped to)").add_subparsers(
        dest="projects_cmd", required=True, metavar="ACTION")
    sp = local(projects.add_parser("list", help="list projects with their ids (to share models between them)"))
    json_flag(sp)
    sp.set_defaults(func=cmd_projects_list)


def cmd_serve(args) -> int:
    settings = settings_for(args).with_(run_worker=not args.no_worker)
    if args.worker_process and settings.run_worker:  # before prometheus_client is imported (service/core/metrics_dir.py)
        from modelmill.service.core import metrics_dir

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
    from modelmill.service.worker.loop import run_worker

    run_worker(settings_for(args))
    return 0


def cmd_keys_create(args) -> int:
    from modelmill.service.store import open_store
    from modelmill.service.store.records import DEFAULT_PROJECT_ID

    store = open_store(settings_for(args).ensure_dirs())
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

    store = open_store(settings_for(args).ensure_dirs())
    projects = {p.id: p.name for p in store.projects.list()}
    rows = [{"id": k.id, "name": k.name, "prefix": k.prefix, "project": projects.get(k.project_id, k.project_id),
             "project_id": k.project_id, "created": int(k.created_at),
             "last_used": int(k.last_used_at) if k.last_used_at else None} for k in store.keys.list()]
    if args.json:
        return print_json(rows)
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

    store = open_store(settings_for(args).ensure_dirs())
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

    store = open_store(settings_for(args).ensure_dirs())
    keys: dict[str, int] = {}
    for k in store.keys.list():
        keys[k.project_id] = keys.get(k.project_id, 0) + 1
    rows = [{"id": p.id, "name": p.name, "created": int(p.created_at), "keys": keys.get(p.id, 0)}
            for p in store.projects.list()]
    if args.json:
        return print_json(rows)
    for r in rows:
        print(f"{r['id']:<30} {r['name']:<24} {r['keys']} key(s)")
    return 0


def cmd_demo(args) -> int:
    from modelmill.demo import run_demo

    run_demo(model=args.model, n_epochs=args.n_epochs, base_url=args.base_url_opt)
    return 0
