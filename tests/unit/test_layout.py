"""The house holds its shape: which part of the library may import which (see docs/worker_pool.md#the-house)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

POOL = Path(__file__).parents[2] / "pool"

# Part -> the parts it may import. `root` is the `pool` package itself (its face and its errors).
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "monitors": {"models"},
    "_wire": {"models"},
    "_worker": {"_wire", "models", "root"},  # `root` only as the parent package Python loads first
    "_parent": {"_wire", "models", "monitors", "root", "_worker"},  # `_worker` for its entry point only
    "root": {"models", "_parent"},  # `_parent` loaded lazily, on first use of the pool class
    "feeds": {"root", "models"},  # the public API
    "_service": {"root", "models", "feeds"},  # the public API and the feeds
    "__main__": {"_service"},
}
# The one private module every part may use: the library's logger factory (imports nothing of the library).
SHARED = {"pool.models._logging"}


def part_of(module: str) -> str:
    """`pool._parent._slot` -> `_parent`; `pool` and `pool._exceptions` -> `root`."""
    pieces = module.split(".")
    if len(pieces) == 1 or pieces[1] == "_exceptions":
        return "root"
    return pieces[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(POOL.glob("**/*.py")):  # follows pool/models and pool/monitors, the links
        relative = path.relative_to(POOL.parent).with_suffix("")
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        found.append((name, path))
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """Every `pool...` module that ``module`` imports, relative imports made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return {name for name in names if name == "pool" or name.startswith("pool.")}


@pytest.mark.parametrize(("module", "path"), modules(), ids=[name for name, _ in modules()])
def test_each_module_imports_only_what_its_part_may(module: str, path: Path) -> None:
    """The worker side imports only the wire and `pool.models`; the wire only `pool.models`; nothing in the
    library imports the service or the feeds; the feeds and the service stand on the public API."""
    part = part_of(module)
    for imported in imports_of(module, path) - SHARED:
        target = part_of(imported)
        if target == part:
            continue
        assert target in ALLOWED[part], f"{module} ({part}) imports {imported} ({target})"
        if part == "_parent" and target == "_worker":
            assert imported == "pool._worker", f"{module} reaches into the worker side: {imported}"
        if target == "root" and part != "_parent":
            assert imported == "pool", f"{module} imports {imported}: outside the library, use the public `pool`"


def test_a_worker_loads_none_of_the_parents_machinery() -> None:
    """A fresh interpreter that imports the worker proper (what `_bootstrap` imports) has not loaded anyio,
    structlog, the parent side, the service, the feeds or the monitors: a worker starts fast and stays small."""
    code = "import sys, pool._worker._entry; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    loaded = set(result.stdout.split())
    unwanted = {"anyio", "structlog", "cloudpickle", "pool._parent", "pool._service", "pool.feeds", "pool.monitors"}
    assert loaded & unwanted == set()
    assert {"pool._worker._loop", "pool._wire._protocol", "pool.models"} <= loaded
