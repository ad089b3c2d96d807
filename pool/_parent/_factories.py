"""Handler factories: checked in the parent when the pool is built, shipped to each worker pickled.

A factory may be a callable taking the worker id, a callable taking nothing, a class (its own factory), or
an import path ``"package.module:factory"``. It is pickled with cloudpickle, as Dask, Ray and loky do:
by reference to its module when it has an importable one, by value when it was defined in ``__main__``, a
notebook, ``python -c`` or standard input, which a worker cannot import. Everything that can be checked
here is, so that a wrong factory fails at construction with one message, not once per worker.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import cloudpickle

__all__ = ["HandlerFactory", "PreparedFactory", "pickled", "prepare_factory", "resolve_callable"]

HandlerFactory: TypeAlias = Callable[[int], Any] | Callable[[], Any]


class PreparedFactory(NamedTuple):
    """A factory as the `Boot` message carries it."""

    pickled: bytes
    takes_worker_id: bool
    name: str


def resolve_callable(spec: Any, what: str = "handler_factory", example: str = "factory") -> Callable[..., Any]:
    """Turn ``"package.module:name"`` into the callable it names; pass a callable through. ``what`` names
    the argument in errors, ``example`` the attribute in the form they show.

    Raises:
        ValueError: the string is not of the form ``module:attribute``.
        ImportError, AttributeError: the module or the attribute does not exist.
        TypeError: the named object (or ``spec`` itself) is not callable.
    """
    if not isinstance(spec, str):
        if not callable(spec):
            raise TypeError(f"{what} must be callable or an import path string, got {type(spec).__name__}")
        return spec  # type: ignore[no-any-return]
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{what} {spec!r} must look like 'package.module:{example}'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{what} {spec!r} names a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def pickled(value: Any, what: str) -> bytes:
    """``value`` pickled with cloudpickle (by value if defined in ``__main__``), for a worker.

    Raises:
        TypeError: it cannot be pickled; the message says what a worker-bound value must not hold.
    """
    try:
        data: bytes = cloudpickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be pickled ({type(exc).__name__}: {exc}). Workers are separate processes, so it "
            "travels to them pickled: it must not capture locks, sockets, open files or other live resources"
        ) from exc
    return data


def prepare_factory(factory: HandlerFactory | str | None) -> PreparedFactory | None:
    """Check ``factory`` and pickle it for the workers (``None``: no handler).

    Raises:
        TypeError: it is not callable, takes neither no argument nor one, or cannot be pickled.
        ValueError, ImportError, AttributeError: a bad import path (see `resolve_callable`).
    """
    if factory is None:
        return None
    resolved = resolve_callable(factory)
    name = getattr(resolved, "__qualname__", None) or repr(resolved)
    takes_worker_id = _takes_worker_id(resolved, name)
    data = pickled(resolved, f"handler_factory {name} (create live resources inside it: it runs in each worker)")
    return PreparedFactory(data, takes_worker_id, name)


def _takes_worker_id(factory: Callable[..., Any], name: str) -> bool:
    """True if ``factory`` is called with the worker id, False if with nothing."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: the documented form
        return True
    for arguments in ((0,), ()):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return bool(arguments)
    raise TypeError(
        f"handler_factory {name}{signature} must take no argument or one (the worker id), as in "
        "`def make_handler(worker_id): ...`, `def make_handler(): ...` or a handler class; use "
        "functools.partial to bind any others"
    )
