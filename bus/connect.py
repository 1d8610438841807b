"""Connecting to NATS: one place that sets reconnect behaviour and logs connection events.

A server that is not there (yet, or any more) is retried forever, every `RECONNECT_WAIT_S`: a restarted
nats-server must not end an actor. What ends the retrying is the caller cancelling the connect (the CLI does
on SIGTERM/SIGINT, see `bus.ops.cli`) or closing the connection. Repeated errors are logged once per
`ERROR_LOG_INTERVAL_S` with how many were suppressed, not four times a second for as long as the server is away.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.aio.client import Client

__all__ = ["ADMIN_USER", "connect", "connect_options", "ClientAuth", "CredentialsRefused", "CredentialsMissing", "servers", "default_url", "RECONNECT_WAIT_S",
           "ERROR_LOG_INTERVAL_S"]

log = structlog.get_logger("execbus.bus")

RECONNECT_WAIT_S = 0.25
ADMIN_USER = "ops"
"""The user that may do anything on a bus with users (bus/ops/auth.py): it creates and changes the layout."""
PING_INTERVAL_S = 2.0
MAX_OUTSTANDING_PINGS = 3
"""A server that answers no ping for ~6-8 s is given up for another of the cluster's: one frozen (SIGSTOP, a
stalled VM) keeps its TCP connections open, and nats-py's default (two minutes) would leave its clients
stuck with it for that long."""
ERROR_LOG_INTERVAL_S = 30.0


def default_url() -> str | None:
    return os.environ.get("NATS_URL")


def servers(url: str) -> list[str]:
    """A URL or a comma-separated list of them (every server of a cluster: the client fails over between
    them and learns the rest from the cluster)."""
    found = [u.strip() for u in url.split(",") if u.strip()]
    if not found:
        raise ValueError(f"no NATS server URL in {url!r}")
    return found


@dataclass(frozen=True)
class ClientAuth:
    """Who this client is on the bus and how it trusts the server. Never printed: `repr` hides the password.

    From the environment (`from_env`), so a secret never has to be on a command line:
    `EXECBUS_NATS_USER`, and `EXECBUS_NATS_PASSWORD_FILE` (a file holding the password) or
    `EXECBUS_NATS_PASSWORD`; or `EXECBUS_AUTH_DIR`, a directory written by `execbus nats-config`, from which
    the client takes the password of `role` (the user its command runs as; default `EXECBUS_NATS_ROLE`, which
    the CLI sets per command). `EXECBUS_NATS_CA` is a CA
    certificate to trust for `tls://` servers (`EXECBUS_NATS_CERT` / `EXECBUS_NATS_KEY` a client certificate).
    """

    user: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __repr__(self) -> str:
        return f"ClientAuth(user={self.user!r}, password={'***' if self.password else None}, ca_file={self.ca_file!r})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, role: str | None = None, env: dict[str, str] | None = None) -> ClientAuth:
        env = dict(os.environ) if env is None else env
        user = env.get("EXECBUS_NATS_USER") or None
        password = env.get("EXECBUS_NATS_PASSWORD") or None
        password_file = env.get("EXECBUS_NATS_PASSWORD_FILE")
        if password_file:
            password = _read_secret(Path(password_file))
        auth_dir = env.get("EXECBUS_AUTH_DIR")
        if auth_dir and password is None:
            user = user or role or env.get("EXECBUS_NATS_ROLE")
            if user is None:
                raise CredentialsMissing("EXECBUS_AUTH_DIR is set but this command has no user: set EXECBUS_NATS_USER")
            password = _read_secret(Path(auth_dir) / "users" / f"{user}.password")
        ca = env.get("EXECBUS_NATS_CA") or (
            str(Path(auth_dir) / "tls" / "ca.pem") if auth_dir and (Path(auth_dir) / "tls" / "ca.pem").is_file() else None
        )
        return cls(user=user, password=password, ca_file=ca,
                   cert_file=env.get("EXECBUS_NATS_CERT") or None, key_file=env.get("EXECBUS_NATS_KEY") or None)

    def tls_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class CredentialsMissing(ValueError):
    """The environment names credentials this client cannot read."""


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise CredentialsMissing(f"cannot read the NATS password file {path}: {exc.strerror}") from None
    if not secret:
        raise CredentialsMissing(f"the NATS password file {path} is empty")
    return secret


def connect_options(url: str, auth: ClientAuth | None = None, *, role: str | None = None) -> dict[str, Any]:
    """`nats.connect` keyword arguments for `url` (one or a comma-separated list) as `auth` (default: from the
    environment for `role`). Each user gets its own inbox prefix, so the server can let it read only its own
    replies."""
    auth = auth if auth is not None else ClientAuth.from_env(role)
    options: dict[str, Any] = {
        "servers": servers(url), "ping_interval": PING_INTERVAL_S, "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
    }
    if auth.user:
        options["user"] = auth.user
        options["password"] = auth.password or ""
        options["inbox_prefix"] = inbox_prefix(auth.user)
    context = auth.tls_context()
    if context is not None:
        options["tls"] = context
        # TLS before anything else: a server (or someone in between) that does not ask for TLS never gets the
        # credentials in plain text. `EXECBUS_NATS_TLS_FIRST=0` for servers configured without handshake_first.
        options["tls_handshake_first"] = os.environ.get("EXECBUS_NATS_TLS_FIRST", "1") != "0"
    return options


def inbox_prefix(user: str) -> str:
    """Replies to `user` come to `_INBOX_<user>.>`; the server config lets only that user read them."""
    return f"_INBOX_{user}"


class _ErrorLog:
    """Logs an error the first time it is seen, then at most once per interval with the count in between."""

    def __init__(self, name: str, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self.name = name
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, exc: BaseException) -> None:
        key = repr(exc)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        repeats = self._suppressed.pop(key, 0)
        if repeats:
            log.warning("nats_error", error=key, connection=self.name, repeated=repeats)
        else:
            log.warning("nats_error", error=key, connection=self.name)


async def connect(url: str, *, name: str = "execbus", auth: ClientAuth | None = None, role: str | None = None) -> Client:
    """Connect with unlimited reconnects (and unlimited retries of the first connect); cancel to give up.

    `url` may list several servers, comma-separated. `auth` says who connects (default: from the environment,
    for the user `role`); a server that refuses the credentials raises `CredentialsRefused` at once."""
    errors = _ErrorLog(name)
    options = connect_options(url, auth, role=role)
    refused: list[BaseException] = []
    connecting: asyncio.Future[Client] | None = None

    async def on_error(exc: Exception) -> None:
        if _refused_credentials(exc) and connecting is not None and not connecting.done():
            # Retrying cannot help a client the server does not let in: say so now instead of hanging.
            refused.append(exc)
            connecting.cancel()
            return
        errors(exc)

    client: list[Client] = []

    async def on_disconnect() -> None:
        closing = bool(client) and (client[0].is_closed or client[0].is_draining)
        (log.debug if closing else log.warning)("nats_disconnected", connection=name)

    async def on_reconnect() -> None:
        log.info("nats_reconnected", connection=name)

    connecting = asyncio.ensure_future(nats.connect(
        **options,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT_S,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    ))
    try:
        nc = await connecting
    except asyncio.CancelledError:
        if refused:
            who = f"user {options['user']!r}" if options.get("user") else "a client without credentials"
            raise CredentialsRefused(f"NATS at {url} refused {who}: {refused[0]}") from None
        raise
    client.append(nc)
    return nc


class CredentialsRefused(ConnectionRefusedError):
    """The server does not accept who this client says it is (or that it says nothing)."""


def _refused_credentials(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text
