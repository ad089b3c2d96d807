"""The benchmark suite: ``python -m tests.performance [--smoke] [--soak SECONDS] [--output FILE | --docs]``.

Runs every benchmark of this folder, each measuring the pool and its baseline in the same run, prints
their tables, and writes them with the machine, date and commit to ``--output`` (default
``.benchmarks/performance.md``, untracked; ``--docs`` refreshes the published ``docs/performance.md``
instead), with two plots beside it
(throughput against workers, latency distribution). ``--smoke`` runs a tiny configuration that proves the
suite works (CI runs it through the test suite); the published figures come from the full run, which
takes about 8 minutes here. ``--soak 600`` adds the 10-minute soak (memory slope under steady load).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.performance import _plots as _plot
from tests.performance import (
    bench_backlog,
    bench_latency,
    bench_lifecycle,
    bench_memory,
    bench_publish,
    bench_ray,
    bench_recovery,
    bench_soak,
    bench_tasks,
    bench_throughput,
)

_DEFAULT_OUTPUT = Path(".benchmarks/performance.md")  # untracked: a run for yourself
_DOCS_OUTPUT = Path("docs/performance.md")  # tracked: the figures the docs quote

_FULL: dict[str, list[str]] = {
    "throughput, 1 worker": ["--workers", "1"],
    "throughput, 2 workers": ["--workers", "2"],
    "throughput, 4 workers": ["--workers", "4"],
    "publish one frame per call": ["--messages", "100000"],
    "latency": ["--rates", "1000", "10000", "50000", "--seconds", "5"],
    "memory": ["--books", "1000", "10000", "50000"],
    "parent memory under backlog": ["--messages", "200000", "1000000"],
    "recovery": ["--books", "1000", "--kills", "5"],
    "lifecycle": ["--workers", "4", "--cycles", "1000"],
    "tasks": ["--books", "1000", "--rate", "20000", "--tasks", "5000", "--samples", "1000"],
    "ray backend": ["--messages", "100000", "--repeat", "3"],
}
_SMOKE: dict[str, list[str]] = {
    "throughput, 2 workers": ["--workers", "2", "--messages", "3000", "--books", "50", "--repeat", "1"],
    "publish one frame per call": ["--messages", "2000", "--books", "50", "--repeat", "1"],
    "latency": ["--rates", "2000", "--seconds", "0.5"],
    "memory": ["--books", "100"],
    "parent memory under backlog": ["--messages", "5000"],
    "recovery": ["--books", "50", "--kills", "1"],
    "lifecycle": ["--workers", "2", "--cycles", "2"],
    "soak": ["--seconds", "2", "--every", "0.5", "--rate", "2000"],
    "tasks": ["--books", "50", "--rate", "2000", "--tasks", "200", "--samples", "50"],
    "ray backend": ["--messages", "2000", "--books", "50", "--repeat", "1"],
}
_RUNNERS: dict[str, Callable[[list[str]], Any]] = {
    "throughput": bench_throughput.main,
    "publish one frame per call": bench_publish.main,
    "latency": bench_latency.main,
    "memory": bench_memory.main,
    "parent memory under backlog": bench_backlog.main,
    "recovery": bench_recovery.main,
    "lifecycle": bench_lifecycle.main,
    "soak": bench_soak.main,
    "tasks": bench_tasks.main,
    "ray backend": bench_ray.main,
}


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def run(smoke: bool, soak_seconds: float | None, output: Path) -> str:
    """Run the suite; write the plots beside ``output``; return the report (markdown)."""
    plan = dict(_SMOKE if smoke else _FULL)
    if soak_seconds and not smoke:  # the smoke plan has a soak of its own, two seconds long
        plan["soak"] = ["--seconds", f"{soak_seconds:g}"]
    sections = []
    results: dict[str, Any] = {}
    for title, argv in plan.items():
        runner = _RUNNERS[title.split(",")[0]]
        printed = io.StringIO()
        began = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            results[title] = runner(argv)
        text = _as_markdown(printed.getvalue().strip())
        print(f"\n## {title}\n\n{text}", flush=True)
        sections.append(f"## {title}\n\n`{' '.join(argv)}`, {time.perf_counter() - began:.0f} s\n\n{text}\n")
    sections.append(_plots(results, output))
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


def _plots(results: dict[str, Any], output: Path) -> str:
    """Draw the plots beside the report; return the report's section that shows them."""
    by_workers = {
        int(title.split(", ")[1].split()[0]): figures
        for title, figures in results.items()
        if title.startswith("throughput, ")
    }
    drawn = [
        _plot.throughput(by_workers, output.with_name(f"{output.stem}-throughput.png")),
        _plot.latency(results["latency"], output.with_name(f"{output.stem}-latency.png")),
    ]
    return "## plots\n\n" + "\n".join(f"![{path.stem}]({path.name})" for path in drawn) + "\n"


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
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", type=Path, default=_DEFAULT_OUTPUT, help=f"the report (default: {_DEFAULT_OUTPUT})")
    where.add_argument("--docs", action="store_true", help=f"write the published report, {_DOCS_OUTPUT}, instead")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="add the soak benchmark, this long")
    args = parser.parse_args(argv)
    output: Path = _DOCS_OUTPUT if args.docs else args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    report = run(args.smoke, args.soak, output)
    output.write_text(report)
    print(f"\nwritten to {output}")
    return output


if __name__ == "__main__":
    main()
