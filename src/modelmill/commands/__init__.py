"""The `modelmill` command groups, one module each (cli.py builds the parser from them and runs one):
server.py (serve, worker, demo, keys, projects), models.py (the local base-model registry and export),
jobs.py (files and fine-tuning jobs), evals.py (evals and their runs). Each has `add_commands(sub, local,
remote)`, where `local` adds --home and `remote` adds --base-url / --api-key to a subparser.
Plus the helpers they share, below."""

from __future__ import annotations

import json

from modelmill.settings import Settings


def settings_for(args) -> Settings:
    # Read once here; code that needs the home gets it from these Settings (a `serve --worker-process`
    # child through settings.child_env, the graders' WordNet cache through create_app and run_worker).
    return Settings.from_env(home=getattr(args, "home", None), host=getattr(args, "host", None),
                             port=getattr(args, "port", None))


def client(args):
    from openai import OpenAI

    return OpenAI(base_url=args.base_url, api_key=args.api_key or "local")


def print_json(obj) -> int:
    """--json output for scripts: the API's own objects, one JSON document on stdout."""
    print(json.dumps(obj, indent=2))
    return 0


def print_list(args, items, row) -> int:
    """A list command's output: with --json the API objects as one JSON list, else row(item), one line each."""
    if args.json:
        return print_json([item.to_dict() for item in items])
    for item in items:
        print(row(item))
    return 0


def json_flag(sp, what: str = "JSON (for scripts)") -> None:
    sp.add_argument("--json", action="store_true", help=f"print {what}")


def list_flags(sp) -> None:
    """--limit and --json, as every API list command takes them."""
    sp.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    json_flag(sp)
