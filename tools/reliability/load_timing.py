"""Where a load run's time went (tools/reliability/load_suite.py): the server's event-loop lag (its
/metrics histogram and its shutdown log, from service/api/loop_lag.py) and each request's client
time split into client-before-send / server app / loop-and-wire / client-after-headers; and the
report's paragraphs on them."""

from __future__ import annotations

import json
import os
import statistics


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 1)


def loop_lag_buckets(base_url: str) -> dict[float, float]:
    """The modelmill_event_loop_lag_seconds histogram (api/loop_lag.py) of the server at base_url
    (its /v1 URL) now: {le: cumulative count}."""
    import httpx

    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", headers={"Authorization": "Bearer load"},
                     timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("modelmill_event_loop_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def loop_lag_window(before: dict[float, float], after: dict[float, float]) -> dict:
    """The loop lag during the load: the histogram's growth between two scrapes, its p50 and p99
    interpolated within a bucket (as Prometheus' histogram_quantile does), and how many ticks were
    over 100 and 500 ms late. One tick per 10 ms of a free loop; fewer when the loop is held."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0

    def quantile(q: float) -> float | None:
        if not total:
            return None
        rank, lo, below = q * total, 0.0, 0.0
        for bound, n in zip(bounds, counts):
            if n >= rank:
                if bound == float("inf"):
                    return round(lo * 1000, 1)  # past the last finite bucket: its bound, a lower limit
                return round((lo + (bound - lo) * (rank - below) / max(n - below, 1e-9)) * 1000, 1)
            lo, below = bound, n
        return None

    over = lambda s: int(total - next((n for b, n in zip(bounds, counts) if b >= s), total))  # noqa: E731
    return {"ticks": int(total), "p50_ms": quantile(0.50), "p99_ms": quantile(0.99),
            "over_100ms": over(0.1), "over_500ms": over(0.5)}


def where_the_time_goes(rows: list[tuple]) -> dict:
    """Each request's client time split in four: in the client before sending (the SDK building the
    request), the server app's own time (openai-processing-ms), the rest until the response headers
    arrived (the kernel, the server's event loop, HTTP parsing, the middleware outside the timed span,
    and the client thread's wait for its process's GIL to see the answer), and in the client after the
    headers (the body, and the SDK parsing it into objects). Percentiles of each over all the requests
    given, and the mean of each over the slowest 1% (what makes the p99)."""
    parts = []
    for row in rows:
        total, srv, t0, headers_at, sent_at = row[1], row[2], row[6], row[8], row[9]
        if srv is None or headers_at is None or sent_at is None or srv != srv:  # no header, or nan
            continue
        before_send = (sent_at - t0) * 1000
        to_headers = (headers_at - sent_at) * 1000
        parts.append((total, before_send, srv, max(0.0, to_headers - srv), max(0.0, total - before_send - to_headers)))
    if not parts:
        return {}
    names = ("client_before_send", "server_app", "loop_and_wire", "client_after_headers")
    out = {f"{name}_{q}_ms": pct([p[i + 1] for p in parts], q) for i, name in enumerate(names) for q in (50, 99)}
    slowest = sorted(parts, reverse=True)[:max(1, len(parts) // 100)]
    out["slowest_1pct"] = {"n": len(slowest), "total_ms": round(statistics.fmean(p[0] for p in slowest), 1),
                           **{f"{name}_ms": round(statistics.fmean(p[i + 1] for p in slowest), 1)
                              for i, name in enumerate(names)}}
    return out


def stall_places(log_text: str) -> dict | None:
    """The server's own event-loop summary (api/loop_lag.py logs it at shutdown), or None."""
    marker = "event loop lag: "
    for line in reversed(log_text.splitlines()):
        if marker in line:
            try:
                return json.loads(line.split(marker, 1)[1])
            except ValueError:
                return None
    return None


def chat_note(ld: dict) -> str:
    if ld.get("first_chat_ms") is None:
        return "the chat model's first load fell inside the window (--cold-chat)"
    return (f"one chat before the clients started loaded the chat model, {ld['first_chat_ms']} ms; "
            "--cold-chat leaves that load inside the window")


def server_env_note() -> str:
    """The MODELMILL_* settings of this run's environment that shape the server's concurrency (an A/B run sets them)."""
    keys = ("MODELMILL_API_THREADS", "MODELMILL_CHAT_CONCURRENCY", "MODELMILL_WORKER_NICE")
    given = [f"{k}={os.environ[k]}" for k in keys if os.environ.get(k)]
    return f"; server environment {', '.join(given)}" if given else ""


def where_lines(ld: dict) -> list[str]:
    """The report's paragraph on where the metadata requests' time went (see where_the_time_goes)."""
    lag, split, stalls = ld.get("loop_lag") or {}, ld.get("split") or {}, ld.get("loop_stalls") or {}
    out = []
    if lag.get("ticks"):
        out.append(f"The server's event loop during the load (api/loop_lag.py, a 10 ms sleep's overshoot, "
                   f"{lag['ticks']} ticks): lag p50 {lag['p50_ms']} ms, **p99 {lag['p99_ms']} ms**, "
                   f"{lag['over_100ms']} ticks over 100 ms late, {lag['over_500ms']} over 500 ms.")
    if stalls.get("stalls"):
        places = "; ".join(f"`{place}` ({n})" for place, n in stalls["stall_places"][:3])
        longest = "; ".join(f"{ms} ms at {at} s: `{place}`" + (f" (other threads busy: {'; '.join(others)})"
                                                              if others else "")
                            for ms, at, place, others in stalls.get("longest", [])[:3])
        out.append(f"Stalls of the loop over 250 ms in the server's life: {stalls['stalls']}; where its thread "
                   f"was, most often: {places}. The longest (seconds after the server started): {longest}.")
    if split:
        slow = split["slowest_1pct"]
        parts = [("in the client before sending", "client_before_send"), ("the server app", "server_app"),
                 ("event loop, HTTP and wire", "loop_and_wire"),
                 ("in the client after the headers (body, SDK parsing)", "client_after_headers")]
        out.append("Where the metadata requests' time went, p50 / p99 ms: " + "; ".join(
            f"{label} {split[key + '_50_ms']} / {split[key + '_99_ms']}" for label, key in parts)
            + f". The slowest 1% ({slow['n']} requests, mean {slow['total_ms']} ms): " + ", ".join(
            f"{label.split(' (')[0]} {slow[key + '_ms']}" for label, key in parts) + ".")
    return out
