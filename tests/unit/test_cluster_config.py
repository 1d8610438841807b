"""The config file each node of an `EmbeddedCluster` gets: its name, routes to every other node, and the
caller's extra texts inside the block they belong to. Read as text (a brace-depth walk), and once by
`nats-server -t`, which parses it as the server will."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bus.cluster import _free_ports, node_config
from bus.server import EmbeddedNats, find_nats_server
from bus.settings import BusSettings
from bus.streams import stream_config

PORTS = [7101, 7102, 7103]
AUTH = 'authorization {\n  users: [ { user: "ops", password: "s3cret" } ]\n}'
ROUTE_TLS = 'tls {\n  cert_file: "/certs/route.pem"\n  key_file: "/certs/route.key"\n}'


def enclosing_blocks(text: str) -> dict[str, list[str]]:
    """Every non-empty line (stripped) -> the names of the blocks it sits in, outermost first."""
    stack: list[str] = []
    where: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("}") or line.startswith("]"):
            stack.pop()
            continue
        where.setdefault(line, list(stack))
        if line.endswith("{") or line.endswith("["):
            stack.append(line.rstrip("{[: ").strip())
    assert not stack, f"unbalanced braces: {stack}"
    return where


def test_each_node_is_named_by_its_position_and_routes_to_every_other_node_but_itself() -> None:
    for i in range(3):
        text = node_config(i, PORTS, "/store/n")

        lines = enclosing_blocks(text)

        assert f"server_name: n{i + 1}" in lines and lines[f"server_name: n{i + 1}"] == []
        routes = sorted(line for line, blocks in lines.items() if blocks == ["cluster", "routes"])
        assert routes == sorted(f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(PORTS) if j != i)
        assert lines[f'listen: "127.0.0.1:{PORTS[i]}"'] == ["cluster"]
        assert lines['name: "execbus"'] == ["cluster"]


def test_config_extra_goes_to_the_top_level_and_cluster_extra_into_the_cluster_block() -> None:
    text = node_config(0, PORTS, "/store/n1", config_extra=AUTH, cluster_extra=ROUTE_TLS)

    lines = enclosing_blocks(text)

    assert lines["authorization {"] == []
    assert lines['users: [ { user: "ops", password: "s3cret" } ]'] == ["authorization"]
    assert lines["tls {"] == ["cluster"]
    assert lines['cert_file: "/certs/route.pem"'] == ["cluster", "tls"]


def test_the_cluster_name_and_host_are_the_callers() -> None:
    text = node_config(1, PORTS, "/store/n2", host="127.0.0.2", name="blue")

    lines = enclosing_blocks(text)

    assert lines['name: "blue"'] == ["cluster"]
    assert lines['listen: "127.0.0.2:7102"'] == ["cluster"]
    assert '"nats-route://127.0.0.2:7101"' in lines


def test_with_a_route_password_a_node_asks_it_of_its_peers_and_gives_it_to_them() -> None:
    text = node_config(0, PORTS, "/store/n1", route_password="r0ute-s3cret")

    lines = enclosing_blocks(text)

    assert lines['authorization { user: "route", password: "r0ute-s3cret" }'] == ["cluster"]
    routes = sorted(line for line, blocks in lines.items() if blocks == ["cluster", "routes"])
    assert routes == sorted(f'"nats-route://route:r0ute-s3cret@127.0.0.1:{p}"' for p in PORTS[1:])


def test_nats_server_accepts_the_generated_config(tmp_path: Path) -> None:
    config = tmp_path / "n1.conf"
    config.write_text(node_config(0, PORTS, tmp_path / "js", config_extra=AUTH))

    result = subprocess.run([find_nats_server(), "-t", "-c", str(config)], capture_output=True, text=True, timeout=10)

    assert result.returncode == 0, result.stdout + result.stderr


def test_route_ports_are_distinct_free_ports() -> None:
    ports = _free_ports("127.0.0.1", 3)

    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)


def test_a_server_takes_a_config_text_or_a_config_file_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        EmbeddedNats(config_file="/x.conf", config_text="port: 1")


def test_replicas_come_from_the_environment_and_reach_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_REPLICAS", "3")

    settings = BusSettings.from_env()

    assert settings.replicas == 3
    assert stream_config(settings).num_replicas == 3
    assert BusSettings().replicas == 1


async def test_a_node_config_is_readable_by_its_owner_only_since_it_may_hold_passwords(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path, config_text=node_config(0, PORTS, tmp_path / "js", config_extra=AUTH))
    server.ready_timeout = 0.01  # only the file matters here, not the server
    try:
        await server.start()
    except (TimeoutError, RuntimeError):
        pass
    finally:
        server.kill()

    config = tmp_path / "nats-server.conf"
    assert "s3cret" in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600
