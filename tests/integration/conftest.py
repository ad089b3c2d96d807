from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import child_pids


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Every integration test must leave no worker process (nor zombie) behind."""
    before = child_pids()
    yield
    leaked = child_pids() - before
    assert not leaked, f"processes left behind: {sorted(leaked)}"
