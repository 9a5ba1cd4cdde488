"""Data-parallel training over several processes of one machine (one per GPU, or gloo ranks on CPU).

    result = distributed.train(method.run, config, reporter, processes=2)

With processes == 1 this is just `method.run(config, reporter)` in this process (the default on a
CPU and on a one-GPU machine). With more, the caller's process stays the one that holds the job's
lease and talks to the store; the ranks are children started by torch's elastic launcher
(`torch.distributed.run`, what `accelerate launch --multi_gpu` runs underneath):

    caller (worker thread, real Reporter)  <- JSON lines over a Unix socket ->  rank 0
                                                                                 | broadcast
                                                                                 v
                                                                              ranks 1..N-1

- **Rank 0 speaks.** Only rank 0 forwards events, metrics and checkpoints to the caller, and only
  rank 0 publishes checkpoints and the final adapter (trainer_common and trainer_hooks check `is_world_process_zero`).
- **Stop decisions are broadcast.** `should_stop()` is called on every rank at the same points of a
  step (trainer_hooks.ReporterHooks); rank 0 asks the caller, then `broadcast_object_list` gives every
  rank the same answer, so cancel and pause stop all ranks after the same step and no rank waits in a
  collective that the others left.
- **No hangs, no orphans.** If a rank dies, the elastic agent stops the others and exits non-zero; the
  caller then raises TrainingError (code `rank_failed`). If the caller dies, PR_SET_PDEATHSIG kills the
  agent and the ranks, and rank 0 treats a closed socket as "cancel", so nothing more is published.
  Retries stay with the caller's lease (a re-claimed job resumes from its newest checkpoint).

Why torch.distributed.run rather than `accelerate launch --cpu --num_processes N`: accelerate 1.x
runs a CPU launch as ONE process unless Intel MPI (mpirun) is installed, so the CPU test of this
path would not be multi-process at all. Inside each rank, transformers' Trainer still sets up the
process group through accelerate (gloo on CPU, NCCL on CUDA) from the env torchrun provides.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modelmill.errors import TrainingError
from modelmill.ml.report import Reporter
from modelmill.ml.types import TrainResult

# Seconds the caller waits for rank 0 to connect once the launcher runs (imports + model load + data).
CONNECT_TIMEOUT_S = 600.0
# How often torch's elastic agent checks its ranks: a dead rank stops the others within about this.
MONITOR_INTERVAL_S = 1
# Set in each rank's environment: "1" asks run_config.fsdp_args to shard the model with FSDP instead of DDP.
FSDP_ENV = "MODELMILL_FSDP"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessPlan:
    """How many training processes a job uses, and why (the job's events quote `why`)."""

    processes: int  # ranks; 1 = train in the caller's process
    fsdp: bool  # shard the model (FSDP) rather than replicate it (DDP); only with processes > 1
    why: str


def plan_processes(requested: str | int, batch_size: int, *, supports_ranks: bool = True,
                   fits_one_device: bool = True) -> ProcessPlan:
    """The rule (docs/models.md "Multi-GPU jobs"):

    - requested "auto": one rank per CUDA device when there are several, else 1 (CPU: 1);
      an int N: N ranks (on a machine without CUDA they are gloo CPU ranks: what the tests use).
    - The global batch stays `batch_size` examples per optimizer step, split evenly over the ranks,
      so a multi-process job takes the same steps (and writes the same events) as a one-process job:
      N is lowered to the largest divisor of batch_size that is <= N.
    - FSDP when the model does not fit one device (`fits_one_device`, from the memory estimate), else DDP.
    - Methods whose training needs objects of the caller's process (RFT: its graders) use 1.
    """
    import torch

    if requested == "auto":
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        wanted, source = (devices, f"{devices} CUDA devices") if devices > 1 else (1, "one device")
    else:
        wanted, source = int(requested), f"MODELMILL_TRAIN_PROCESSES={requested}"
    if wanted <= 1:
        return ProcessPlan(1, False, f"one process ({source})")
    if not supports_ranks:
        return ProcessPlan(1, False, f"one process: this method trains in the worker's process ({source} ignored)")
    n = max(d for d in range(1, wanted + 1) if batch_size % d == 0)
    if n == 1:
        return ProcessPlan(1, False, f"one process: batch size {batch_size} does not split over {wanted} ranks")
    # accelerate shards (FSDP) only CUDA ranks; CPU ranks are always replicated (DDP over gloo).
    fsdp = not fits_one_device and torch.cuda.is_available()
    kind = "FSDP" if fsdp else ("DDP (FSDP needs CUDA ranks)" if not fits_one_device else "DDP")
    backend = "NCCL" if torch.cuda.is_available() else "gloo, CPU"
    split = f"{batch_size // n} examples per rank" + (f" (lowered from {wanted} ranks so batch size {batch_size} "
                                                       f"splits evenly)" if n != wanted else "")
    return ProcessPlan(n, fsdp, f"{kind} over {n} processes ({backend}; {source}); {split}")


def train(train_fn: Callable, config, reporter: Reporter, plan: ProcessPlan | None = None) -> TrainResult:
    """Run `train_fn(config, reporter)`: here when plan is None or has one process, else over ranks."""
    if plan is None or plan.processes <= 1:
        return train_fn(config, reporter)
    return _Launch(train_fn, config, reporter, plan).run()


# ---------------------------------------------------------------- the caller's side


class _Launch:
    """One multi-process run: start the ranks, serve rank 0's reporter calls, collect the result."""

    def __init__(self, train_fn: Callable, config, reporter: Reporter, plan: ProcessPlan):
        self.train_fn, self.config, self.reporter, self.plan = train_fn, config, reporter, plan
        self.dir = Path(tempfile.mkdtemp(prefix="mm-ranks-"))  # 0700: only this user can reach the socket

    def run(self) -> TrainResult:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
                server.bind(str(self.dir / "s"))
                server.listen(1)
                server.settimeout(0.5)
                proc = self._start()
                try:
                    return self._serve(server, proc)
                finally:
                    _stop(proc)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self) -> subprocess.Popen:
        spec = self.dir / "spec.pkl"
        spec.write_bytes(pickle.dumps({"train_fn": self.train_fn, "config": self.config,
                                       "socket": str(self.dir / "s"), "fsdp": self.plan.fsdp,
                                       "rank_dir": str(self.dir)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={self.plan.processes}", f"--monitor-interval={MONITOR_INTERVAL_S}",
               "--max-restarts=0", "-m", "modelmill.ml.distributed", str(spec)]
        import torch

        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // self.plan.processes)),
                   TORCHELASTIC_ERROR_FILE=str(self.dir / "error.json"))
        if not torch.cuda.is_available():  # what `accelerate launch --cpu` sets: the Trainer then runs gloo DDP
            env["ACCELERATE_USE_CPU"] = "true"
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)

    def _serve(self, server: socket.socket, proc: subprocess.Popen) -> TrainResult:
        conn = self._accept(server, proc)
        result = None
        with conn, conn.makefile("rw", encoding="utf-8") as stream:
            for line in stream:
                msg = json.loads(line)
                kind = msg["kind"]
                if kind == "should_stop":
                    stream.write(json.dumps({"stop": self.reporter.should_stop()}) + "\n")
                    stream.flush()
                elif kind == "event":
                    self.reporter.on_event(msg["level"], msg["message"], msg.get("data"))
                elif kind == "step":
                    self.reporter.on_step(msg["step"], msg["total_steps"], msg["metrics"])
                elif kind == "checkpoint":
                    self.reporter.on_checkpoint(msg["step"], Path(msg["path"]), msg["metrics"])
                elif kind == "error":
                    raise TrainingError(msg["message"], code=msg.get("code") or "training_error")
                elif kind == "result":
                    r = msg["result"]
                    result = TrainResult(r["status"], Path(r["adapter_dir"]) if r["adapter_dir"] else None,
                                         r["trained_tokens"], r["steps"])
        code = proc.wait()
        if result is None or code != 0:
            raise TrainingError(f"a training process exited with code {code} before the run finished"
                                f"{self._rank_error()}", code="rank_failed")
        return result

    def _accept(self, server: socket.socket, proc: subprocess.Popen) -> socket.socket:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
                conn.settimeout(None)
                return conn
            except socket.timeout:
                if proc.poll() is not None:
                    raise TrainingError(f"the training processes exited with code {proc.returncode} before "
                                        f"starting{self._rank_error()}", code="rank_failed") from None
        raise TrainingError(f"rank 0 did not start within {CONNECT_TIMEOUT_S:.0f} s", code="rank_failed")

    def _rank_error(self) -> str:
        """The failing rank's error, as torchelastic's error file recorded it (if it did)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            err = json.loads((self.dir / "error.json").read_text())["message"]
            text = err.get("message", "") if isinstance(err, dict) else str(err)
            return f" ({text.strip().splitlines()[-1][:300]})" if text.strip() else ""
        return ""


def _stop(proc: subprocess.Popen) -> None:
    """The launcher and its ranks (one session) are gone when a run ends, whatever happened."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _die_with_parent() -> None:
    """In a child, before exec: SIGKILL when the process that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# ---------------------------------------------------------------- a rank's side


class RankReporter:
    """The Reporter each rank gives the training function. Rank 0 forwards to the caller; every
    rank takes part in the stop broadcast (so every rank must call should_stop at the same points)."""

    def __init__(self, rank: int, world: int, sock_path: str | None):
        self.rank, self.world = rank, world
        self._stream = None
        self._lock = threading.Lock()
        if rank == 0:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(sock_path)
            self._stream = sock.makefile("rw", encoding="utf-8")

    def on_event(self, level: str, message: str, data: dict | None = None) -> None:
        self._send({"kind": "event", "level": level, "message": message, "data": data})

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self._send({"kind": "step", "step": step, "total_steps": total_steps, "metrics": metrics})

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self._send({"kind": "checkpoint", "step": step, "path": str(path), "metrics": metrics})

    def should_stop(self) -> str | None:
        answer = None
        if self.rank == 0:
            try:
                self._send({"kind": "should_stop"})
                with self._lock:
                    answer = json.loads(self._stream.readline())["stop"]
            except (OSError, ValueError, KeyError, TypeError):  # the caller is gone: publish nothing more
                answer = "cancel"
        if self.world > 1:
            import torch.distributed as dist

            box = [answer]
            dist.broadcast_object_list(box, src=0)
            answer = box[0]
        return answer

    def finish(self, result: TrainResult | None, error: BaseException | None) -> None:
        if error is not None and _peer_lost(error):
            self._send({"kind": "error", "code": "rank_failed", "message": "another training process of this "
                        "job stopped mid-step, so the run could not go on (rank 0 saw: "
                        f"{_innermost(error)[:160]})"})
        elif error is not None:
            self._send({"kind": "error", "message": f"{type(error).__name__}: {error}",
                        "code": getattr(error, "code", None)})
        elif result is not None:
            self._send({"kind": "result", "result": {
                "status": result.status, "adapter_dir": str(result.adapter_dir) if result.adapter_dir else None,
                "trained_tokens": int(result.trained_tokens), "steps": int(result.steps)}})

    def _send(self, msg: dict) -> None:
        if self._stream is None:
            return
        with self._lock:
            self._stream.write(json.dumps(msg) + "\n")
            self._stream.flush()


def _innermost(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error).strip()


def _peer_lost(error: BaseException) -> bool:
    """True when `error` (or one it chains) is a collective failing because another rank went away."""
    import torch.distributed as dist

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, dist.DistError) or any(t in str(seen) for t in ("gloo", "NCCL", "Connection reset")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _rank_main(spec_path: str) -> int:
    _die_with_parent()  # the elastic agent died (its own parent killed it): stop training now
    spec = pickle.loads(Path(spec_path).read_bytes())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # torch.distributed.run sets these
    (Path(spec["rank_dir"]) / f"rank-{rank}.pid").write_text(str(os.getpid()))
    if spec["fsdp"]:
        os.environ[FSDP_ENV] = "1"
    reporter = RankReporter(rank, world, spec["socket"])
    try:
        result = spec["train_fn"](spec["config"], reporter)
    except BaseException as e:
        reporter.finish(None, e)
        raise
    if rank == 0:
        reporter.finish(result, None)
    return 0


def world_size() -> int:
    """Ranks of the current run (1 outside a multi-process run): torch.distributed.run's WORLD_SIZE."""
    return int(os.environ.get("WORLD_SIZE", "1"))


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1]))
