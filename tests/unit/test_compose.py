"""docker-compose.yml describes the deployment the CLI supports: a three-node NATS JetStream cluster (each
node on its own volume), the paper venue, and one service per actor, each pointed at every node through the
environment and logging in as its own user with only its own password (a compose secret, never a literal).

No Docker daemon and no PyYAML are needed. The file is resolved (anchors, merge keys, interpolation) by a
compose binary when one is installed (`.ci/compose-check` installs Debian's): Compose v2 prints JSON,
Compose v1 prints plain block YAML that `read_block_yaml` below reads. With PyYAML importable and no
binary, the raw file is loaded instead. With neither, the compose tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bus.ops.system import ACTORS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
AUTH_DIR = ROOT / ".execbus" / "auth"
"""Where `execbus nats-config --out .execbus/auth --routes ...` writes cluster.conf, auth.conf and
users/<user>.password."""
CLUSTER_SECRET = "nats-cluster"
"""The one secret of every node: cluster.conf, the users' `authorization` block plus the `cluster` block."""
ROUTE_PORT = 6222
CLUSTER_FLAGS = ("cluster", "cluster_name", "routes", "cluster_advertise", "no_advertise", "connect_retries")
"""nats-server's cluster flags (one dash or two): the file sets the cluster; they would override it, and a route
URL on a command line either carries no password or shows it."""
SERVICE_USERS = {**{actor.replace("_", "-"): actor for actor in ACTORS}, "paper-venue": "venue"}
"""The long-running execbus services and the NATS user each logs in as."""
TOOL_USERS = {"upstream": "upstream", "ops": "ops", "monitor": "monitor"}
"""One-off command services (`docker compose run --rm upstream submit ...`), in a profile so `up` skips them."""
SETUP_SERVICE = "nats-config"
PROFILES = ("setup", "cli")
INTERPOLATED = ("EXECBUS_IMAGE", "EXECBUS_LOG_LEVEL", "NATS_IMAGE", "EXECBUS_UID", "EXECBUS_GID", "EXECBUS_AUTH_DIR")
"""The variables the file interpolates: unset (and no .env read) while testing, so its defaults are tested."""


# -- a reader for the block YAML that `docker-compose config` (v1, PyYAML's safe_dump) prints -------------


def read_block_yaml(text: str) -> Any:
    """Block mappings and sequences of scalars, as PyYAML's `safe_dump(default_flow_style=False)` writes
    them; raises ValueError on anything else (anchors, tags, flow collections, block scalars)."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        lines.append((len(raw) - len(raw.lstrip(" ")), raw.strip(" ")))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"unexpected line: {lines[end][1]!r}")
    return value


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if _is_item(lines[i][1]):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _mapping(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[dict[Any, Any], int]:
    result: dict[Any, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not _is_item(lines[i][1]):
        key, rest = _split_key(lines[i][1])
        if rest:
            value, i = _scalar_value(lines, i, indent, rest)
        elif i + 1 < len(lines) and (
            lines[i + 1][0] > indent or (lines[i + 1][0] == indent and _is_item(lines[i + 1][1]))
        ):
            value, i = _block(lines, i + 1, lines[i + 1][0])
        else:
            value, i = None, i + 1
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    if i < len(lines) and lines[i][0] > indent:
        raise ValueError(f"bad indentation: {lines[i][1]!r}")
    return result, i


def _sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    result: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and _is_item(lines[i][1]):
        rest = lines[i][1][1:].lstrip(" ")
        if not rest:
            if i + 1 < len(lines) and lines[i + 1][0] > indent:
                value, i = _block(lines, i + 1, lines[i + 1][0])
            else:
                value, i = None, i + 1
        elif _is_item(rest) or _split_key(rest, strict=False) is not None:
            # `- key: value` (or `- - x`): a nested block whose first line starts after the dash.
            inner = indent + (len(lines[i][1]) - len(rest))
            lines = [*lines[:i], (inner, rest), *lines[i + 1 :]]
            value, i = _block(lines, i, inner)
        else:
            value, i = _scalar_value(lines, i, indent, rest)
        result.append(value)
    return result, i


_PLAIN_KEY = re.compile(r"^([^'\"#&*!|>%@`{}\[\],?-][^:#]*|-[^ :#][^:#]*)$")


def _split_key(text: str, strict: bool = True) -> Any:
    if text[0] in "'\"":
        key, end = _quoted(text, 0)
        if text[end : end + 1] == ":" and (end + 1 == len(text) or text[end + 1] == " "):
            return key, text[end + 1 :].strip()
    else:
        m = re.match(r"^(.*?):(?: (.*))?$", text)
        if m and ": " not in m.group(1) and _PLAIN_KEY.match(m.group(1)):
            return m.group(1), (m.group(2) or "").strip()
    if strict:
        raise ValueError(f"expected `key: value`, got {text!r}")
    return None


def _scalar_value(lines: list[tuple[int, str]], i: int, owner_indent: int, first: str) -> tuple[Any, int]:
    """A scalar, with the continuation lines PyYAML adds when it folds a long one (deeper than its owner)."""
    parts = [first]
    i += 1
    while i < len(lines) and lines[i][0] > owner_indent:
        parts.append(lines[i][1])
        i += 1
    return _scalar(parts), i


def _scalar(parts: list[str]) -> Any:
    text = parts[0]
    if text[0] == "'":
        joined = " ".join(parts)
        value, end = _quoted(joined, 0)
    elif text[0] == '"':
        joined = parts[0]
        for part in parts[1:]:
            joined = joined[:-1] + part if joined.endswith("\\") else f"{joined} {part}"
        value, end = _quoted(joined, 0)
    else:
        if text in ("{}", "[]") and len(parts) == 1:
            return {} if text == "{}" else []
        if text[0] in "&*!|>{[%@`" or " #" in text:
            raise ValueError(f"unsupported YAML: {text!r}")
        plain = " ".join(parts)
        if ": " in plain or plain.endswith(":"):
            raise ValueError(f"not a plain scalar: {plain!r}")
        if plain in ("null", "~", "Null", "NULL"):
            return None
        if plain in ("true", "True", "TRUE", "false", "False", "FALSE"):
            return plain.lower() == "true"
        if re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", plain):
            return int(plain)
        return plain
    if end != len(joined):
        raise ValueError(f"text after a quoted scalar: {joined!r}")
    return value


def _quoted(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    i = start + 1
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if quote == "'" and c == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if quote == '"' and c == "\\":
            escape = text[i : i + 2]
            try:
                out.append(json.loads(f'"{escape}"'))
            except json.JSONDecodeError:
                if escape[1:] == "u":
                    out.append(json.loads(f'"{text[i : i + 6]}"'))
                    i += 6
                    continue
                raise ValueError(f"unsupported escape {escape!r}") from None
            i += 2
            continue
        if quote == '"' and c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError(f"unterminated quoted scalar: {text!r}")


def test_block_yaml_reader_reads_compose_v1_output() -> None:
    sample = """\
services:
  nats:
    command:
    - -js
    - '8222'
    environment:
      EXECBUS_LOG_JSON: '1'
      QUOTED: "a \\"b\\" \\u00e9"
      EMPTY: ''
    healthcheck:
      test:
      - CMD
      - wget
      - a long plain scalar that PyYAML folded because it went past the eighty columns of its
        width setting
    init: true
    ports:
    - 127.0.0.1:4222:4222/tcp
    - published: 4222
      target: 4222
    'odd: key': x
version: '3.9'
volumes:
  nats-data: {}
"""
    assert read_block_yaml(sample) == {
        "services": {
            "nats": {
                "command": ["-js", "8222"],
                "environment": {"EXECBUS_LOG_JSON": "1", "QUOTED": 'a "b" é', "EMPTY": ""},
                "healthcheck": {
                    "test": [
                        "CMD",
                        "wget",
                        "a long plain scalar that PyYAML folded because it went past the eighty columns of its"
                        " width setting",
                    ]
                },
                "init": True,
                "ports": ["127.0.0.1:4222:4222/tcp", {"published": 4222, "target": 4222}],
                "odd: key": "x",
            }
        },
        "version": "3.9",
        "volumes": {"nats-data": {}},
    }
    for bad in ("a: &x 1\n", "a: [1, 2]\n", "a: |\n  text\n", "a: 1\n  b: 2\n"):
        with pytest.raises(ValueError):
            read_block_yaml(bad)


# -- loading the compose file -----------------------------------------------------------------------------


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def _clean_env() -> dict[str, str]:
    """The environment without the file's variables (nor COMPOSE_PROFILES, COMPOSE_FILE, ...)."""
    return {k: v for k, v in os.environ.items() if k not in INTERPOLATED and not k.startswith("COMPOSE_")}


def _resolved_by_binary() -> dict[str, Any] | None:
    """The file as a compose binary resolves it (every profile on, defaults for every variable: no .env is
    read), or None when there is no binary."""
    candidates: list[list[str]] = []
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for cmd in candidates:
        version = _run([*cmd, "version", "--short"])
        if version.returncode != 0:
            continue  # e.g. a docker CLI without the compose plugin
        v1 = version.stdout.strip().lstrip("v").startswith("1.")
        with tempfile.NamedTemporaryFile("w", suffix=".env") as empty_env:
            options = ["--env-file", empty_env.name, *(arg for p in PROFILES for arg in ("--profile", p))]
            config = _run([*cmd, *options, "-f", str(COMPOSE_FILE), "config", *([] if v1 else ["--format", "json"])],
                          env=_clean_env())
        if config.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} config rejects docker-compose.yml:\n{config.stderr}")
        return read_block_yaml(config.stdout) if v1 else json.loads(config.stdout)
    return None


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _with_defaults(value: Any) -> Any:
    """Compose's interpolation with every variable unset: `${X:-d}` -> d, `${X}` -> '', `$$` -> `$`."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else (m.group(3) or "") if m.group(2) in (":-", "-") else "", value)
    if isinstance(value, dict):
        return {k: _with_defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_defaults(v) for v in value]
    return value


def _load_raw_with_pyyaml() -> dict[str, Any] | None:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return None
    return _with_defaults(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml is missing"
    config = _resolved_by_binary()
    if config is None:
        config = _load_raw_with_pyyaml()
    if config is None:
        pytest.skip("no docker-compose binary and no PyYAML to read docker-compose.yml (.ci/compose-check)")
    return config


def _command(service: dict[str, Any], key: str = "command") -> list[str]:
    command = service.get(key) or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _flag(command: list[str], *names: str) -> str | None:
    """The value after the first of `names` in `command` (None when absent)."""
    for name in names:
        if name in command:
            index = command.index(name)
            return command[index + 1] if index + 1 < len(command) else None
    return None


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry: a named volume's name or a bind mount's host path."""
    mounts: list[tuple[str, str]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source") or ""), str(volume.get("target"))))
        else:
            parts = str(volume).split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return mounts


def _named_volume_targets(service: dict[str, Any], top_level: dict[str, Any]) -> dict[str, str]:
    """target path -> named volume, for the service's mounts of top-level volumes."""
    return {target: source for source, target in _mounts(service) if source in top_level}


def _ports(service: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(host address, published port, container port) of every published port."""
    ports: list[tuple[str, str, int]] = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append((str(port.get("host_ip") or ""), str(port.get("published") or ""), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        parts = ["", "", *parts][-3:]
        ports.append((parts[0], parts[1], int(parts[2])))
    return ports


def _secret_refs(service: dict[str, Any]) -> dict[str, str]:
    """secret name -> the path it is mounted at in the container."""
    refs: dict[str, str] = {}
    for item in service.get("secrets") or []:
        source, target = (str(item["source"]), str(item.get("target") or item["source"])) if isinstance(item, dict) \
            else (str(item), str(item))
        refs[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return refs


def _host_path(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else (ROOT / path).resolve()


def _secret_file(compose: dict[str, Any], name: str) -> Path:
    definition = (compose.get("secrets") or {}).get(name)
    assert isinstance(definition, dict) and definition.get("file"), f"secret {name} is not a file: {definition}"
    return _host_path(str(definition["file"]))


def _built_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service built from the project's Dockerfile."""
    return {name: svc for name, svc in compose["services"].items() if svc.get("build")}


def _execbus_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The long-running ones: what `docker compose up` starts besides NATS."""
    return {name: svc for name, svc in _built_services(compose).items() if not svc.get("profiles")}


def _client_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service that connects to NATS: the long-running ones and the one-off command services."""
    return {name: svc for name, svc in _built_services(compose).items() if name != SETUP_SERVICE}


def _password_secret(service_name: str) -> str:
    return f"{service_name if service_name != 'paper-venue' else 'venue'}-password"


# -- the NATS cluster -------------------------------------------------------------------------------------


def test_the_services_are_three_nats_nodes_the_execbus_processes_and_the_one_off_commands(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    nats = {name for name, svc in services.items() if str(svc.get("image", "")).startswith("nats:")}
    assert nats == set(NATS_NODES), nats
    assert set(services) == set(NATS_NODES) | set(SERVICE_USERS) | set(TOOL_USERS) | {SETUP_SERVICE}, set(services)
    assert "nats" not in services, "the single `nats` service is gone: the cluster is nats-1..3"


def test_three_nats_nodes_form_one_jetstream_cluster(compose: dict[str, Any]) -> None:
    top_volumes = compose.get("volumes") or {}
    volumes, names = [], []
    for node in NATS_NODES:
        service = compose["services"][node]
        command = _command(service)
        assert "-js" in command or "--jetstream" in command, (node, command)

        store_dir = _flag(command, "-sd", "--store_dir")
        assert store_dir, f"{node}: JetStream store directory not set: {command}"
        mounts = _named_volume_targets(service, top_volumes)
        assert store_dir in mounts, f"{node}: JetStream store {store_dir} is not on a named volume: {service.get('volumes')}"
        volumes.append(mounts[store_dir])

        names.append(_flag(command, "--server_name", "-n"))
        assert names[-1] == node, f"{node}: server name {names[-1]!r} (JetStream peers need distinct names)"
        assert _flag(command, "-m", "--http_port") == "8222", (node, command)
        check = " ".join(str(part) for part in (service.get("healthcheck") or {}).get("test") or [])
        assert "8222" in check and "/healthz" in check, (node, service.get("healthcheck"))
        assert service.get("restart") == "unless-stopped", node

    assert len(set(volumes)) == len(NATS_NODES), f"the nodes share a JetStream volume: {volumes}"
    generic = {tuple("NODE" if part == node else part for part in _command(compose["services"][node]))
               for node in NATS_NODES}
    assert len(generic) == 1, f"the nodes' commands differ in more than their name: {generic}"


def test_no_node_sets_its_routes_or_cluster_on_the_command_line(compose: dict[str, Any]) -> None:
    """The cluster (name, listen address, routes, the route password) is in cluster.conf: a route flag would
    override the file's routes with ones that carry no password, and a password there would be visible."""
    for node in NATS_NODES:
        command = _command(compose["services"][node])
        flags = {part.lstrip("-").split("=", 1)[0] for part in command if part.startswith("-")}
        assert not flags & set(CLUSTER_FLAGS), f"{node}: cluster flags on the command line: {command}"
        assert not any(re.search(r"(?i)route|cluster_name|:6222", part) for part in command), (node, command)
        assert not any("@" in part or "://" in part for part in command), f"{node}: a URL (credentials?) in {command}"
        assert not any(re.match(r"--?(user|pass|password|auth|token)(=|$)", part) for part in command), (node, command)


def test_every_nats_node_loads_the_cluster_config_and_nothing_else(compose: dict[str, Any]) -> None:
    for node in NATS_NODES:
        service = compose["services"][node]
        refs = _secret_refs(service)
        assert set(refs) == {CLUSTER_SECRET}, f"{node} mounts {sorted(refs)}: only the server config"
        command = _command(service)
        assert _flag(command, "-c", "--config") == refs[CLUSTER_SECRET], (node, command)
        assert sum(part in ("-c", "--config") for part in command) == 1, (node, command)
    assert _secret_file(compose, CLUSTER_SECRET) == (AUTH_DIR / "cluster.conf").resolve()
    assert "nats-auth" not in (compose.get("secrets") or {}), "auth.conf alone has no cluster: nothing mounts it"


def _setup_routes(compose: dict[str, Any]) -> list[str]:
    """The `--routes` value the nats-config service passes to `execbus nats-config`, split at commas."""
    service = compose["services"][SETUP_SERVICE]
    words = [word for part in (*_command(service, "entrypoint"), *_command(service)) for word in shlex.split(part)]
    assert words.count("--routes") == 1, f"nats-config must pass --routes once: {words}"
    return _flag(words, "--routes").split(",")  # type: ignore[union-attr]


def test_nats_config_writes_the_cluster_config_naming_every_node_on_the_route_port(compose: dict[str, Any]) -> None:
    routes = _setup_routes(compose)
    assert sorted(routes) == sorted(f"{node}:{ROUTE_PORT}" for node in NATS_NODES), (
        f"cluster.conf must route to exactly nats-1..3 on {ROUTE_PORT}: {routes}")
    assert not any("@" in r or "://" in r for r in routes), routes


def test_the_setup_routes_make_the_cluster_conf_the_nodes_load(compose: dict[str, Any], tmp_path: Path) -> None:
    """`execbus nats-config` given the service's own --routes writes the file the nodes' secret names."""
    out = tmp_path / "auth"
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from bus.ops.cli import main; sys.exit(main())",
         "nats-config", "--out", str(out), "--routes", ",".join(_setup_routes(compose))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**_clean_env(), **_environment(compose["services"][SETUP_SERVICE])},
    )
    assert done.returncode == 0, done.stderr
    conf = out / _secret_file(compose, CLUSTER_SECRET).relative_to(AUTH_DIR.resolve())
    assert conf.is_file() and conf.stat().st_mode & 0o077 == 0, conf
    text = conf.read_text()
    password = (out / "routes.password").read_text().strip()
    assert "authorization" in text and re.search(r"(?m)^cluster \{", text), text[-400:]
    assert f'authorization {{ user: "route", password: "{password}" }}' in text
    assert f'listen: "0.0.0.0:{ROUTE_PORT}"' in text
    for node in NATS_NODES:
        assert f"nats-route://route:{password}@{node}:{ROUTE_PORT}" in text, (node, text[-400:])


def test_only_the_client_and_monitoring_ports_are_published_and_only_on_loopback(compose: dict[str, Any]) -> None:
    published: dict[str, set[int]] = {}
    for name, service in compose["services"].items():
        for host_ip, host_port, target in _ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port}->{target} beyond this machine"
            published.setdefault(name, set()).add(target)
    assert set(published) <= set(NATS_NODES), f"only NATS publishes ports: {published}"
    assert published.get("nats-1", set()) >= {4222}, "nats-1's client port is published for execbus on the host"
    assert all(targets <= {4222, 8222} for targets in published.values()), f"routes (6222) stay inside: {published}"


# -- the execbus services ---------------------------------------------------------------------------------


def test_one_service_per_actor_and_the_paper_venue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for actor in ACTORS:
        name = actor.replace("_", "-")
        assert name in services, f"no service for actor {actor} (expected `{name}`)"
        assert _command(services[name]) == ["actor", actor], services[name].get("command")
    venues = [name for name, svc in services.items() if _command(svc) == ["venue", "paper"]]
    assert venues == ["paper-venue"], venues
    assert set(_execbus_services(compose)) == set(SERVICE_USERS), set(_execbus_services(compose))


def test_every_execbus_service_is_given_every_node_and_three_replicas(compose: dict[str, Any]) -> None:
    for name, service in _client_services(compose).items():
        env = _environment(service)
        urls = [urlsplit(url.strip()) for url in env.get("NATS_URL", "").split(",")]
        assert [(u.scheme, u.hostname, u.port or 4222) for u in urls] == [("nats", n, 4222) for n in NATS_NODES], (
            name, env.get("NATS_URL"))
        assert all(u.username is None and u.password is None for u in urls), f"{name}: credentials in NATS_URL"
        assert env.get("EXECBUS_REPLICAS") == str(len(NATS_NODES)), (name, env)
        assert env.get("EXECBUS_LOG_JSON") == "1", (name, env)
        assert "--nats" not in _command(service), name


def test_execbus_services_share_the_project_image_and_wait_for_every_node(compose: dict[str, Any]) -> None:
    images, users = set(), set()
    for name, service in _built_services(compose).items():
        build = service.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert (ROOT / str(context)).resolve() == ROOT, (name, context)
        images.add(service.get("image"))
        assert "container_name" not in service, f"{name}: a fixed container_name prevents --scale"
    for name, service in _client_services(compose).items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), (name, depends)
        for node in NATS_NODES:
            assert (depends.get(node) or {}).get("condition") == "service_healthy", (name, node, depends)
        users.add(str(service.get("user") or ""))
    for name in _execbus_services(compose):
        assert compose["services"][name].get("restart") == "unless-stopped", name
    assert len(images) == 1, f"execbus services should share one image: {images}"
    assert len(users) == 1, f"one uid for every execbus process (the password files' owner): {users}"
    uid = users.pop().split(":")[0]
    assert uid and uid not in ("0", "root"), f"execbus services run as {uid!r}"


def test_each_service_logs_in_as_its_own_user_with_only_its_own_password(compose: dict[str, Any]) -> None:
    expected = {**SERVICE_USERS, **TOOL_USERS}
    assert set(_client_services(compose)) == set(expected)
    for name, user in expected.items():
        service = compose["services"][name]
        env = _environment(service)
        assert env.get("EXECBUS_NATS_USER") == user, (name, env)
        refs = _secret_refs(service)
        secret = f"{user.replace('_', '-')}-password"
        assert set(refs) == {secret}, f"{name} mounts {sorted(refs)}: it gets its own password only"
        assert env.get("EXECBUS_NATS_PASSWORD_FILE") == refs[secret], (name, env, refs)
        assert _secret_file(compose, secret) == (AUTH_DIR / "users" / f"{user}.password").resolve(), name
        for forbidden in ("EXECBUS_NATS_PASSWORD", "EXECBUS_AUTH_DIR"):
            assert forbidden not in env, f"{name}: {forbidden} (the password comes from its own secret file)"


def test_every_secret_is_a_file_in_the_auth_directory_and_each_is_used(compose: dict[str, Any]) -> None:
    secrets = compose.get("secrets") or {}
    users = {*SERVICE_USERS.values(), *TOOL_USERS.values()}
    assert set(secrets) == {CLUSTER_SECRET} | {f"{u.replace('_', '-')}-password" for u in users}, sorted(secrets)
    for name in secrets:
        path = _secret_file(compose, name)
        assert path.is_relative_to(AUTH_DIR.resolve()), f"secret {name} is outside {AUTH_DIR}: {path}"
    used = {ref for svc in compose["services"].values() for ref in _secret_refs(svc)}
    assert used == set(secrets), f"defined but never mounted: {set(secrets) - used}"


def test_no_literal_password_in_the_deployment_files(compose: dict[str, Any]) -> None:
    allowed = [
        re.compile(r"EXECBUS_NATS_PASSWORD_FILE: /run/secrets/[a-z-]+-password"),
        re.compile(r"- [a-z-]+-password"),                                    # a service's secret
        re.compile(r"[a-z-]+-password:"),                                      # a secret's definition
        re.compile(r"file: \$\{EXECBUS_AUTH_DIR:-\./\.execbus/auth\}/users/[a-z_]+\.password"),
    ]
    for path in (COMPOSE_FILE, ROOT / "Dockerfile"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.split(" #", 1)[0].strip()
            if not text or text.startswith("#"):
                continue
            if re.search(r"(?i)pass(word|wd)?|secret|token", text) and f"/run/secrets/{CLUSTER_SECRET}" not in text:
                assert any(p.fullmatch(text) for p in allowed) or text in (
                    "secrets:", f"- {CLUSTER_SECRET}", f"{CLUSTER_SECRET}:"), (
                    f"{path.name}:{number}: {line.strip()!r} looks like a credential")
            assert not re.search(r"[a-z]+://[^/\s@,\"']*@", text), f"{path.name}:{number}: credentials in a URL"

    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if re.search(r"(?i)pass|secret|token", key):
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), (name, key)
        for part in (*_command(service), *_command(service, "entrypoint")):
            assert not re.match(r"--?(user|pass|password|auth|token)(=|$)", part), (name, part)

    # Nothing that nats-config wrote may reach git or the image; where it exists here, none of it is in the files.
    assert {".execbus", "/.execbus", ".execbus/", "/.execbus/"} & set((ROOT / ".gitignore").read_text().split()), ".gitignore"
    assert ".execbus" in (ROOT / ".dockerignore").read_text().split(), ".dockerignore must keep .execbus out"
    texts = [COMPOSE_FILE.read_text(), (ROOT / "Dockerfile").read_text()]
    for password_file in sorted((AUTH_DIR / "users").glob("*.password")) if (AUTH_DIR / "users").is_dir() else []:
        try:
            password = password_file.read_text().strip()
        except OSError:
            continue  # owned by the containers' uid: not this test's to read
        assert len(password) < 8 or not any(password in text for text in texts), f"{password_file.name} leaked"


def test_nats_config_writes_the_auth_directory_before_any_secret_exists(compose: dict[str, Any]) -> None:
    service = compose["services"][SETUP_SERVICE]
    assert "setup" in (service.get("profiles") or []), "nats-config is a one-off: `up` must not run it"
    assert not service.get("secrets"), "it runs before the password files exist: no secret may be mounted"
    assert not service.get("depends_on") and not service.get("ports"), service
    assert service.get("network_mode") == "none", "writing files needs no network"
    targets = [target for source, target in _mounts(service) if _host_path(source) == AUTH_DIR.resolve()]
    assert len(targets) == 1, f"the auth directory is not mounted: {service.get('volumes')}"
    script = " ".join([*_command(service, "entrypoint"), *_command(service)])
    assert f"execbus nats-config --out {targets[0]}" in script, script
    owner = str(compose["services"]["placer"].get("user"))
    assert owner in script, f"the files must go to the uid the actors run as ({owner}): {script}"


def test_one_off_command_services_are_opt_in(compose: dict[str, Any]) -> None:
    for name in (*TOOL_USERS, SETUP_SERVICE):
        service = compose["services"][name]
        assert service.get("profiles"), f"{name} needs a profile, or `docker compose up` starts it"
        assert str(service.get("restart")) in ("no", "False"), (name, service.get("restart"))
    assert _command(compose["services"]["upstream"])[0] == "submit"


def test_the_header_says_how_to_create_the_credentials_and_scale() -> None:
    header = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    for needed in ("execbus nats-config --out .execbus/auth --routes nats-1:6222,nats-2:6222,nats-3:6222",
                   "docker compose run --rm nats-config", "cluster.conf", "/run/secrets/nats-cluster",
                   "no route without the password can join",
                   "--scale placer=2", "docker compose run --rm upstream submit", "EXECBUS_UID", "random"):
        assert needed in text, f"the header comment does not mention {needed!r}"


def test_dockerfile_runs_execbus_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0].split()[0] in ("FROM", "ARG") and "python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["execbus"]' in instructions
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any("pip install --no-cache-dir" in line for line in instructions)
    uids = re.findall(r"--uid (\d+)", dockerfile)
    assert uids == ["10001"], f"the image's user is the compose file's default EXECBUS_UID: {uids}"

    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "venues", "venues/data", ".gitignore"):
        assert needed not in ignored and f"/{needed}" not in ignored, f".dockerignore drops {needed}"
    assert not any(pattern.endswith(".gz") for pattern in ignored), "venues/data/*.gz must reach the wheel"
