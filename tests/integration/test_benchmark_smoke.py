"""The benchmark suite runs end to end in its smoke configuration (the figures come from the full run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.performance import __main__ as suite
from tests.performance import bench_throughput


@pytest.mark.timeout(300)
def test_suite_runs_and_writes_its_report(tmp_path: Path) -> None:
    """Every benchmark runs, prints its table, and the report names the machine and the commit."""
    report = suite.main(["--smoke", "--output", str(tmp_path / "performance.md")]).read_text()
    sections = (
        "throughput",
        "publish one frame per call",
        "latency",
        "memory",
        "parent memory under backlog",
        "recovery",
        "lifecycle",
        "soak",
        "tasks",
        "ray backend",
    )
    for section in sections:
        assert f"## {section}" in report
    for plot in ("performance-throughput.png", "performance-latency.png"):
        assert f"]({plot})" in report
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
    assert "smoke configuration" in report and "Commit: `" in report
    assert "pool_started" not in report  # log lines go to stderr, not into the report
    assert "| pool (this library) | 2 |" in report and "pool / queue design:" in report
    assert "books live again" in report and "| 100 | 98 |" in report
    assert "| old design: one pickled message per Queue.put | 2,000 |" in report  # the latency baseline
    assert "| pool (this library) | 5,000 |" in report and "| old design: unbounded Queue | 5,000 |" in report
    assert "sync one-frame / old Queue design:" in report
    assert "shard balance, share of messages per worker:" in report
    assert "| worker 1 (USS) |" in report  # the soak samples every worker
    assert "ray / process:" in report and "node removal to books rebuilt" in report
    assert "| task: submit(asset, fn), run by the book |" in report and "tasks completed: 250, failed: 0" in report
    leftovers = report.split("left after the cycles: children, fds, threads, RSS growth | ")[1].split(",")[:3]
    children, fds, threads = (int(value) for value in leftovers)
    assert children == 0 and fds <= 0 and threads <= 0  # fewer than before is fine (a helper thread retired)


@pytest.mark.timeout(120)
def test_throughput_ratios_are_same_round(capsys: pytest.CaptureFixture[str]) -> None:
    """The throughput benchmark returns its figures, and the ratio is taken between runs of one round."""
    results = bench_throughput.main(["--messages", "3000", "--books", "50", "--repeat", "1"])
    assert all(results[name] > 0 for name in ("pool", "queue", "single"))
    assert results["ratio_queue"] == pytest.approx(results["pool"] / results["queue"])
    assert "| pool (this library) | 2 |" in capsys.readouterr().out
