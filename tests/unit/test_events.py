"""The event hub: every listener is called, failures are contained, and removal works."""

from __future__ import annotations

import anyio

from pool._parent._events import EventHub
from pool.models import ExitReason, PoolEvent, PoolEventKind
from pool.models._logging import get_logger
from tests.support import captured_logs

EVENT = PoolEvent(kind=PoolEventKind.WORKER_EXITED, worker_id=1, pid=42, reason=ExitReason.CRASH, exit_code=3)


class TestEventHub:
    def test_logs_and_calls_listeners_despite_a_failing_one(self) -> None:
        """A raising listener is logged and counted; the listeners after it are still called."""
        hub = EventHub(get_logger("pool.test"))
        seen: list[PoolEvent] = []

        def broken(event: PoolEvent) -> None:
            raise RuntimeError("bug")

        hub.add_listener(broken)
        hub.add_listener(seen.append)
        with captured_logs() as logs:
            hub.emit(EVENT)
        assert seen == [EVENT] and hub.listener_errors == 1
        assert [entry["event"] for entry in logs] == ["worker_exited", "listener_failed"]
        assert logs[0]["log_level"] == "warning" and logs[0]["exit_code"] == 3

    def test_remove_and_async_listener(self) -> None:
        """An async listener runs in the attached task group; a removed listener is not called."""
        hub = EventHub(get_logger("pool.test"))
        seen: list[str] = []

        async def async_listener(event: PoolEvent) -> None:
            seen.append("async")

        remove = hub.add_listener(lambda event: seen.append("sync"))
        hub.add_listener(async_listener)

        async def main() -> None:
            async with anyio.create_task_group() as task_group:
                hub.attach(task_group)
                hub.emit(EVENT)
                remove()
                hub.emit(EVENT)

        anyio.run(main)
        assert seen == ["sync", "async", "async"]
