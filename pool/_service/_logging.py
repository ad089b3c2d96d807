"""The command line's logging: the application end of the library's logging (see `pool.models._logging`).

The library hands structlog event dicts to the standard library's `logging`; an application decides where
they go. `worker-pool` sends every ``pool.*`` record (and any other) to one handler that renders it with
structlog: JSON lines for machines, or aligned text for a person.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["configure_logging"]


def configure_logging(*, json_lines: bool, level: int, stream: Any) -> None:
    """Log every record at ``level`` or above to ``stream``, with level, logger name and UTC ISO time."""
    renderer: Any = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
