"""`modelmill models list | prepare | add | export`: the local base-model registry, and downloading a
fine-tuned model from a server."""

from __future__ import annotations

import sys
from pathlib import Path

from modelmill.commands import json_flag, print_json, settings_for


def add_commands(sub, local, remote) -> None:
    """Add this group's commands to the top-level subparsers (`local` adds --home, `remote` --base-url/--api-key)."""
    models = sub.add_parser("models", help="the base-model registry").add_subparsers(
        dest="models_cmd", required=True, metavar="ACTION")
    sp = local(models.add_parser("list", help="list base models"))
    json_flag(sp)
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


def cmd_models_list(args) -> int:
    from modelmill.ml.models import list_models

    found = list_models(settings_for(args).home)
    if args.json:
        return print_json([{"id": m.name, "created": m.created, "source": m.source} for m in found])
    for m in found:
        print(f"{m.name:<40} {m.source}")
    return 0


def cmd_models_prepare(args) -> int:
    from modelmill.ml.models import ensure_base
    from modelmill.progress import step_progress

    with step_progress(f"preparing {args.name}") as say:
        path = ensure_base(settings_for(args).ensure_dirs().home, args.name, progress=say)
    print(path)
    return 0


def cmd_models_add(args) -> int:
    from modelmill.ml.models import add_model

    from modelmill.progress import step_progress

    with step_progress(f"adding {args.name}") as say:
        info = add_model(settings_for(args).ensure_dirs().home, args.name, args.path, progress=say)
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
