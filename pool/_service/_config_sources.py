"""Build a `PoolConfig` from a TOML file, the environment and command-line flags, in that order of weight.

Each source is a mapping of field name to value; later sources override earlier ones field by field. The
merged mapping is decoded into `PoolConfig` with msgspec, so the file, the environment and the flags are
checked by the same rules as a `PoolConfig` built in code, and an error names the bad value the way its
source spelled it: ``pool.toml: worker_count = 0``, ``environment: WORKER_POOL_WORKER_COUNT='0'``,
``command line: --workers 0``, each followed by the rule. A ``WORKER_POOL_*`` variable that names no
setting is logged as a warning and ignored: the prefix is common enough that an unrelated tool may use it.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from pool.models import PoolConfig
from pool.models._logging import get_logger

__all__ = ["ENV_PREFIX", "ConfigError", "load_config"]

ENV_PREFIX = "WORKER_POOL_"
_FIELDS = frozenset(PoolConfig.__struct_fields__)
_log = get_logger("pool.cli")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the source, the key, the value and the rule."""


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
) -> PoolConfig:
    """The `PoolConfig` of a file, overridden by ``WORKER_POOL_<FIELD>`` variables, overridden by flags.

    ``flags`` holds only the options the user gave (``None`` values are ignored), by field name;
    ``flag_names`` says how each was typed (``{"worker_count": "--workers"}``), for the error message.
    Environment values are strings and are converted like the file's (``"4"`` becomes 4 for an int field).

    Raises:
        ConfigError: the file cannot be read or parsed, a key is unknown, or a value is invalid.
    """
    # Per source: its name, its values by field, and how that source spells a field and its value.
    layers: list[tuple[str, dict[str, Any], Callable[[str, Any], str]]] = []
    if path is not None:
        layers.append((str(path), _read_toml(path), lambda key, value: f"{key} = {value!r}"))
    env: dict[str, Any] = {}
    for name, value in (environ or {}).items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in _FIELDS:
            env[key] = value
        else:
            _log.warning(
                "unknown_setting_ignored",
                variable=name,
                hint=f"the settings are {', '.join(ENV_PREFIX + field.upper() for field in sorted(_FIELDS))}",
            )
    layers.append(("environment", env, lambda key, value: f"{ENV_PREFIX}{key.upper()}={value!r}"))
    typed = flag_names or {}
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    layers.append(("command line", given, lambda key, value: f"{typed.get(key, key)} {value}"))

    merged: dict[str, Any] = {}
    for source, values, spell in layers:
        for key, value in values.items():
            if key not in _FIELDS:
                raise ConfigError(f"{source}: unknown setting {key!r}; the settings are {', '.join(sorted(_FIELDS))}")
            # Each value is checked on its own first, so the error names the source that gave it.
            _convert({key: value}, f"{source}: {spell(key, value)}", key, strict=source != "environment")
            merged[key] = value
    return _convert(merged, "configuration", None, strict=False)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _convert(values: dict[str, Any], where: str, key: str | None, *, strict: bool) -> PoolConfig:
    try:
        return msgspec.convert(values, PoolConfig, strict=strict)
    except msgspec.ValidationError as exc:
        if key is None:
            raise ConfigError(f"{where}: {_reason(exc)}") from None
        reason = _reason(exc).removeprefix(f"{key} ")  # `where` already names the setting as the user wrote it
        raise ConfigError(f"{where}: {reason}{_choices(key)}") from None


def _choices(key: str) -> str:
    """``; allowed: 'a', 'b'`` for a field that takes one of fixed values (msgspec names only the bad one)."""
    kind = typing.get_type_hints(PoolConfig)[key]
    if typing.get_origin(kind) is typing.Literal:
        return "; allowed: " + ", ".join(map(repr, typing.get_args(kind)))
    return ""


def _reason(exc: msgspec.ValidationError) -> str:
    """msgspec's message, without the ``PoolConfig.`` prefix and the ``- at `$.field``` suffix."""
    return str(exc).split(" - at `$")[0].replace("PoolConfig.", "")
