"""The `modelmill` command: a thin shell over the service (serve, worker, keys) and the
public API (files, jobs, evals), plus the local model registry (models)."""

from __future__ import annotations

import argparse
import sys

from modelmill.quiet import quiet_third_party_output  # third-party bars and warnings, unless --verbose
from modelmill.settings import ClientSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelmill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true",
                   help="also show the ML libraries' progress bars and warnings (hidden by default)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def local(sp):
        sp.add_argument("--home", help="data directory (default $MODELMILL_HOME or ~/.modelmill)")
        return sp

    client = ClientSettings.from_env()

    def remote(sp):
        sp.add_argument("--base-url", default=client.base_url,
                        help=f"API base URL (default $MODELMILL_BASE_URL or {ClientSettings.base_url})")
        sp.add_argument("--api-key", default=client.api_key, help="API key (default $MODELMILL_API_KEY)")
        return sp

    from modelmill.commands import evals, jobs, models, server

    for group in (server, models, jobs, evals):  # one module per command group
        group.add_commands(sub, local, remote)
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
