"""The public surface: each package's __all__ is sorted, complete, and names public objects."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ["pool", "models", "monitors", "feeds"]
# Names a package re-exports for convenience from the package that defines them.
REEXPORTS = {"pool": {"PoolConfig": "models"}}


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_resolves(name: str) -> None:
    """__all__ is sorted, and every name in it resolves to an object whose repr shows the package."""
    package = importlib.import_module(name)
    assert package.__all__ == sorted(package.__all__)
    for attribute in package.__all__:
        value = getattr(package, attribute)
        if isinstance(value, type):
            home = REEXPORTS.get(name, {}).get(attribute, name)
            assert value.__module__ == home, f"{name}.{attribute} shows as {value.__module__}"


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_complete(name: str) -> None:
    """Every public (non-underscore, non-module) name the package defines is in __all__."""
    package = importlib.import_module(name)
    public = {
        attribute
        for attribute, value in vars(package).items()
        if not attribute.startswith("_")
        and not isinstance(value, types.ModuleType)
        and attribute not in ("annotations", "TYPE_CHECKING", "Any")
    }
    assert public <= set(package.__all__)


def test_worker_does_not_import_the_parent_machinery() -> None:
    """A worker process imports pool._worker; that must not pull in anyio or the pool class."""
    import subprocess
    import sys

    code = "import sys, pool._worker; print('anyio' in sys.modules, 'pool._pool' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert result.stdout.split() == ["False", "False"]
