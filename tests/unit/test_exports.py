"""The public surface: each package's __all__ is sorted, complete, and names public objects."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

PACKAGES = ["pool", "pool.models", "pool.monitors", "pool.feeds"]
# Names a package re-exports for convenience from the package that defines them.
REEXPORTS = {
    "pool": {name: "pool.models" for name in ("PoolConfig", "TaskPriority", "TaskState", "TaskStatus")},
}
ROOT = Path(__file__).parents[2]
SHORT_NAMES = {"models", "monitors", "feeds"}


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


def test_a_users_own_models_monitors_and_feeds_do_not_shadow_ours(tmp_path: Path) -> None:
    """A script next to its own models.py, monitors.py and feeds.py still imports every public name."""
    import subprocess
    import sys

    for name in ("models", "monitors", "feeds"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    script = "; ".join(f"from {package} import *" for package in PACKAGES) + "; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


def test_nothing_imports_the_folders_by_their_top_level_names() -> None:
    """`models`, `monitors` and `feeds` are only ever imported as `pool.models`, `pool.monitors`, `pool.feeds`:
    imported by the short name from the source tree, they would be second copies of every class."""
    offenders = []
    for path in sorted(ROOT.glob("**/*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] in SHORT_NAMES]
    assert offenders == []
