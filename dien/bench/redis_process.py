"""A ``redis-server`` process on a free loopback port: what the history-store benchmark and the tests run against
when no Redis is given (``platform/install-redis.sh`` installs the binary). Without persistence by default; with
``append_only`` it logs every write to its append-only file and fsyncs it before answering, so an acknowledged
write survives the process being killed."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """``redis-server`` on 127.0.0.1; :meth:`stop` and :meth:`start` again keep its port."""

    def __init__(self, directory: Path, binary: str | None = None, append_only: bool = False) -> None:
        binary = binary or shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (bash platform/install-redis.sh installs it)")
        self.binary = binary
        self.directory = directory
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if append_only else ["--appendonly", "no"]
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *self.persistence,
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it finishes its writes), or with ``kill`` SIGKILL, as a crash does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
