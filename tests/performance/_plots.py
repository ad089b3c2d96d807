"""The suite's two plots: throughput against workers, and the latency distribution (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or on a server

import matplotlib.pyplot as plt  # after use(): the backend is chosen first

_LABELS = {
    "pool": "pool (this library)",
    "pool-sync": "pool under `with`",
    "queue": "old design: pickled message per Queue.put",
    "single": "one process, no IPC (single-core limit)",
    "ray": "Ray actors, batches of 256",
}


def throughput(by_workers: dict[int, dict[str, float]], path: Path) -> Path:
    """Messages/s of each design against the number of workers."""
    figure, axes = plt.subplots(figsize=(7, 5.5))
    counts = sorted(by_workers)
    for design, label in _LABELS.items():
        points = [(n, by_workers[n][design]) for n in counts if design in by_workers[n]]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=label, linestyle="--" if design == "single" else "-")
    axes.set_xticks(counts)
    axes.set_xlabel("workers")
    axes.set_ylabel("messages/s")
    axes.set_ylim(bottom=0)
    axes.set_title("Throughput, raw frames to applied books")
    axes.grid(alpha=0.3)
    # Below the axes: inside, it would cover a line whatever corner it took.
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def latency(results: list[dict[str, Any]], path: Path) -> Path:
    """Share of messages slower than x (log-log), one line per design and offered rate."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for result in results:
        samples = result["samples"]
        count = len(samples)
        slower = [1 - index / count for index in range(count)]
        label = f"{_LABELS[result['design']].split(':')[0]} at {result['rate']:,.0f} msg/s"
        axes.step([max(sample, 1) for sample in samples], slower, where="post", label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_ylim(1e-4, 1.05)
    axes.set_xlabel("publish -> applied latency (us)")
    axes.set_ylabel("share of messages slower than x")
    axes.set_title("Latency distribution (2 workers)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
