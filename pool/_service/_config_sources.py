"""Build a `PoolConfig` from a TOML file, the environment and command-line flags, in that order of weight.

Each source is a mapping of field name to value; later sources override earlier ones field by field. The
merged mapping is decoded into `PoolConfig` with msgspec, so the file, the environment and the flags are
checked by the same rules as a `PoolConfig` built in code, and an error names where the bad value came
from: ``pool.toml: worker_count = 0: must be in [1, 1024]``.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from pool.models import PoolConfig

__all__ = ["ENV_PREFIX", "ConfigError", "load_config"]

ENV_PREFIX = "WORKER_POOL_"
_FIELDS = frozenset(PoolConfig.__struct_fields__)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the source, the key, the value and the rule."""


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> PoolConfig:
    """The `PoolConfig` of a file, overridden by ``WORKER_POOL_<FIELD>`` variables, overridden by flags.

    ``flags`` holds only the options the user gave (``None`` values are ignored). Environment values are
    strings and are converted like the file's (``"4"`` becomes 4 for an int field).

    Raises:
        ConfigError: the file cannot be read or parsed, a key is unknown, or a value is invalid.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), _read_toml(path)))
    env = {
        name[len(ENV_PREFIX) :].lower(): value for name, value in (environ or {}).items() if name.startswith(ENV_PREFIX)
    }
    layers.append(("environment", {_env_key(key): value for key, value in env.items()}))
    layers.append(("command line", {key: value for key, value in (flags or {}).items() if value is not None}))

    merged: dict[str, Any] = {}
    for source, values in layers:
        for key, value in values.items():
            if key not in _FIELDS:
                raise ConfigError(f"{source}: unknown setting {key!r}; the settings are {', '.join(sorted(_FIELDS))}")
            # Each value is checked on its own first, so the error names the source that gave it.
            _convert({key: value}, source, key, strict=source != "environment")
            merged[key] = value
    return _convert(merged, "configuration", None, strict=False)


def _env_key(key: str) -> str:
    if key not in _FIELDS:
        raise ConfigError(
            f"environment: {ENV_PREFIX}{key.upper()} names no setting; the settings are "
            f"{', '.join(ENV_PREFIX + name.upper() for name in sorted(_FIELDS))}"
        )
    return key


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _convert(values: dict[str, Any], source: str, key: str | None, *, strict: bool) -> PoolConfig:
    try:
        return msgspec.convert(values, PoolConfig, strict=strict)
    except msgspec.ValidationError as exc:
        if key is None:
            raise ConfigError(f"{source}: {_reason(exc)}") from None
        raise ConfigError(f"{source}: {key} = {values[key]!r}: {_reason(exc)}{_choices(key)}") from None


def _choices(key: str) -> str:
    """``; allowed: 'a', 'b'`` for a field that takes one of fixed values (msgspec names only the bad one)."""
    kind = typing.get_type_hints(PoolConfig)[key]
    if typing.get_origin(kind) is typing.Literal:
        return "; allowed: " + ", ".join(map(repr, typing.get_args(kind)))
    return ""


def _reason(exc: msgspec.ValidationError) -> str:
    """msgspec's message, without the ``PoolConfig.`` prefix and the ``- at `$.field``` suffix."""
    return str(exc).split(" - at `$")[0].replace("PoolConfig.", "")
