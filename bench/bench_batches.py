"""The Batch API's throughput: a batch of chat requests run by a worker against the same requests
answered one after another by the chat-completions code.

    python bench/bench_batches.py [--quick] [--json PATH] [--repeats 3] [--lines 64] [--max-tokens 32]
                                  [--threads 2] [--no-write]

Model: SmolLM2-135M-Instruct (fp32; --quick: modelmill-tiny). Everything runs in this process on a
temporary MODELMILL_HOME (its models/ links to the real one): no HTTP, so the figures are the work.
(a) ModelMill: upload N request lines, POST /v1/batches (TestClient), then Worker.run_once() runs the
    batch (service/batches/runner.py: 32 lines in flight through the one Sampler, decoded in shared
    batches), timed from run_once's start to the batch's output file, which holds all N answers.
(b) Baseline: the same N requests through service/chat/completions.complete (the /v1/chat/completions code),
    one after another, on the same Sampler.
Rate = completion tokens / wall second. Target: the batch >= 3x the sequential rate (the batcher's
own figure for 8 concurrent requests is ~3x on 2 cores; a batch keeps up to 32 in flight).
Greedy decoding, so both arms produce the same tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_common import machine, row, rows_table, serving_bench_parser, write_json, write_markdown  # noqa: E402

MODEL, QUICK_MODEL = "SmolLM2-135M-Instruct", "modelmill-tiny"
TARGET = 3.0
TOPICS = ["the sea", "a train", "bread", "winter", "a cat", "the moon", "coffee", "a bridge"]


def lines(model: str, n: int, max_tokens: int) -> list[dict]:
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "temperature": 0, "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": f"Write two sentences about {TOPICS[i % 8]} ({i})."}]}}
            for i in range(n)]


def main() -> None:
    p = serving_bench_parser(__doc__, repeats_help="repeats of each arm (default 3; --quick 1)",
                             max_tokens_help="completion budget per request (default 32; --quick 8)")
    p.add_argument("--lines", type=int, help="requests per batch (default 64; --quick 16)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args()
    repeats, n = args.repeats or (1 if args.quick else 3), args.lines or (16 if args.quick else 64)
    max_tokens = args.max_tokens or (8 if args.quick else 32)
    model = QUICK_MODEL if args.quick else MODEL
    machine_line = machine()

    import torch
    from fastapi.testclient import TestClient

    from modelmill.settings import Settings
    from modelmill.service.chat import completions as chat
    from modelmill.service.models import registry as model_registry
    from modelmill.service.api.app import create_app
    from modelmill.service.models.sampler import shared_sampler
    from modelmill.service.schemas.chat import ChatCompletionRequest
    from modelmill.service.store import open_store
    from modelmill.service.worker.loop import Worker

    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="bench-batches-"))
    (home / "models").symlink_to(Path(args.home).expanduser() / "models", target_is_directory=True)
    settings = Settings(home=home).ensure_dirs()
    store = open_store(settings)
    requests = lines(model, n, max_tokens)
    sampler = shared_sampler(settings)
    served = model_registry.resolve(store, settings, model)
    chat.complete(sampler, settings, served, ChatCompletionRequest.model_validate(requests[0]["body"]))  # load, warm

    def sequential() -> tuple[int, float]:
        t, tokens = time.perf_counter(), 0
        for r in requests:
            tokens += chat.complete(sampler, settings, served,
                                    ChatCompletionRequest.model_validate(r["body"]))["usage"]["completion_tokens"]
        return tokens, time.perf_counter() - t

    def batched(client) -> tuple[int, float]:
        data = "".join(json.dumps(r) + "\n" for r in requests).encode()
        f = client.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"}).json()
        batch = client.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h"}).json()
        t = time.perf_counter()
        assert Worker(settings, store).run_once() == batch["id"]
        elapsed = time.perf_counter() - t
        done = client.get(f"/v1/batches/{batch['id']}").json()
        assert done["status"] == "completed" and done["request_counts"]["completed"] == n, done
        return done["usage"]["output_tokens"], elapsed

    runs: dict[str, list[tuple[int, float]]] = {"sequential": [], "batched": []}
    before = len(sampler.batch_history)
    try:
        with TestClient(create_app(settings, store=store)) as client:
            for _ in range(repeats):
                runs["sequential"].append(sequential())
                runs["batched"].append(batched(client))
    finally:
        store.close()
        shutil.rmtree(home, ignore_errors=True)
    sizes = [b[0] for b in sampler.batch_history[before:] if b[0] > 1]
    tps = {k: [tokens / s for tokens, s in v] for k, v in runs.items()}
    rows = [row(f"{model}: a batch of {n} chat requests (Batch API, one worker)",
                f"the same {n} requests one after another (chat.complete)", "tok/s", tps["sequential"],
                tps["batched"], higher_is_better=True, target=TARGET, target_text=f">= {TARGET:g}x",
                ratio_meaning="batch tokens/s / sequential tokens/s")]
    notes = [f"{model}, fp32, greedy, {max_tokens} max tokens per request, {n} requests, torch threads "
             f"{args.threads}, {len(runs['batched'])} repeats; load average {os.getloadavg()[0]:.1f} at the end.",
             f"Completion tokens per run (median): sequential {statistics.median(t for t, _ in runs['sequential']):.0f}, "
             f"batch {statistics.median(t for t, _ in runs['batched']):.0f}.",
             f"Requests per shared decoding batch during the runs: up to {max(sizes) if sizes else 1}."]
    doc = write_json(args.json, "batches", machine_line, rows, notes, None)
    table = rows_table(rows)
    print(table)
    print("\n".join(notes))
    if not args.no_write:
        write_markdown("bench_batches", "Batch API throughput", f"{machine_line}\n\n{table}\n\n" + "\n".join(
            f"- {note}" for note in doc["notes"]), args.quick)


if __name__ == "__main__":
    main()
