"""The benchmark suite: ``python -m tests.performance [--smoke] [--output docs/performance.md]``.

Runs every benchmark of this folder, each measuring the pool and its baseline in the same run, prints
their tables, and writes them with the machine, date and commit to ``--output``. ``--smoke`` runs a tiny
configuration that proves the suite works (CI runs it through the test suite); the published figures come
from the full run, which takes a few minutes here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from tests.performance import bench_latency, bench_lifecycle, bench_memory, bench_recovery, bench_throughput

_FULL: dict[str, list[str]] = {
    "throughput, 1 worker": ["--workers", "1"],
    "throughput, 2 workers": ["--workers", "2"],
    "throughput, 4 workers": ["--workers", "4"],
    "latency": ["--rates", "10000", "50000", "--seconds", "5"],
    "memory": ["--books", "1000", "10000"],
    "recovery": ["--books", "1000", "--kills", "5"],
    "lifecycle": ["--workers", "4", "--cycles", "100"],
}
_SMOKE: dict[str, list[str]] = {
    "throughput, 2 workers": ["--workers", "2", "--messages", "3000", "--books", "50", "--repeat", "1"],
    "latency": ["--rates", "2000", "--seconds", "0.5"],
    "memory": ["--books", "100"],
    "recovery": ["--books", "50", "--kills", "1"],
    "lifecycle": ["--workers", "2", "--cycles", "2"],
}
_RUNNERS: dict[str, Callable[[list[str]], Any]] = {
    "throughput": bench_throughput.main,
    "latency": bench_latency.main,
    "memory": bench_memory.main,
    "recovery": bench_recovery.main,
    "lifecycle": bench_lifecycle.main,
}


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def run(smoke: bool) -> str:
    """Run the suite; return the report (markdown)."""
    sections = []
    for title, argv in (_SMOKE if smoke else _FULL).items():
        runner = _RUNNERS[title.split(",")[0]]
        printed = io.StringIO()
        began = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            runner(argv)
        text = _as_markdown(printed.getvalue().strip())
        print(f"\n## {title}\n\n{text}", flush=True)
        sections.append(f"## {title}\n\n`{' '.join(argv)}`, {time.perf_counter() - began:.0f} s\n\n{text}\n")
    header = (
        "# Performance\n\n"
        "Written by `python -m tests.performance`"
        + (" in its smoke configuration (not figures to quote)" if smoke else "")
        + f". Machine: {platform.node()}, {platform.machine()}, {platform.processor() or 'cpu'} "
        f"x{os.cpu_count() or 1}, Python {platform.python_version()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}. "
        f"Commit: `{_commit()}`.\n\nEach benchmark measures the pool and its baseline in the same run; "
        "their docstrings (in `tests/performance/`) say exactly what is measured.\n"
    )
    return header + "\n" + "\n".join(sections)


def _as_markdown(text: str) -> str:
    """The benchmarks' ``# note`` lines become list items (not headings), set apart from their table."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("# "):
            line = "- " + line[2:]
        elif line.startswith("|") and lines and lines[-1].startswith("- "):
            lines.append("")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration that proves the suite runs")
    parser.add_argument("--output", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args(argv)
    # The pool's log lines go to stderr, so that stdout (and the report) holds only the tables.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    report = run(args.smoke)
    args.output.write_text(report)
    print(f"\nwritten to {args.output}")
    return Path(args.output)


if __name__ == "__main__":
    main()
