"""Issue 17.4: a chat whose client gives up stops generating, chats run off the request thread pool,
and requests past the token limits are 400s naming the limit (docs/limits.md).

On modelmill-tiny a 4,000-token answer takes about a minute per row on 2 shared cores, so a
generation that outlived its client would hold the batcher for minutes: the 1-token chat that
follows would wait behind it. Here it must come back within seconds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

LONG = dict(model="modelmill-tiny", messages=[{"role": "user", "content": "tell me everything"}],
            temperature=1.0, max_tokens=4000)
QUICK_S = 30.0  # a 1-token chat on an idle model takes well under a second; 4 x 4,000 tokens take minutes


def one_token_chat_seconds(client) -> float:
    t0 = time.monotonic()
    r = client.chat.completions.create(model="modelmill-tiny", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=1, temperature=0)
    assert r.usage.completion_tokens == 1
    return time.monotonic() - t0


@pytest.fixture(scope="module", autouse=True)
def warm(client):
    """The model loaded (the server's first chat imports torch and loads it), so times below are
    generation times."""
    one_token_chat_seconds(client)


def test_a_client_that_times_out_stops_its_generation(client):
    impatient = client.with_options(timeout=2.0, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(n=4, **LONG)
    assert one_token_chat_seconds(client) < QUICK_S


def test_a_stream_closed_early_stops_its_generation(client):
    stream = client.chat.completions.create(stream=True, **LONG)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert one_token_chat_seconds(client) < QUICK_S


def test_metadata_stays_fast_while_many_chats_wait(client):
    """48 chats (more than FastAPI's 40 request threads) hold no request thread: they run or queue
    in the chat executor, so GET /v1/files answers meanwhile; then every one of them times out,
    and none keeps generating."""
    impatient = client.with_options(timeout=6.0, max_retries=0)
    started = threading.Event()

    def chat(_):
        started.set()
        try:
            impatient.chat.completions.create(**LONG)
        except openai.APITimeoutError:
            return "timeout"
        return "answered"

    with ThreadPoolExecutor(48) as pool:
        outcomes = pool.map(chat, range(48))
        started.wait(10)
        time.sleep(1.0)  # let them arrive
        lists = []
        for _ in range(5):
            t0 = time.monotonic()
            client.files.list()
            lists.append(time.monotonic() - t0)
        outcomes = list(outcomes)
    assert outcomes.count("timeout") == 48
    assert max(lists) < 3.0, lists
    assert one_token_chat_seconds(client) < QUICK_S


@pytest.mark.parametrize("kw, param", [
    (dict(max_tokens=100_000), "max_tokens"),
    (dict(max_completion_tokens=5000), "max_completion_tokens"),
    (dict(n=16, max_tokens=4000), "n"),  # 64,000 completion tokens in one request
])
def test_token_limits_are_400s_naming_the_limit(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="modelmill-tiny", messages=[{"role": "user", "content": "hi"}], **kw)
    err = e.value.body
    assert err["param"] == param and err["code"] == "limit_exceeded"
    assert "MODELMILL_MAX_" in err["message"] and ("4096" in err["message"] or "16384" in err["message"])
