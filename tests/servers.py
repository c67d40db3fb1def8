"""Real servers the tests start: a free loopback port, and a redis-server process."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dien.bench.redis_process import RedisProcess, free_port

__all__ = ["free_port", "redis_server_in"]

REQUIRE_REDIS_ENV = "DIEN_REQUIRE_REDIS"
"""Set (as ``.ci/run`` does): a missing redis-server fails the Redis tests instead of skipping them."""


def redis_server_in(directory: Path, append_only: bool = False) -> RedisProcess:
    """A redis-server for the tests; skips them (fails them under ``DIEN_REQUIRE_REDIS``) when none is installed."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (bash platform/install-redis.sh installs it)"
        if os.environ.get(REQUIRE_REDIS_ENV):
            pytest.fail(message)
        pytest.skip(message)
    return RedisProcess(directory, append_only=append_only)
