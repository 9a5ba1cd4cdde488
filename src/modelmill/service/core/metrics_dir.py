"""prometheus_client's multiprocess mode for `modelmill serve --worker-process`.

The worker child trains, grades and delivers webhooks in its own process, so its in-process metrics
(service/core/metrics.py) would never reach the API's /metrics. In multiprocess mode every process writes
its metrics to files in PROMETHEUS_MULTIPROC_DIR and /metrics adds them up. prometheus_client reads
that variable when it is first imported, so this runs before anything imports it (cli.cmd_serve),
and the child inherits it with the environment. Kept apart from service/core/metrics.py for that reason:
this module must not import prometheus_client.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_for_this_server(home: Path) -> Path | None:
    """Point PROMETHEUS_MULTIPROC_DIR at a fresh MODELMILL_HOME/run/prometheus-<pid> (unless the operator
    set it: then theirs is used as is) and remove the directories of servers that are gone (a
    SIGKILLed one leaves its own). Returns the directory made, or None."""
    if os.environ.get(ENV):
        return None
    run = Path(home) / "run"
    run.mkdir(parents=True, exist_ok=True)
    for old in run.glob("prometheus-*"):
        pid = old.name.removeprefix("prometheus-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    mine = run / f"prometheus-{os.getpid()}"
    shutil.rmtree(mine, ignore_errors=True)  # a recycled pid's leftovers
    mine.mkdir()
    os.environ[ENV] = str(mine)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
