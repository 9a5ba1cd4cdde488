"""Server memory while the official SDK sends a large file through the Uploads API (issue 20.4).

    python bench/bench_uploads.py [--size-mb 200] [--part-mb 64] [--json bench/out/uploads.json]
    python bench/bench_uploads.py --quick        # 24 MB in 8 MB parts: a smoke run

Starts `modelmill serve --no-worker` on a temp MODELMILL_HOME, warms it up with a small upload, then
takes the server's resident memory (VmRSS) as the baseline and resets its high-water mark
(/proc/PID/clear_refs, "5"). The SDK's `client.uploads.upload_file_chunked(..., part_size=...,
md5=...)` then sends the file: parts streamed to disk, completion assembling them in order and
checking the md5. The peak is the larger of the kernel's high-water mark (VmHWM) afterwards and a
10 ms sampler's maximum, so a reset the kernel refuses still leaves a measurement.

Target: peak RSS stays under 300 MB above the baseline (the server never holds a part, let alone
the file, in memory). Prints one JSON document; --json also writes it (bench/README.md's contract).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

TARGET_MB = 300.0
MB = 1024 * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Sampler(threading.Thread):
    """The largest VmRSS of `pid` seen every `interval_s` until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak_kb = pid, interval_s, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            self._halt.wait(self.interval_s)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak_kb


def write_file(path: Path, size: int) -> str:
    """`size` bytes that do not compress or repeat in a way a filesystem could share; returns the md5."""
    md5, block = hashlib.md5(), os.urandom(MB)
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            chunk = (i.to_bytes(8, "little") + block)[: min(MB, size - written)]
            f.write(chunk)
            md5.update(chunk)
            written, i = written + len(chunk), i + 1
    return md5.hexdigest()


def measure(size: int, part_size: int, work: Path) -> dict:
    from openai import OpenAI

    from modelmill.local_server import running_server

    data = work / "big.bin"
    md5 = write_file(data, size)
    home = work / "home"
    home.mkdir()
    with open(work / "server.log", "wb") as log, \
            running_server(home, worker=False, log=log, log_level="warning") as server:
        client = OpenAI(base_url=server.base_url, api_key="bench", max_retries=0, timeout=600)
        pid = server.proc.pid
        warm = client.uploads.upload_file_chunked(file=b"warm-up\n", filename="warm.jsonl", bytes=8,
                                                  mime_type="text/jsonl", purpose="fine-tune")
        assert warm.status == "completed", warm
        time.sleep(0.5)
        baseline_kb = _status_kb(pid, "VmRSS")
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        sampler = Sampler(pid)
        sampler.start()
        t0 = time.perf_counter()
        upload = client.uploads.upload_file_chunked(file=data, mime_type="application/octet-stream",
                                                    purpose="fine-tune", part_size=part_size, md5=md5)
        wall_s = time.perf_counter() - t0
        sampled_kb = sampler.stop()
        hwm_kb = _status_kb(pid, "VmHWM") if reset else 0
        assert upload.status == "completed" and upload.file is not None and upload.file.bytes == size, upload
    peak_kb = max(sampled_kb, hwm_kb)
    return {"size_mb": size / MB, "part_mb": part_size / MB, "parts": -(-size // part_size),
            "baseline_rss_mb": baseline_kb / 1024, "peak_rss_mb": peak_kb / 1024,
            "peak_above_baseline_mb": (peak_kb - baseline_kb) / 1024, "hwm_reset": reset,
            "sampled_peak_mb": sampled_kb / 1024, "wall_s": wall_s, "mb_per_s": size / MB / wall_s}


def document(m: dict) -> dict:
    above = m["peak_above_baseline_mb"]
    row = {"what": f"API server peak RSS above its idle baseline while the SDK uploads {m['size_mb']:.0f} MB "
                   f"in {m['part_mb']:.0f} MB parts (upload_file_chunked, md5 checked)",
           "baseline": "the file's size (what holding it whole would take)", "unit": "MB",
           "baseline_median": m["size_mb"], "modelmill_median": above,
           "baseline_spread": [m["size_mb"], m["size_mb"]], "modelmill_spread": [above, above], "repeats": 1,
           "ratio": m["size_mb"] / max(above, 1e-6), "ratio_meaning": "file size / server memory growth",
           "target": f"< {TARGET_MB:.0f} MB above baseline", "met": above < TARGET_MB}
    load = os.getloadavg()[0]
    notes = [f"baseline RSS {m['baseline_rss_mb']:.0f} MB, peak {m['peak_rss_mb']:.0f} MB "
             f"({'kernel VmHWM after a reset' if m['hwm_reset'] else 'sampled every 10 ms only'}); "
             f"{m['parts']} parts in {m['wall_s']:.1f} s ({m['mb_per_s']:.0f} MB/s, client and server on one machine)"]
    machine = (f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} "
               f"{platform.python_version()}, load average {load:.1f}")
    return {"bench": "uploads", "machine": machine, "date": datetime.date.today().isoformat(), "rows": [row],
            "notes": notes, "profile": None, "measurement": m}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=200)
    p.add_argument("--part-mb", type=int, default=64, help="part size in MiB (OpenAI's maximum is 64)")
    p.add_argument("--quick", action="store_true", help="24 MB in 8 MB parts (a smoke run)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    size_mb, part_mb = (24, 8) if args.quick else (args.size_mb, args.part_mb)
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
        doc = document(measure(size_mb * MB, part_mb * MB, Path(tmp)))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0 if doc["rows"][0]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
