"""docker-compose.yml describes the deployment the CLI supports: NATS with JetStream on a volume, the paper
venue, and one service per actor, each pointed at NATS through the environment.

No Docker daemon and no PyYAML are needed. The file is resolved (anchors, merge keys, interpolation) by a
compose binary when one is installed (`.ci/compose-check` installs Debian's): Compose v2 prints JSON,
Compose v1 prints plain block YAML that `read_block_yaml` below reads. With PyYAML importable and no
binary, the raw file is loaded instead. With neither, the compose tests skip.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bus.ops.system import ACTORS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NATS_SERVICE = "nats"


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


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _resolved_by_binary() -> dict[str, Any] | None:
    """The file as a compose binary resolves it, or None when there is no binary."""
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
        config = _run([*cmd, "-f", str(COMPOSE_FILE), "config", *([] if v1 else ["--format", "json"])])
        if config.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} config rejects docker-compose.yml:\n{config.stderr}")
        return read_block_yaml(config.stdout) if v1 else json.loads(config.stdout)
    return None


def _load_raw_with_pyyaml() -> dict[str, Any] | None:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return None
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml is missing"
    config = _resolved_by_binary()
    if config is None:
        config = _load_raw_with_pyyaml()
    if config is None:
        pytest.skip("no docker-compose binary and no PyYAML to read docker-compose.yml (.ci/compose-check)")
    return config


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _named_volume_targets(service: dict[str, Any], top_level: dict[str, Any]) -> dict[str, str]:
    """target path -> named volume, for the service's mounts of top-level volumes."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume.get("target")
        else:
            source, _, rest = str(volume).partition(":")
            target = rest.split(":", 1)[0]
        if source in top_level:
            mounts[str(target)] = str(source)
    return mounts


def _execbus_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if name != NATS_SERVICE}


# -- the deployment ---------------------------------------------------------------------------------------


def test_nats_runs_jetstream_on_a_named_volume_with_a_healthcheck(compose: dict[str, Any]) -> None:
    nats = compose["services"].get(NATS_SERVICE)
    assert nats is not None, "no `nats` service"
    assert str(nats.get("image", "")).startswith("nats:"), nats.get("image")
    command = _command(nats)
    assert "-js" in command or "--jetstream" in command, command
    store_flag = next((f for f in ("-sd", "--store_dir") if f in command), None)
    assert store_flag, f"JetStream store directory not set: {command}"
    store_dir = command[command.index(store_flag) + 1]
    mounts = _named_volume_targets(nats, compose.get("volumes") or {})
    assert store_dir in mounts, f"JetStream store {store_dir} is not on a named volume: {nats.get('volumes')}"

    monitor_flag = next((f for f in ("-m", "--http_port") if f in command), None)
    assert monitor_flag and command[command.index(monitor_flag) + 1] == "8222", command
    check = " ".join(str(part) for part in (nats.get("healthcheck") or {}).get("test") or [])
    assert "8222" in check and "/healthz" in check, nats.get("healthcheck")


def test_one_service_per_actor_and_the_paper_venue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for actor in ACTORS:
        name = actor.replace("_", "-")
        assert name in services, f"no service for actor {actor} (expected `{name}`)"
        assert _command(services[name]) == ["actor", actor], services[name].get("command")
    venues = [name for name, svc in services.items() if _command(svc) == ["venue", "paper"]]
    assert venues == ["paper-venue"], venues
    assert set(_execbus_services(compose)) == {a.replace("_", "-") for a in ACTORS} | {"paper-venue"}


def test_every_execbus_service_reaches_nats_through_the_environment(compose: dict[str, Any]) -> None:
    for name, service in _execbus_services(compose).items():
        env = _environment(service)
        url = urlsplit(env.get("NATS_URL", ""))
        assert (url.scheme, url.hostname, url.port or 4222) == ("nats", NATS_SERVICE, 4222), (name, env)
        assert env.get("EXECBUS_LOG_JSON") == "1", (name, env)
        assert "--nats" not in _command(service), name


def test_execbus_services_share_the_project_image_and_wait_for_nats(compose: dict[str, Any]) -> None:
    images = set()
    for name, service in _execbus_services(compose).items():
        build = service.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context is not None, f"{name} is not built from the project's Dockerfile"
        assert (ROOT / str(context)).resolve() == ROOT, (name, context)
        images.add(service.get("image"))
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), (name, depends)
        assert (depends.get(NATS_SERVICE) or {}).get("condition") == "service_healthy", (name, depends)
        assert service.get("restart") == "unless-stopped", name
        assert "container_name" not in service, f"{name}: a fixed container_name prevents --scale"
    assert len(images) == 1, f"execbus services should share one image: {images}"


def test_dockerfile_runs_execbus_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0].split()[0] in ("FROM", "ARG") and "python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["execbus"]' in instructions
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any("pip install --no-cache-dir" in line for line in instructions)

    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "venues", "venues/data", ".gitignore"):
        assert needed not in ignored and f"/{needed}" not in ignored, f".dockerignore drops {needed}"
    assert not any(pattern.endswith(".gz") for pattern in ignored), "venues/data/*.gz must reach the wheel"
