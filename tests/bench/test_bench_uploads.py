"""bench/bench_uploads.py: the report's rows (fast), and (slow: 7-13 s on 2 busy CPU cores) issue 20.4's
acceptance check run for real: the SDK's upload_file_chunked sends 200 MB in 64 MiB parts to a live
server whose peak RSS must stay under 300 MB above its idle baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import bench_uploads  # noqa: E402


@pytest.mark.slow
def test_a_200_mb_chunked_upload_keeps_the_server_under_300_mb_above_baseline(tmp_path):
    m = bench_uploads.measure(200 * bench_uploads.MB, 64 * bench_uploads.MB, tmp_path)
    assert m["parts"] == 4
    assert m["peak_above_baseline_mb"] < bench_uploads.TARGET_MB, m
    doc = bench_uploads.document(m)
    assert doc["rows"][0]["met"] is True and doc["rows"][0]["unit"] == "MB"


def test_a_missed_target_is_reported_as_missed():
    m = {"size_mb": 200.0, "part_mb": 64.0, "parts": 4, "baseline_rss_mb": 70.0, "peak_rss_mb": 400.0,
         "peak_above_baseline_mb": 330.0, "hwm_reset": False, "sampled_peak_mb": 400.0, "wall_s": 2.0,
         "mb_per_s": 100.0}
    row = bench_uploads.document(m)["rows"][0]
    assert row["met"] is False and row["modelmill_median"] == 330.0
