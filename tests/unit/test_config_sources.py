"""Configuration from a TOML file, the environment and flags: precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pool._service._config_sources import ConfigError, load_config
from tests.support import captured_logs


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(text)
    return path


def test_file_values_are_decoded_into_pool_config(tmp_path: Path) -> None:
    path = write(tmp_path, 'worker_count = 3\nheartbeat_interval = 0.5\nmemory_policy = "restart"\n')
    config = load_config(path)
    assert (config.worker_count, config.heartbeat_interval, config.memory_policy) == (3, 0.5, "restart")


def test_environment_beats_the_file_and_flags_beat_both(tmp_path: Path) -> None:
    path = write(tmp_path, "worker_count = 3\nmax_restarts = 7\n")
    env = {"WORKER_POOL_WORKER_COUNT": "2", "WORKER_POOL_SHUTDOWN_TIMEOUT": "4.5", "UNRELATED": "x"}
    from_env = load_config(path, env)
    assert (from_env.worker_count, from_env.max_restarts, from_env.shutdown_timeout) == (2, 7, 4.5)
    assert load_config(path, env, {"worker_count": 1}).worker_count == 1
    assert load_config(path, env, {"worker_count": None}).worker_count == 2  # a flag not given is no override


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("worker_count = 0\n", r"pool\.toml: worker_count = 0: must be in \[1, 1024\]"),
        ('worker_count = "four"\n', r"worker_count = 'four': Expected `int`, got `str`"),
        ('memory_policy = "sometimes"\n', r"memory_policy = 'sometimes': .*'recycle', 'restart', 'callback'"),
        ("workers = 2\n", r"pool\.toml: unknown setting 'workers'; the settings are .*worker_count"),
        ("worker_count = \n", r"pool\.toml: not valid TOML"),
    ],
)
def test_a_bad_file_value_names_the_key_the_value_and_the_rule(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_a_bad_environment_value_names_the_variable() -> None:
    """The error names the variable as it was set, not the field."""
    with pytest.raises(
        ConfigError, match=r"environment: WORKER_POOL_HEARTBEAT_INTERVAL='-1': .*must be in \(0, 3600\]"
    ):
        load_config(None, {"WORKER_POOL_HEARTBEAT_INTERVAL": "-1"})
    with pytest.raises(ConfigError, match=r"environment: WORKER_POOL_WORKER_COUNT='four': Expected `int`"):
        load_config(None, {"WORKER_POOL_WORKER_COUNT": "four"})


def test_an_unrelated_prefixed_variable_is_a_warning_not_an_error() -> None:
    """WORKER_POOL_WORKERS names no setting: logged as a warning naming it and the settings, and ignored."""
    with captured_logs() as logs:
        config = load_config(None, {"WORKER_POOL_WORKERS": "2", "WORKER_POOL_MAX_RESTARTS": "3"})
    assert config.max_restarts == 3
    [warning] = [entry for entry in logs if entry["event"] == "unknown_setting_ignored"]
    assert warning["log_level"] == "warning" and warning["variable"] == "WORKER_POOL_WORKERS"
    assert "WORKER_POOL_WORKER_COUNT" in str(warning["hint"])


def test_a_bad_flag_is_named_as_it_was_typed() -> None:
    with pytest.raises(ConfigError, match=r"^command line: --workers 0: .*must be in \[1, 1024\]"):
        load_config(None, {}, {"worker_count": 0}, flag_names={"worker_count": "--workers"})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the config file"):
        load_config(tmp_path / "missing.toml")
