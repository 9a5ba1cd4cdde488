"""The load suite's arithmetic of where the time went (tools/reliability/load_timing.py): the loop-lag
window between two /metrics scrapes, each request's four-way split, and the server's shutdown line."""

from __future__ import annotations

import json

from tools.reliability.load_timing import loop_lag_window, stall_places, where_the_time_goes

INF = float("inf")


def test_the_loop_lag_window_counts_only_the_ticks_between_the_scrapes():
    before = {0.01: 5, 0.1: 8, 0.5: 9, INF: 10}
    after = {0.01: 95, 0.1: 105, 0.5: 108, INF: 110}  # 100 ticks: 90 <= 10 ms, 7 <= 100 ms, 2 <= 500 ms, 1 over
    assert loop_lag_window(before, after) == {"ticks": 100, "p50_ms": 5.6, "p99_ms": 500.0,
                                              "over_100ms": 3, "over_500ms": 1}
    assert loop_lag_window({}, {})["ticks"] == 0


def test_each_request_is_split_in_four_and_the_slowest_percent_averaged():
    # (kind, client ms, server ms, status, error, job, started, answered, headers at, sent at), seconds
    rows = [("list_files", 100.0, 40.0, 200, None, None, 0.0, 0.1, 0.08, 0.01)] * 99 \
        + [("list_files", 1000.0, 100.0, 200, None, None, 0.0, 1.0, 0.95, 0.05)]
    split = where_the_time_goes(rows)
    assert split["slowest_1pct"] == {"n": 1, "total_ms": 1000.0, "client_before_send_ms": 50.0, "server_app_ms": 100.0,
                                     "loop_and_wire_ms": 800.0, "client_after_headers_ms": 50.0}
    assert split["server_app_50_ms"] == 40.0 and split["loop_and_wire_50_ms"] == 30.0


def test_the_servers_shutdown_line_is_read_back():
    summary = {"samples": 3, "p99_ms": 5.0, "stalls": 1, "stall_places": [["x.py:1 f", 1]], "longest": []}
    log = "INFO: started\n2026-12-03 12:00:00 INFO modelmill.service.api.loop_lag: event loop lag: " + json.dumps(summary)
    assert stall_places(log) == summary and stall_places("nothing") is None
