"""One structlog setup for the command line and the worker processes, so their lines look alike."""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["configure_structlog"]


def configure_structlog(*, json_lines: bool, level: int, file: Any) -> None:
    """Log lines with level and UTC ISO time to ``file``: JSON lines for machines, else text for a person."""
    renderer: Any = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(file),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
