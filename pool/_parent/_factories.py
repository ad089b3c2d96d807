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

__all__ = ["HandlerFactory", "PreparedFactory", "prepare_factory", "resolve_factory"]

HandlerFactory: TypeAlias = Callable[[int], Any] | Callable[[], Any]


class PreparedFactory(NamedTuple):
    """A factory as the `Boot` message carries it."""

    pickled: bytes
    takes_worker_id: bool
    name: str


def resolve_factory(factory: HandlerFactory | str) -> HandlerFactory:
    """Turn ``"package.module:factory"`` into the callable it names; pass a callable through.

    Raises:
        ValueError: the string is not of the form ``module:attribute``.
        ImportError, AttributeError: the module or the attribute does not exist.
        TypeError: the named object is not callable.
    """
    if not isinstance(factory, str):
        return factory
    module_name, sep, attribute = factory.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"handler_factory {factory!r} must look like 'package.module:factory'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"handler_factory {factory!r} names a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def prepare_factory(factory: HandlerFactory | str | None) -> PreparedFactory | None:
    """Check ``factory`` and pickle it for the workers (``None``: no handler).

    Raises:
        TypeError: it is not callable, takes neither no argument nor one, or cannot be pickled.
        ValueError, ImportError, AttributeError: a bad import path (see `resolve_factory`).
    """
    if factory is None:
        return None
    if not isinstance(factory, str) and not callable(factory):
        raise TypeError(f"handler_factory must be callable or an import path string, got {type(factory).__name__}")
    resolved = resolve_factory(factory)
    name = getattr(resolved, "__qualname__", None) or repr(resolved)
    takes_worker_id = _takes_worker_id(resolved, name)
    try:
        pickled = cloudpickle.dumps(resolved)
    except Exception as exc:
        raise TypeError(
            f"handler_factory {name} cannot be pickled ({type(exc).__name__}: {exc}). Workers are separate "
            "processes, so the factory travels to them pickled: it must not capture locks, sockets, open files "
            "or other live resources. Create those inside the factory, which runs in each worker"
        ) from exc
    return PreparedFactory(pickled, takes_worker_id, name)


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
