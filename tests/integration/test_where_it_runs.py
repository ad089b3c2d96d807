"""The pool runs wherever Python runs: a handler defined in the user's own `__main__` works from a guarded
script, an unguarded script, ``python -c``, standard input and IPython, and the books end exact."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from pool import PersistentWorkerPool, PoolConfig, PoolError, WorkerStartupError
from pool._service._synthetic import SyntheticMarket
from pool.models import PoolState
from tests.integration import handlers
from tests.support import ReferenceBooks, as_decimals, child_pids

pytestmark = pytest.mark.timeout(60)

SEED, ASSETS, UPDATES = 307, 60, 3_000

# The user's program: a handler class and its factory defined in __main__, a pool, and the books printed as
# JSON on the last line. Every callback writes a line to HANDLER_LOG, so the test sees where handlers ran.
PROGRAM = textwrap.dedent(
    f"""
    import json, os
    from pool import PersistentWorkerPool, PoolConfig
    from pool._service._synthetic import SyntheticMarket

    class Recorder:
        def __init__(self):
            self._fd = os.open(os.environ["HANDLER_LOG"], os.O_WRONLY | os.O_APPEND)

        def on_snapshot(self, book, event):
            os.write(self._fd, f"{{os.getpid()}} {{book.asset_id}}\\n".encode())

    def make_recorder():
        return Recorder()

    def main():
        market = SyntheticMarket({ASSETS}, seed={SEED})
        config = PoolConfig(worker_count=2, heartbeat_interval=0.5)
        with PersistentWorkerPool(config, handler_factory=make_recorder) as pool:
            pool.publish(market.snapshots() + list(market.updates({UPDATES})))
            books = {{asset_id: pool.get_book(asset_id) for asset_id in market.asset_ids}}
        print(json.dumps({{a: [b.bids, b.asks] for a, b in books.items()}}))
    """
)
GUARDED = PROGRAM + 'if __name__ == "__main__":\n    main()\n'
UNGUARDED = PROGRAM + "main()\n"  # a worker that re-ran this script would start a pool of its own

# How each way runs the program: its command line and standard input, given a function that writes a script.
RUNS: dict[str, Callable[[Callable[[str], Path]], tuple[list[str], str | None]]] = {
    "guarded script": lambda path: ([sys.executable, str(path(GUARDED))], None),
    "unguarded script": lambda path: ([sys.executable, str(path(UNGUARDED))], None),
    "python -c": lambda path: ([sys.executable, "-c", UNGUARDED], None),
    "standard input": lambda path: ([sys.executable, "-"], UNGUARDED),
    "IPython": lambda path: ([sys.executable, "-m", "IPython", "--no-banner", "--quick", "-c", UNGUARDED], None),
}


@pytest.mark.parametrize("how", list(RUNS))
def test_a_handler_defined_in_main_runs_in_the_workers_and_the_books_are_exact(how: str, tmp_path: Path) -> None:
    """The same program, run five ways: its handler runs in the two workers, and every book is exact."""
    # The user's directory holds modules named like ours: they must not be imported in place of them.
    for name in ("models", "monitors", "feeds"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    log = tmp_path / "handler.log"
    log.touch()

    def write(source: str) -> Path:
        script = tmp_path / "program.py"
        script.write_text(source)
        return script

    command, stdin = RUNS[how](write)
    result = subprocess.run(
        command,
        input=stdin,
        cwd=tmp_path,
        env={**os.environ, "HANDLER_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    books = json.loads(result.stdout.strip().splitlines()[-1])

    market = SyntheticMarket(ASSETS, seed=SEED)
    reference = ReferenceBooks()
    reference.apply_frames(market.snapshots() + list(market.updates(UPDATES)))
    assert sorted(books) == sorted(market.asset_ids)
    for asset_id, (bids, asks) in books.items():
        assert (as_decimals(map(tuple, bids)), as_decimals(map(tuple, asks))) == reference.levels(asset_id)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(asset_id for _, asset_id in lines) == sorted(market.asset_ids)  # one snapshot callback each
    assert len({pid for pid, _ in lines}) == 2  # in the two workers


def test_without_configured_logging_nothing_reaches_stdout_or_stderr(tmp_path: Path) -> None:
    """Used as a library with logging left unconfigured, the pool writes nothing to stdout or stderr."""
    program = PROGRAM.replace("print(json.dumps(", "(json.dumps(") + "main()\n"
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env={**os.environ, "HANDLER_LOG": os.devnull},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout, result.stderr) == ("", "")


def test_a_handlers_print_goes_to_the_workers_stdout(tmp_path: Path) -> None:
    """The worker's stdout is the parent's (the channel is a socket, so a print cannot corrupt it)."""
    program = (
        "from pool import PersistentWorkerPool, PoolConfig\n"
        "from pool._service._synthetic import SyntheticMarket\n"
        "market = SyntheticMarket(6, seed=317)\n"
        "with PersistentWorkerPool(PoolConfig(worker_count=2), "
        "handler_factory='tests.integration.handlers:PrintingHandler') as pool:\n"
        "    pool.publish(market.snapshots())\n"
        "    pool.flush(timeout=30)\n"
    )
    root = Path(__file__).parents[2]
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=root, capture_output=True, text=True, timeout=50, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    market = SyntheticMarket(6, seed=317)
    assert sorted(result.stdout.splitlines()) == sorted(f"snapshot {asset_id}" for asset_id in market.asset_ids)


def test_a_handler_may_start_a_process_of_its_own(tmp_path: Path) -> None:
    """Workers are not daemonic: a handler can start (and join) a multiprocessing child."""
    marker = tmp_path / "child-ran"
    market = SyntheticMarket(4, seed=311)
    factory = functools.partial(handlers.process_starting_handler, str(marker))
    with PersistentWorkerPool(PoolConfig(worker_count=1), handler_factory=factory) as pool:
        pool.publish(market.snapshots()[:1])
        pool.flush(timeout=30)
        stats = pool.get_stats()[0]
    assert stats.handler_errors == 0
    assert marker.read_text() == "ran"


class TestFactories:
    @pytest.mark.parametrize(
        "factory",
        [
            pytest.param(lambda: _Marker(), id="no argument"),
            pytest.param(lambda worker_id: _Marker(), id="the worker id"),
            pytest.param("tests.integration.test_where_it_runs:_Marker", id="a class, as an import path"),
        ],
    )
    def test_factory_shapes(self, factory: object) -> None:
        """A zero-argument callable, a callable taking the worker id, and a class all build the handler."""
        market = SyntheticMarket(2, seed=313)
        with PersistentWorkerPool(PoolConfig(worker_count=1), handler_factory=factory) as pool:  # type: ignore[arg-type]
            pool.publish(market.snapshots())
            pool.flush(timeout=30)
            assert pool.get_stats()[0].handler_errors == len(market.asset_ids)  # _Marker raises on purpose

    def test_wrong_signature_is_refused_at_construction(self) -> None:
        """A factory that takes two arguments is refused before anything starts, and the message says why."""
        before = child_pids()
        with pytest.raises(TypeError, match=r"must take no argument or one \(the worker id\)"):
            PersistentWorkerPool(PoolConfig(worker_count=1), handler_factory=lambda a, b: None)  # type: ignore[arg-type]
        assert child_pids() == before


def test_a_factory_a_worker_cannot_load_is_one_error_that_says_what_to_do(capfd: pytest.CaptureFixture[str]) -> None:
    """A factory that unpickles in no worker: one WorkerStartupError naming the cause and the fix, with the
    worker's traceback as its cause; no traceback per worker on stderr, and nothing left running."""
    before = child_pids()
    factory = functools.partial(handlers.handler_with, handlers.Unloadable())
    pool = PersistentWorkerPool(PoolConfig(worker_count=2), handler_factory=factory)
    with pytest.raises(WorkerStartupError) as caught, pool:
        pytest.fail("the pool must not start")
    message = str(caught.value)
    assert "could not load its handler factory (ModuleNotFoundError: No module named 'gone')" in message
    assert "make it importable there" in message
    assert "_refuse_to_load" in str(caught.value.__cause__)
    assert child_pids() == before
    assert capfd.readouterr().err == ""


class _Marker:
    """A handler whose snapshot callback raises, so the test can count that it ran."""

    def on_snapshot(self, book: object, event: object) -> None:
        raise RuntimeError("ran")


class TestWithInsideACoroutine:
    @pytest.mark.anyio
    async def test_refused_with_a_clear_error_and_nothing_started(self, anyio_backend: str) -> None:
        """`with` inside a running loop raises a PoolError naming `async with`; no process is started."""
        before = child_pids()
        pool = PersistentWorkerPool(PoolConfig(worker_count=1))
        with pytest.raises(PoolError, match="use `async with"), pool:
            pytest.fail("the pool must not start")
        assert child_pids() == before and pool.state is PoolState.CREATED
        with pytest.raises(PoolError, match="use `async with"):
            pool.publish(b"{}")
        async with pool:  # the same pool, entered the right way, works
            await pool.flush(timeout=10)
        assert pool.get_status().pool_status is PoolState.STOPPED
