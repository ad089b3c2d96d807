"""Handler factories are checked, and pickled for the workers, when the pool is built."""

from __future__ import annotations

import functools
import pickle
import threading
from typing import Any

import pytest

from pool._parent._factories import prepare_factory


class Handler:
    def __init__(self) -> None:
        self.built = True


class HandlerForWorker:
    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id


def make(worker_id: int) -> HandlerForWorker:
    return HandlerForWorker(worker_id)


def make_with(prefix: str, worker_id: int) -> str:
    return f"{prefix}{worker_id}"


class TestPrepareFactory:
    @pytest.mark.parametrize(
        ("factory", "takes_worker_id"),
        [
            (make, True),
            (Handler, False),
            (HandlerForWorker, True),
            (lambda: Handler(), False),
            (functools.partial(make_with, "w"), True),
            ("tests.unit.test_factories:make", True),
            (None, None),
        ],
    )
    def test_each_shape_is_called_the_way_it_takes(self, factory: Any, takes_worker_id: bool | None) -> None:
        """The signature decides whether the worker id is passed; what travels unpickles to the same call."""
        prepared = prepare_factory(factory)
        if takes_worker_id is None:
            assert prepared is None
            return
        assert prepared is not None and prepared.takes_worker_id is takes_worker_id
        rebuilt = pickle.loads(prepared.pickled)
        built = rebuilt(3) if takes_worker_id else rebuilt()
        assert built is not None

    @pytest.mark.parametrize(
        ("factory", "error", "message"),
        [
            (lambda a, b: None, TypeError, r"must take no argument or one \(the worker id\)"),
            (42, TypeError, "must be callable or an import path"),
            ("no_colon", ValueError, r"must look like 'package\.module:factory'"),
            ("tests.unit.test_factories:missing", AttributeError, "missing"),
            ("tests.unit.test_factories:Handler.built", AttributeError, "built"),
        ],
    )
    def test_a_wrong_factory_fails_here_with_the_reason(self, factory: Any, error: type, message: str) -> None:
        with pytest.raises(error, match=message):
            prepare_factory(factory)

    def test_a_factory_that_captures_a_lock_is_refused(self) -> None:
        lock = threading.Lock()
        with pytest.raises(TypeError, match="cannot be pickled"):
            prepare_factory(lambda: lock)
