"""An embedded JetStream cluster on loopback: `size` `nats-server` children routed to each other, for fault tests.

    async with EmbeddedCluster(3) as cluster:
        bus = await Bus.connect(cluster.url, BusSettings(replicas=3))   # every node's URL: the client fails over
        leader = await cluster.stream_leader(bus.js, "EXEC")
        cluster.kill(leader); ...; await cluster.restart(leader)         # same store, same ports: it catches up

Each node `n1..nN` has its own directory under `store_dir` (`<store_dir>/n1/`: JetStream store, config,
log) and one config file, `<store_dir>/n1/nats-server.conf`, written by `node_config`:

    server_name: n1
    # jetstream: `-js -sd <store_dir>/n1/jetstream` on the command line (the server refuses it twice)
    cluster {
      name: execbus
      listen: 127.0.0.1:<route port>
      routes: [ nats-route://127.0.0.1:<the other nodes' route ports> ]
      <cluster_extra>          e.g. a tls { ... } block for the routes
    }
    <config_extra>             verbatim at top level, e.g. authorization { ... } and tls { ... } for clients

The client port is picked by the server (`-p -1`, read back from its ports file) and so is the monitoring
port (`-m -1`); both are kept for restarts. Route ports cannot be picked that way, since every peer must
know them before it starts: they are taken up front (a socket bound to port 0, then closed) and the whole
start is tried again with fresh ports if a node finds its port taken in the meantime.

Readiness is read from each node's HTTP monitoring endpoint, which needs no credentials whatever
`config_extra` demands of clients: `/healthz` answers 200 only once the node knows a JetStream meta leader,
is current with it and has caught up with the streams it holds.

Election timing (nats-server `server/raft.go`, fixed in the binary, not configurable): a follower that hears
no heartbeat (sent every 1 s) for a random 4-9 s (`minElectionTimeout`, `maxElectionTimeout`) becomes a
candidate; one behind on applying what it has (busy, or just caught up) waits in rounds of 1 s first. Every
group (the meta group, each stream, each consumer) runs its own election, so after a SIGKILL of a leader most
groups have a new one within 4-10 s; when the two survivors of a three-node group both stand at once, each
votes for itself and another 4-9 s round follows (16 s seen in these tests). A SIGTERM'd leader steps down
first and the move takes well under a second. A leader also steps down by itself when it has not heard
from a quorum for `lostQuorumInterval` (10 s); a node resumed after a longer SIGSTOP finds a higher term and
follows. A client connected to a SIGSTOPped server hears nothing and, TCP being up, only notices by its pings
(nats-py: every `ping_interval`, 120 s by default, `max_outstanding_pings` 2 missed).

Processes never outlive the test run: nodes are started with `die_with_parent` (Linux) and every cluster
still running at interpreter exit is SIGKILLed by an `atexit` hook.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import socket
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import structlog

from bus.server import EmbeddedNats

__all__ = ["EmbeddedCluster", "node_config", "ClusterNotReady"]

log = structlog.get_logger("execbus.bus.cluster")

_START_ATTEMPTS = 3
_live: weakref.WeakSet[EmbeddedCluster] = weakref.WeakSet()


class ClusterNotReady(TimeoutError):
    """A node did not become healthy (meta leader known, current, its streams caught up) in time."""


class _PortTaken(RuntimeError):
    """A node's route or monitoring port was taken between picking it and the server binding it."""


def node_config(
    index: int,
    route_ports: list[int],
    store_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    name: str = "execbus",
    config_extra: str = "",
    cluster_extra: str = "",
    route_password: str | None = None,
) -> str:
    """The config file of node `index` (0-based; named `n{index+1}`): routes to every other node's port.

    With `route_password`, a node accepts a route only from a peer that gives it (user `route`), and gives it
    to its peers: without it, any process that reaches the route port could join the cluster and bypass every
    client permission. The file is the only place it is written (mode 0600, never a command line)."""
    login = f"route:{route_password}@" if route_password else ""
    routes = "\n".join(f"    {json.dumps(f'nats-route://{login}{host}:{port}')}"
                       for i, port in enumerate(route_ports) if i != index)
    if route_password:
        cluster_extra = f"authorization {{ user: \"route\", password: {json.dumps(route_password)} }}\n" + cluster_extra
    cluster_extra = _indent(cluster_extra.strip(), "  ")
    return (
        f"# node n{index + 1} of cluster {name!r}, written by bus.cluster.EmbeddedCluster\n"
        f"server_name: n{index + 1}\n"
        # The store is also on the command line (EmbeddedNats's `-js -sd`), which the server refuses twice.
        f"# jetstream {{ store_dir: {json.dumps(str(store_dir))} }}  (given as -js -sd on the command line)\n"
        f"cluster {{\n"
        f"  name: {json.dumps(name)}\n"
        f"  listen: {json.dumps(f'{host}:{route_ports[index]}')}\n"
        f"  routes: [\n{routes}\n  ]\n"
        + (f"{cluster_extra}\n" if cluster_extra else "")
        + "}\n"
        + (f"{config_extra.strip()}\n" if config_extra.strip() else "")
    )


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line.strip() else line for line in text.splitlines())


def _free_ports(host: str, n: int) -> list[int]:
    """`n` distinct ports free right now (held open together, so they differ, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EmbeddedCluster:
    """`size` nats-server nodes routed to each other on `host`; node `i` is `nodes[i]`, named `n{i+1}`."""

    def __init__(
        self,
        size: int = 3,
        *,
        store_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        config_extra: str = "",
        cluster_extra: str = "",
        route_password: str | None = None,
        name: str = "execbus",
        ready_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self._owned_tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._owned_tmp = tempfile.TemporaryDirectory(prefix="execbus-cluster-")
            store_dir = self._owned_tmp.name
        self.store_dir = Path(store_dir)
        self.size = size
        self.host = host
        self.config_extra = config_extra
        self.cluster_extra = cluster_extra
        self.route_password = route_password
        self.name = name
        self.ready_timeout = ready_timeout
        self.route_ports: list[int] = []
        self.nodes: list[EmbeddedNats] = []
        self._log_start: list[int] = []

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.size)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what `Bus.connect` / `bus.connect.connect` take."""
        return ",".join(self.urls)

    def index_of(self, server_name: str) -> int:
        try:
            return self.names.index(server_name)
        except ValueError:
            raise ValueError(f"no node named {server_name!r} in {self.names}") from None

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> EmbeddedCluster:
        """Start every node; returns once each answers clients and is healthy (meta leader known)."""
        _live.add(self)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.route_ports = _free_ports(self.host, self.size)
            self.nodes = [self._node(i) for i in range(self.size)]
            self._log_start = [_size(node.log_path) for node in self.nodes]  # logs append: read this attempt's
            try:
                await asyncio.gather(*(node.start() for node in self.nodes))
                await self.wait_ready()
            except (_PortTaken, RuntimeError, TimeoutError) as exc:
                taken = isinstance(exc, _PortTaken) or any(self._port_taken(i) for i in range(self.size))
                self._kill_all()
                if not taken or attempt == _START_ATTEMPTS:
                    raise
                log.warning("cluster_port_taken_retrying", attempt=attempt, error=str(exc)[:200])
                continue
            log.info("cluster_started", name=self.name, urls=self.urls, route_ports=self.route_ports)
            return self
        raise AssertionError("unreachable")

    def _node(self, i: int) -> EmbeddedNats:
        node_dir = self.store_dir / self.names[i]
        return EmbeddedNats(
            store_dir=node_dir,
            host=self.host,
            config_text=node_config(
                i, self.route_ports, node_dir / "jetstream", host=self.host, name=self.name,
                config_extra=self.config_extra, cluster_extra=self.cluster_extra, route_password=self.route_password,
            ),
            http_port=-1,
            server_name=self.names[i],
            die_with_parent=True,
        )

    def _port_taken(self, i: int) -> bool:
        """Did node `i` fail, in this start attempt, on a port someone else took in the meantime?"""
        try:
            with open(self.nodes[i].log_path, "rb") as f:
                f.seek(self._log_start[i] if i < len(self._log_start) else 0)
                return b"address already in use" in f.read().lower()
        except OSError:
            return False

    async def stop(self) -> None:
        """SIGTERM every node (paused ones are resumed first), all at once."""
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)
        _live.discard(self)

    def cleanup(self) -> None:
        if self._owned_tmp is not None:
            self._owned_tmp.cleanup()
            self._owned_tmp = None

    async def __aenter__(self) -> EmbeddedCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.cleanup()

    def _kill_all(self) -> None:
        for node in self.nodes:
            node.kill()

    # -- faults ----------------------------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """SIGKILL node `i`: no flush, no leader step-down."""
        log.info("cluster_node_killed", node=self.names[i], pid=self.nodes[i].pid)
        self.nodes[i].kill()

    async def restart(self, i: int, *, wait: bool = True) -> None:
        """Start node `i` again on its store and ports (after `kill` or `stop_node`); with `wait`, return once it
        is healthy, i.e. caught up with the meta leader and the streams it holds."""
        node = self.nodes[i]
        if node.running:
            raise RuntimeError(f"{self.names[i]} is still running")
        await node.start()
        log.info("cluster_node_restarted", node=self.names[i], pid=node.pid)
        if wait:
            await self.wait_ready([i])

    async def stop_node(self, i: int) -> None:
        """SIGTERM node `i` (a clean shutdown: its leaderships are handed over first)."""
        await self.nodes[i].stop()

    def pause(self, i: int) -> None:
        """SIGSTOP node `i`: alive with its sockets open, answering nobody."""
        log.info("cluster_node_paused", node=self.names[i], pid=self.nodes[i].pid)
        self.nodes[i].pause()

    def resume(self, i: int) -> None:
        """SIGCONT node `i`; `await wait_ready([i])` to wait until it has caught up."""
        self.nodes[i].resume()
        log.info("cluster_node_resumed", node=self.names[i])

    # -- observation -----------------------------------------------------------------------------------------

    async def wait_ready(self, indices: list[int] | None = None, timeout: float | None = None) -> None:
        """Until each node of `indices` (default: every running, unpaused one) answers `/healthz` with 200."""
        if indices is None:
            targets = [i for i, node in enumerate(self.nodes) if node.running and not node.paused]
        else:
            targets = list(indices)
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        last: dict[int, str] = {}
        while True:
            pending = []
            for i in targets:
                node = self.nodes[i]
                if not node.running:
                    if self._port_taken(i):
                        raise _PortTaken(f"{self.names[i]}: {node.log_path}")
                    raise RuntimeError(f"{self.names[i]} exited: {_tail(node.log_path)}")
                status, body = await self.monitor(i, "/healthz")
                if status != 200:
                    last[i] = body[:300]
                    pending.append(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                detail = "; ".join(f"{self.names[i]}: {last.get(i, '?')}" for i in pending)
                raise ClusterNotReady(f"not healthy within the timeout: {detail}")
            await asyncio.sleep(0.1)

    async def monitor(self, i: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET `path` from node `i`'s monitoring endpoint: (HTTP status, body); (0, error) when unreachable
        (a paused node, too, after `timeout`)."""
        url = self.nodes[i].monitor_url
        if url is None:
            return 0, "no monitoring port"
        host, port = url.removeprefix("http://").rsplit(":", 1)
        try:
            return await asyncio.wait_for(_http_get(host, int(port), path), timeout)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            return 0, repr(exc)

    async def monitor_json(self, i: int, path: str, timeout: float = 2.0) -> dict[str, Any]:
        status, body = await self.monitor(i, path, timeout)
        if status != 200:
            raise RuntimeError(f"{self.names[i]} {path}: {status} {body[:300]}")
        return json.loads(body)

    async def meta_leader(self, timeout: float = 15.0) -> int:
        """Index of the JetStream meta leader, as a running, unpaused node reports it (`/jsz`)."""

        async def probe() -> int | None:
            for i, node in enumerate(self.nodes):
                if node.running and not node.paused:
                    status, body = await self.monitor(i, "/jsz")
                    leader = (json.loads(body).get("meta_cluster") or {}).get("leader") if status == 200 else None
                    if leader:
                        return self.index_of(leader)
            return None

        return await _poll(probe, timeout, "no JetStream meta leader")

    async def stream_leader(self, js: Any, stream: str, timeout: float = 15.0) -> int:
        """Index of the node leading `stream`, waiting out an election.

        With `js` (a JetStream context): `stream_info(...).cluster.leader`, the answer a client gets. With
        `js=None`: from the monitoring endpoints, the running, unpaused node that reports itself the leader;
        what a test needs while a paused server may hold its own connection (a client on a SIGSTOPped server
        hears nothing until its pings time out, two minutes by default)."""

        async def probe() -> int | None:
            if js is None:
                return await self._self_declared_leader(stream)
            try:
                info = await js.stream_info(stream)
            except Exception:  # an election under way: the API has no leader to answer yet
                return None
            leader = info.cluster.leader if info.cluster is not None else None
            return self.index_of(leader) if leader else None

        return await _poll(probe, timeout, f"stream {stream} has no leader")

    async def _self_declared_leader(self, stream: str) -> int | None:
        claims: list[tuple[str, int]] = []
        for i, node in enumerate(self.nodes):
            if not node.running or node.paused:
                continue
            try:
                detail = await self._stream_detail(i, stream)
            except (RuntimeError, ValueError):
                continue
            cluster = (detail or {}).get("cluster") or {}
            if cluster.get("leader") == self.names[i]:
                claims.append((cluster.get("leader_since") or "", i))
        # A resumed old leader may still claim the group for a moment: the newer claim is the real one.
        return max(claims)[1] if claims else None

    async def _stream_detail(self, i: int, stream: str) -> dict[str, Any] | None:
        jsz = await self.monitor_json(i, "/jsz?accounts=true&streams=true")
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return detail
        return None

    async def move_stream_leader(self, js: Any, stream: str, to: int, timeout: float = 15.0) -> None:
        """Make node `to` lead `stream` (a leader step-down naming it as the preferred successor), and wait
        until it does; a fault test uses it to put the leader where the fault will be."""
        if await self.stream_leader(js, stream, timeout) == to:
            return
        request = json.dumps({"placement": {"preferred": self.names[to]}}).encode()
        reply = await js._nc.request(f"{js._prefix}.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5.0)
        error = json.loads(reply.data).get("error")
        if error:
            raise RuntimeError(f"stream {stream} leader step-down to {self.names[to]} refused: {error}")

        async def moved() -> int | None:
            return to if await self.stream_leader(js, stream, timeout) == to else None

        await _poll(moved, timeout, f"stream {stream} not led by {self.names[to]}")

    async def clients(self, i: int) -> list[str]:
        """Names of the client connections node `i` serves (`/connz`), e.g. to say who a fault cuts off."""
        connz = await self.monitor_json(i, "/connz?limit=1024")
        return sorted(c.get("name") or f"cid {c.get('cid')}" for c in connz.get("connections") or [])

    def connected_node(self, nc: Any) -> int | None:
        """Index of the node a nats-py client is connected to right now (None while it is not)."""
        url = nc.connected_url
        if url is None:
            return None
        for i, node in enumerate(self.nodes):
            if url.port == node.port:
                return i
        return None

    async def stream_state(self, i: int, stream: str) -> dict[str, Any] | None:
        """Node `i`'s own copy of `stream` (`state` of `/jsz?streams=true`: messages, first_seq, last_seq, ...),
        not the leader's answer a client would get; None when the node holds no copy."""
        detail = await self._stream_detail(i, stream)
        return None if detail is None else detail.get("state") or {}


async def _poll(probe: Any, timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        await asyncio.sleep(0.1)


async def _http_get(host: str, port: int, path: str) -> tuple[int, str]:
    """A bare HTTP/1.0 GET: the monitoring endpoint is plain HTTP on loopback, no client library needed."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode(errors="replace")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed before its cleanup must not leave servers (paused ones least of all) behind."""
    for cluster in list(_live):
        cluster._kill_all()
