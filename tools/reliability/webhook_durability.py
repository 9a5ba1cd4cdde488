"""Webhook durability (issue 20): SIGKILL the server while webhook deliveries are in flight, N times,
and count the events lost (must be 0).

Each round makes `--events` fine_tuning.job.cancelled events (jobs created and cancelled through the
API), lets their deliveries start, SIGKILLs `modelmill serve` (API and worker in one process) at a
random moment, counts the deliveries the kill left pending or mid-attempt (read from the SQLite file),
and starts a new server on the same home. The receiver on 127.0.0.1 answers slowly, and a share of
requests with a 500, so deliveries are in flight and being retried when the kill lands. At the end
the last server runs until every event is in: lost = cancelled jobs whose event never reached the
receiver. Every received body is verified with the openai SDK's webhooks.unwrap. Duplicates (an
event received twice: the at-least-once re-send of an attempt the kill cut short) are counted too.

    python -m tools.reliability.webhook_durability                       # 10 kills x 20 events
    python -m tools.reliability.webhook_durability --kills 2 --events 5  # a quick run
    python -m tools.reliability.webhook_durability --json bench/out/reliability_webhooks.json

Prints one Markdown row for RELIABILITY.md (the lead writes it there).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from openai import OpenAI  # noqa: E402

from modelmill.local_server import LocalServer  # noqa: E402
from tools.datasets import short_dataset  # noqa: E402
from tools.webhook_receiver import Receiver  # noqa: E402

ENV = {"MODELMILL_WEBHOOK_ALLOW_PRIVATE": "1", "MODELMILL_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
       "MODELMILL_WEBHOOK_RETRY_MAX_INTERVAL_SECONDS": "1", "MODELMILL_WEBHOOK_TIMEOUT_SECONDS": "1",
       "MODELMILL_LEASE_SECONDS": "3", "MODELMILL_HEARTBEAT_SECONDS": "0.5"}


class FlakyReceiver(Receiver):
    """Answers after `delay` seconds, with a 500 for a `fail_share` of requests (seeded)."""

    def __init__(self, delay: float, fail_share: float, seed: int):
        self.delay, self.fail_share, self.rng = delay, fail_share, random.Random(seed)
        super().__init__()
        self.hang = delay

    @property
    def status(self) -> int:  # read by the handler for each request
        return 500 if self.rng.random() < self.fail_share else 200

    @status.setter
    def status(self, value: int) -> None:  # Receiver.__init__ sets it; the flakiness decides instead
        pass


def make_events(client: OpenAI, file_id: str, n: int) -> list[str]:
    """n jobs created and cancelled at once: one fine_tuning.job.cancelled event each."""
    ids = []
    for _ in range(n):
        job = client.fine_tuning.jobs.create(training_file=file_id, model="modelmill-tiny", seed=0)
        client.fine_tuning.jobs.cancel(job.id)
        ids.append(job.id)
    return ids


def in_flight(db: Path) -> int:
    """Deliveries left pending or mid-attempt (read while no server runs)."""
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE status IN ('pending', 'sending')").fetchone()[0]


def start_server(home: Path) -> tuple[LocalServer, OpenAI]:
    """`modelmill serve` (API and worker) on `home`, its log appended to home/../server.log."""
    server = LocalServer(home, env=ENV, log=home.parent / "server.log")  # appended to across restarts
    return server, OpenAI(base_url=server.base_url, api_key="local", max_retries=0)


def run(kills: int, events: int, seed: int, settle_timeout: float) -> dict:
    rng = random.Random(seed)
    home = Path(tempfile.mkdtemp(prefix="mm-webhooks-")) / "home"
    home.mkdir()
    rx = FlakyReceiver(delay=0.25, fail_share=0.3, seed=seed)
    server, client = start_server(home)
    expected: list[str] = []
    left_at_kill: list[int] = []
    try:
        endpoint = client.post("/webhook_endpoints", body={"url": rx.url}, cast_to=object)
        file_id = client.files.create(file=("train.jsonl", short_dataset(16)), purpose="fine-tune").id
        for k in range(kills):
            expected += make_events(client, file_id, events)
            time.sleep(rng.uniform(0.0, 1.0))  # deliveries under way (0.25 s each, 2 at once, 30% retried)
            server.proc.kill()  # SIGKILL
            server.stop()  # reaps it and closes its log file
            left_at_kill.append(in_flight(home / "modelmill.db"))
            print(f"kill {k + 1}/{kills}: {left_at_kill[-1]} deliveries pending or mid-attempt", file=sys.stderr)
            server, client = start_server(home)
        deadline = time.monotonic() + settle_timeout
        while time.monotonic() < deadline and not set(expected) <= _received_ids(rx, endpoint["secret"])[0]:
            time.sleep(0.5)
        received, duplicates = _received_ids(rx, endpoint["secret"])
    finally:
        server.stop()
        rx.stop()
    cancelled = set(expected)
    return {"kills": kills, "events": len(cancelled), "in_flight_at_kills": sum(left_at_kill),
            "lost": len(cancelled - received), "duplicates": duplicates,
            "unexpected": len(received - cancelled), "seed": seed}


def _received_ids(rx: Receiver, secret: str) -> tuple[set[str], int]:
    """(job ids whose event was accepted, events accepted more than once); each body verified."""
    client = OpenAI(api_key="unused")
    seen: dict[str, int] = {}
    for r in rx.received():
        if r.answered != 200:
            continue
        event = client.webhooks.unwrap(r.body, r.headers, secret=secret)
        seen[event.data.id] = seen.get(event.data.id, 0) + 1
    return set(seen), sum(1 for n in seen.values() if n > 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs of the server (default 10)")
    p.add_argument("--events", type=int, default=20, help="events made before each kill (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settle-timeout", type=float, default=180.0,
                   help="seconds the last server gets to deliver everything (default 180)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    result = run(args.kills, args.events, args.seed, args.settle_timeout)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print("| Webhook durability | SIGKILL of `modelmill serve` during deliveries | "
          f"{result['kills']} kills, {result['events']} events; deliveries pending or mid-attempt at each kill, "
          f"summed: {result['in_flight_at_kills']} | events lost: **{result['lost']}** "
          f"(duplicates re-sent: {result['duplicates']}) |")
    return 0 if result["lost"] == 0 and result["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
