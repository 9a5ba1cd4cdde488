"""Two threads importing the ML stack for the first time at once (the API's first chat request or
first RFT job while the in-process worker warms up) must all succeed. Unguarded, transformers' lazy initialisation
gave one thread "ImportError: cannot import name 'is_tokenizers_available' from partially
initialized module 'transformers.utils'" in 2 of 3 fresh processes on this machine (and failed CI's
tests/e2e/test_chat_batching.py once; in a results-suite run the warm-up lost to a job create). Each try needs a fresh interpreter: imports happen once."""

from __future__ import annotations

import subprocess
import sys

RACE = """
import importlib
import threading
from modelmill.service.worker.loop import warm_up

errors = []

def run(fn):
    try:
        fn()
    except Exception as e:
        errors.append(repr(e))

def first_chat():  # what the chat route's first request imports (deps.app_sampler)
    from modelmill.ml.sampling import Sampler


def first_rft_job():  # what creating the first RFT job imports (service/jobs/methods.py)
    importlib.import_module("modelmill.ml.rft")


threads = [threading.Thread(target=run, args=(fn,)) for fn in (warm_up, first_chat, first_rft_job)]
for t in threads:
    t.start()
for t in threads:
    t.join()
import modelmill.ml.sampling, trl.trainer.sft_trainer  # both finished, whole
print("errors:", errors)
"""


def test_worker_warm_up_and_first_chat_import_race():
    # The three tries run side by side (each its own fresh interpreter, as before): an import is mostly one
    # busy core, so a second core shortens the test instead of idling.
    procs = [subprocess.Popen([sys.executable, "-c", RACE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        outputs = [proc.communicate(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert stdout.strip().splitlines()[-1] == "errors: []", stdout + stderr[-2000:]
        assert "worker warm-up: importing the training stack failed" not in stderr
