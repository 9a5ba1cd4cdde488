"""`modelmill --verbose`: the third-party output modelmill/quiet.py hides shows again, in the command's
own process and in the processes it starts (which call quiet_third_party_output themselves)."""

from __future__ import annotations

import os
import subprocess
import sys

from modelmill import quiet

CHILD = ("from modelmill.quiet import quiet_third_party_output\nquiet_third_party_output()\n"
         "import warnings\nwarnings.warn('`is_gradient_checkpointing` is deprecated and will be removed', FutureWarning)\n"
         "from transformers.utils import logging\nprint(logging.is_progress_bar_enabled())\n")


def _run(parent_verbose: bool) -> subprocess.CompletedProcess:
    """A child started after the parent (the CLI) called quiet_third_party_output(verbose=...)."""
    parent = ("import subprocess, sys\nfrom modelmill.quiet import quiet_third_party_output\n"
              f"quiet_third_party_output(verbose={parent_verbose})\n"
              f"sys.exit(subprocess.run([sys.executable, '-c', {CHILD!r}]).returncode)\n")
    env = {k: v for k, v in os.environ.items() if k not in (*quiet.QUIET_ENV, "PYTHONWARNINGS")}
    return subprocess.run([sys.executable, "-c", parent], env=env, capture_output=True, text=True, timeout=120)


def test_quiet_by_default_in_the_processes_a_command_starts():
    done = _run(parent_verbose=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and "is_gradient_checkpointing" not in done.stderr, done.stderr


def test_verbose_shows_it_in_the_processes_a_command_starts():
    done = _run(parent_verbose=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True" and "is_gradient_checkpointing" in done.stderr, done.stderr


def test_the_cli_takes_verbose():
    from modelmill.cli import build_parser

    assert build_parser().parse_args(["--verbose", "keys", "list"]).verbose is True
    assert build_parser().parse_args(["keys", "list"]).verbose is False
