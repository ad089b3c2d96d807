"""How every part of the library logs: structlog events handed to the standard library's `logging`.

A library is silent unless the application configures logging, and it never reconfigures structlog,
which belongs to the application. So every logger of the library is structlog's stdlib `BoundLogger`
around ``logging.getLogger("pool.<part>")`` with a short processor chain of its own (it ignores
``structlog.configure``), and the ``pool`` logger has a `logging.NullHandler`, so logging's last-resort
handler never prints either. The event dict travels as the record's message:

* plain `logging` (``logging.basicConfig()``) prints it as ``pool_started workers=4 seconds=0.4``;
* ``structlog.stdlib.ProcessorFormatter`` renders it with the application's own processors (JSON lines,
  console), because the record carries what ``ProcessorFormatter.wrap_for_formatter`` would attach;
* filtering is the standard library's: ``logging.getLogger("pool.worker").setLevel(logging.ERROR)``.

It lives in `pool.models` because every other part of the library may import `pool.models`, and this
module imports nothing of the library.
"""

from __future__ import annotations

import enum
import logging
import sys
from typing import Any

import structlog

__all__ = ["ROOT_LOGGER", "get_logger"]

ROOT_LOGGER = "pool"

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())


class _EventDict(dict[str, Any]):
    """An event dict that reads as ``event key=value ...`` when a plain `logging.Formatter` prints it."""

    def __str__(self) -> str:
        fields = " ".join(
            f"{key}={value.value if isinstance(value, enum.Enum) else value!r}"
            for key, value in self.items()
            if key not in ("event", "exc_info")
        )
        return f"{self.get('event', '')} {fields}".rstrip()


def _to_stdlib(logger: Any, method_name: str, event_dict: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: the arguments of the standard library's logging call."""
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = event_dict["exc_info"] = sys.exc_info()
    extra = {"_logger": logger, "_name": method_name}  # what ProcessorFormatter looks for
    return (_EventDict(event_dict),), {"exc_info": exc_info or None, "extra": extra}


def get_logger(name: str) -> Any:
    """The structlog logger of one part of the library, e.g. ``get_logger("pool.worker")``."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, _to_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
