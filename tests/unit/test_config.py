"""PoolConfig: defaults, validation at construction, and decoding from files."""

from __future__ import annotations

import os

import msgspec
import pytest

from pool.models import PoolConfig


class TestPoolConfig:
    def test_defaults(self) -> None:
        """Defaults are the documented ones; worker_count follows the CPU count."""
        config = PoolConfig()
        assert config.worker_count == (os.cpu_count() or 4)
        assert (config.heartbeat_interval, config.shutdown_timeout, config.worker_startup_timeout) == (5.0, 10.0, 30.0)
        assert config.effective_heartbeat_timeout == 15.0
        assert (config.memory_mb_per_1000_books, config.memory_threshold, config.memory_policy) == (
            100.0,
            0.75,
            "recycle",
        )

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"worker_count": 0}, ValueError, r"PoolConfig.worker_count must be in \[1, 1024\], got 0"),
            ({"worker_count": 2.5}, TypeError, "worker_count must be an int"),
            ({"worker_count": True}, TypeError, "worker_count must be an int"),
            ({"heartbeat_interval": 0}, ValueError, r"heartbeat_interval must be in \(0, 3600\]"),
            ({"heartbeat_interval": float("nan")}, ValueError, "heartbeat_interval"),
            ({"shutdown_timeout": -1.0}, ValueError, "shutdown_timeout"),
            ({"max_pending_messages": 0}, ValueError, "max_pending_messages"),
            ({"memory_threshold": 75}, ValueError, r"memory_threshold must be in \(0, 1\], got 75"),
            ({"memory_recycle_ratio": 1.5}, ValueError, r"memory_recycle_ratio must be in \(0, 1\], got 1.5"),
            ({"heartbeat_timeout": "5"}, TypeError, "heartbeat_timeout must be a number"),
            ({"start_method": "thread"}, ValueError, "start_method must be one of 'spawn'"),
            ({"start_method": "forkserver"}, ValueError, "never run your __main__ again"),
            ({"memory_policy": "panic"}, ValueError, "memory_policy must be one of"),
            ({"ray_placement_group": "spread"}, ValueError, "ray_placement_group must be one of 'PACK', 'SPREAD'"),
            ({"ray_placement_group": "PACK", "ray_num_cpus": 0}, ValueError, "needs ray_num_cpus > 0"),
        ],
    )
    def test_invalid_values_raise_at_construction(
        self, kwargs: dict[str, object], error: type[Exception], message: str
    ) -> None:
        """A bad value fails when the config is built, naming the field, the range and the value."""
        with pytest.raises(error, match=message):
            PoolConfig(**kwargs)  # type: ignore[arg-type]

    def test_unknown_keyword_is_rejected(self) -> None:
        with pytest.raises(TypeError, match="worker_cuont"):
            PoolConfig(worker_cuont=2)  # type: ignore[call-arg]

    def test_frozen(self) -> None:
        config = PoolConfig(worker_count=2)
        with pytest.raises(AttributeError):
            config.worker_count = 3  # type: ignore[misc]

    def test_decode_from_toml_and_json(self) -> None:
        """A file decodes straight into PoolConfig; ints are accepted for seconds."""
        config = msgspec.toml.decode(b"worker_count = 3\nshutdown_timeout = 2\n", type=PoolConfig)
        assert config == PoolConfig(worker_count=3, shutdown_timeout=2.0)
        assert msgspec.json.decode(b'{"worker_count": 2}', type=PoolConfig).worker_count == 2

    @pytest.mark.parametrize(
        ("document", "message"),
        [
            (b'{"worker_cuont": 2}', "unknown field `worker_cuont`"),
            (b'{"worker_count": 0}', r"worker_count must be in \[1, 1024\]"),
            (b'{"worker_count": "2"}', r"Expected `int`, got `str` - at `\$.worker_count`"),
        ],
    )
    def test_decode_errors_name_the_field(self, document: bytes, message: str) -> None:
        with pytest.raises(msgspec.ValidationError, match=message):
            msgspec.json.decode(document, type=PoolConfig)
