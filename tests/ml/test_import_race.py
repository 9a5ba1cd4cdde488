"""Two threads importing the ML stack for the first time at once (the API's first chat request while
the in-process worker warms up) must both succeed. Unguarded, transformers' lazy initialisation
gave one thread "ImportError: cannot import name 'is_tokenizers_available' from partially
initialized module 'transformers.utils'" in 2 of 3 fresh processes on this machine (and failed CI's
tests/e2e/test_chat_batching.py once). Each try needs a fresh interpreter: imports happen once."""

from __future__ import annotations

import subprocess
import sys

RACE = """
import threading
from modelmill.ml import import_ml_stack
from modelmill.service.worker import warm_up

errors = []

def run(fn):
    try:
        fn()
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=run, args=(warm_up,)),
           threading.Thread(target=run, args=(lambda: import_ml_stack(("modelmill.ml.sampling",)),))]
for t in threads:
    t.start()
for t in threads:
    t.join()
import modelmill.ml.sampling, trl.trainer.sft_trainer  # both finished, whole
print("errors:", errors)
"""


def test_worker_warm_up_and_first_chat_import_race():
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == "errors: []", proc.stdout + proc.stderr[-2000:]
        assert "worker warm-up: importing the training stack failed" not in proc.stderr
