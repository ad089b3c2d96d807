"""The throughput benchmark runs end to end (a tiny configuration; the figures come from the full run)."""

from __future__ import annotations

import pytest

from tests.performance import bench_memory, bench_recovery, bench_throughput


@pytest.mark.timeout(120)
def test_benchmark_runs_all_designs(capsys: pytest.CaptureFixture[str]) -> None:
    """Every design processes the workload and the table and both ratios are printed."""
    results = bench_throughput.main(["--messages", "3000", "--books", "50", "--repeat", "1"])
    assert all(results[name] > 0 for name in ("pool", "queue", "single"))
    assert results["ratio_queue"] == pytest.approx(results["pool"] / results["queue"])
    printed = capsys.readouterr().out
    assert "| pool (this library) | 2 |" in printed and "pool / queue design:" in printed


@pytest.mark.timeout(120)
def test_recovery_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Both recovery figures and the cold-start baseline are measured and printed."""
    results = bench_recovery.main(["--books", "50", "--kills", "2"])
    assert results["books"] > 0
    assert 0 < results["detection_median_ms"] <= results["detection_max_ms"]
    assert 0 < results["recovery_median_s"] <= results["recovery_max_s"] and results["cold_start_s"] > 0
    assert "books live again" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_memory_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The pool and the dict baseline are both measured, and the sample cost is reported."""
    results = bench_memory.main(["--books", "200"])
    assert results["pool_mb_per_1000_at_200"] > 0 and results["baseline_mb_per_1000_at_200"] > 0
    assert results["uss_sample_ms"] > 0 and results["rss_sample_ms"] > 0
    assert "| 200 | 98 |" in capsys.readouterr().out
