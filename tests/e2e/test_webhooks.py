"""Webhooks through a real `modelmill serve` and a real receiver on 127.0.0.1: the endpoint registered
with `modelmill webhooks add`, a job's cancellation delivered, a receiver answering 500 retried, and a
delivery still pending when the server is SIGKILLed delivered by the next server, signed so the
openai SDK's webhooks.unwrap verifies it."""

from __future__ import annotations

import json
import subprocess
import time

from openai import OpenAI

from modelmill.local_server import cli_command
from tests.e2e.conftest import tiny_job
from tools.datasets import short_dataset
from tools.servers import Server
from tests.spec_check import assert_matches
from tools.webhook_receiver import Receiver

# Fast retries, and a short delivery lease (3 x timeout + lease_seconds) so a claim the kill left
# behind expires within seconds.
ENV = {"MODELMILL_WEBHOOK_ALLOW_PRIVATE": "1", "MODELMILL_WEBHOOK_RETRY_BASE_SECONDS": "0.3",
       "MODELMILL_WEBHOOK_RETRY_MAX_INTERVAL_SECONDS": "1", "MODELMILL_WEBHOOK_TIMEOUT_SECONDS": "1",
       "MODELMILL_LEASE_SECONDS": "3", "MODELMILL_HEARTBEAT_SECONDS": "0.5"}


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(cli_command("webhooks", *args, "--base-url", server.base_url), env=server.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def wait_delivered(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    [endpoint] = server.client.get("/webhook_endpoints", cast_to=object)["data"]
    while server.client.get(f"/webhook_endpoints/{endpoint['id']}/deliveries",
                            cast_to=object)["data"][0]["status"] != "delivered":
        assert time.monotonic() < deadline, "the delivery was not recorded as delivered"
        time.sleep(0.1)


def test_a_pending_delivery_survives_a_server_sigkill(tmp_path):
    with Receiver() as rx:
        rx.status = 500
        server = Server(tmp_path / "home", env=ENV)
        try:
            secret = cli(server, "add", rx.url, "--events", "fine_tuning.job.cancelled").stdout.strip()
            assert secret.startswith("whsec_")
            client = server.client
            train = client.files.create(file=("train.jsonl", short_dataset(16)), purpose="fine-tune")
            job = tiny_job(client, train.id)
            client.fine_tuning.jobs.cancel(job.id)
            rx.wait_for(lambda got: len(got) >= 2, timeout=90)  # answered 500, and retried
            server.proc.kill()  # SIGKILL, with the delivery still pending
            server.proc.wait()
        finally:
            server.stop()

        rx.status = 200
        server = Server(tmp_path / "home", env=ENV)
        try:
            got = rx.wait_for(lambda got: any(r.answered == 200 for r in got), timeout=60)
            wait_delivered(server)  # the receiver answered; now the server records it
            listed = cli(server, "list", "--json").stdout
        finally:
            server.stop()

    accepted = [r for r in got if r.answered == 200]
    assert len(accepted) == 1 and len({r.headers["webhook-id"] for r in got}) == 1  # one event, retried
    event = OpenAI(api_key="unused").webhooks.unwrap(accepted[0].body, accepted[0].headers, secret=secret)
    assert event.type == "fine_tuning.job.cancelled" and event.data.id == job.id
    assert_matches(json.loads(accepted[0].body), "WebhookFineTuningJobCancelled")
    [endpoint] = json.loads(listed)
    last = endpoint["last_delivery"]
    assert last["status"] == "delivered" and last["attempts"][-1]["status_code"] == 200
    # The 500s before the kill are recorded (all but one the kill may have cut short), then the 200.
    assert [a["status_code"] for a in last["attempts"]].count(500) >= 1
    assert sum(r.answered == 500 for r in got) >= 2
