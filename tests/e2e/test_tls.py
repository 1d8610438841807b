"""The bus over TLS, on a real nats-server configured with `bus.tls.server_block` / `cluster_block` and a CA
generated for the test: plain text and strangers are refused, the CA's clients get core NATS and JetStream,
the whole system executes an intent, and cluster routes verify each other."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path

import nats
import pytest

from bus.connect import ClientAuth, connect
from bus.ops.client import execute
from bus.server import EmbeddedNats
from bus.tls import TlsFiles, client_context, cluster_block, generate, server_block
from messages import ExecutionCompleted
from tests.e2e.conftest import start_running, stop_running, system_config
from tests.helpers import assert_invariants, new_intent, wait_until

# Quotes, a backslash, a space and a `$` in the path: the config text must quote them, or the server reads
# another path (or a variable) and does not start.
ODD_DIR = 'tls "run" \\ $dir'


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    return generate(tmp_path / ODD_DIR)


def config_file(directory: Path, name: str, text: str) -> str:
    path = directory / f"{name}.conf"
    path.write_text(text)
    return str(path)


@pytest.fixture
async def server(tmp_path: Path, files: TlsFiles) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(config_file=config_file(tmp_path, "tls", server_block(files))) as running:
        yield running


async def refused(url: str, **options: object) -> BaseException:
    """What a one-shot `nats.connect` raises (fails the test if it connects)."""
    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **options)
    except Exception as exc:
        return exc
    await nc.close()
    raise AssertionError(f"connected to {url} with {options or 'no TLS options'}")


async def test_a_client_speaking_plain_text_is_refused(server: EmbeddedNats) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        info = json.loads((await reader.readline()).split(b" ", 1)[1])
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # up to EOF: the server hangs up
    finally:
        writer.close()

    assert info["tls_required"] is True
    assert answer == b"", f"the server answered plain text with {answer!r}"


async def test_a_client_with_no_tls_options_is_refused(server: EmbeddedNats) -> None:
    # nats-py upgrades to TLS when the server requires it, with the system's CAs: they do not know ours.
    exc = await refused(server.url)

    assert "certificate verify failed" in str(exc)


async def test_a_client_trusting_another_ca_is_refused(server: EmbeddedNats, tmp_path: Path) -> None:
    stranger = generate(tmp_path / "other-ca")

    exc = await refused(server.url, tls=client_context(stranger.ca_cert))

    assert "unable to get local issuer certificate" in str(exc)


async def test_a_url_whose_host_the_certificate_does_not_name_is_refused(tmp_path: Path) -> None:
    only_a_name = generate(tmp_path / "named", hosts=("nats.internal",))

    async with EmbeddedNats(config_file=config_file(tmp_path, "named", server_block(only_a_name))) as named:
        exc = await refused(named.url, tls=client_context(only_a_name.ca_cert))  # dials 127.0.0.1

    assert "IP address mismatch" in str(exc)


async def test_a_client_trusting_the_ca_gets_requests_and_jetstream(server: EmbeddedNats, files: TlsFiles) -> None:
    nc = await asyncio.wait_for(connect(server.url, auth=ClientAuth(ca_file=str(files.ca_cert))), 10)
    try:
        async def echo(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b"echo:" + msg.data)

        await nc.subscribe("tls.echo", cb=echo)
        reply = await nc.request("tls.echo", b"hello", timeout=2)
        account = await nc.jetstream().account_info()
    finally:
        await nc.close()

    assert reply.data == b"echo:hello"
    assert account.limits is not None


@pytest.fixture
def trusting_the_ca(files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection the system makes trusts the run's CA, as under `execbus up` with EXECBUS_NATS_CA."""
    monkeypatch.setenv("EXECBUS_NATS_CA", str(files.ca_cert))


async def test_the_whole_system_executes_an_intent_over_tls(server: EmbeddedNats, trusting_the_ca: None) -> None:
    running = await asyncio.wait_for(start_running(system_config(nats_url=server.url)), 20)
    try:
        intent = new_intent(qty=Decimal("0.2"))

        report = await execute(running.bus, intent, timeout=15)

        assert isinstance(report, ExecutionCompleted) and report.status == "filled"
        assert report.filled_qty == Decimal("0.2")
        await assert_invariants(report, running.recorder, running.exchange)
    finally:
        await stop_running(running)


# -- a cluster -------------------------------------------------------------------------------------------------


def node_config(name: str, files: TlsFiles, routes: list[str]) -> str:
    return (
        f"server_name: {name}\n"
        + server_block(files)
        + "cluster {\n  name: tls-test\n  listen: \"127.0.0.1:-1\"\n"
        + f"  routes: {json.dumps(routes)}\n"
        + cluster_block(files)
        + "}\n"
    )


def cluster_url(node: EmbeddedNats) -> str:
    (ports,) = (node.store_dir / "ports").glob("*.ports")
    return str(json.loads(ports.read_text())["cluster"][0]).replace("tls://", "nats-route://")


def log_of(node: EmbeddedNats) -> str:
    return (node.store_dir / "nats-server.log").read_text()


async def node(stack: AsyncExitStack, directory: Path, name: str, files: TlsFiles, routes: list[str]) -> EmbeddedNats:
    started = EmbeddedNats(config_file=config_file(directory, name, node_config(name, files, routes)))
    return await stack.enter_async_context(started)


async def test_cluster_routes_speak_tls_and_refuse_a_node_of_another_ca(tmp_path: Path, files: TlsFiles) -> None:
    stranger = generate(tmp_path / "other-ca")
    async with AsyncExitStack() as stack:
        # JetStream (EmbeddedNats always runs -js) will not start a clustered node without a configured route:
        # the first node's one route points at a port held bound (so nobody else takes it) but never listening.
        nowhere = stack.enter_context(socket.socket())
        nowhere.bind(("127.0.0.1", 0))
        first = await node(stack, tmp_path, "n1", files, [f"nats-route://127.0.0.1:{nowhere.getsockname()[1]}"])
        second = await node(stack, tmp_path, "n2", files, [cluster_url(first)])
        foreign = await node(stack, tmp_path, "n3", stranger, [cluster_url(first)])
        c1 = await nats.connect(first.url, tls=client_context(files.ca_cert))
        stack.push_async_callback(c1.close)
        c2 = await nats.connect(second.url, tls=client_context(files.ca_cert))
        stack.push_async_callback(c2.close)
        sub = await c1.subscribe("across")
        await c1.flush()

        async def crossed() -> bool:  # once n1's interest has reached n2 over the route
            await c2.publish("across", b"over tls")
            try:
                return (await sub.next_msg(timeout=0.1)).data == b"over tls"
            except nats.errors.TimeoutError:
                return False

        await wait_until(crossed, timeout=10)
        await wait_until(lambda: "TLS route handshake error" in log_of(foreign), timeout=10)
        second_log, foreign_log = log_of(second), log_of(foreign)

    assert "Route connection created" in second_log
    assert "certificate signed by unknown authority" in foreign_log
    assert "Route connection created" not in foreign_log


async def test_a_client_trusting_a_ca_never_sends_its_password_to_a_server_that_does_not_ask_for_tls(
    files: TlsFiles,
) -> None:
    """A fake (or downgraded) server that offers plain text: our client starts TLS first, so the server hears a
    TLS ClientHello and nothing else — never the CONNECT with the password."""
    heard = bytearray()
    info = json.dumps({"server_id": "fake", "version": "2.15.1", "proto": 1, "max_payload": 1048576,
                       "auth_required": True}).encode()

    async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + info + b"\r\n")
        await writer.drain()
        try:
            while chunk := await asyncio.wait_for(reader.read(4096), 3):
                heard.extend(chunk)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    fake_server = await asyncio.start_server(fake, "127.0.0.1", 0)
    port = fake_server.sockets[0].getsockname()[1]
    try:
        auth = ClientAuth(user="ops", password="S3CRET-never-in-clear", ca_file=str(files.ca_cert))
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await asyncio.wait_for(connect(f"nats://127.0.0.1:{port}", auth=auth), 4)
        await wait_until(lambda: len(heard) > 0, timeout=5)
    finally:
        fake_server.close()
        await fake_server.wait_closed()

    assert b"S3CRET" not in heard and b"CONNECT" not in heard
    assert heard[:1] == b"\x16", f"the client spoke first, and not TLS: {bytes(heard[:40])!r}"  # a TLS handshake record
