"""Least privilege on the bus: one NATS user per actor kind, plus the paper venue, upstream services, monitors
and ops, each allowed only the subjects its job needs.

An actor's permissions are derived from its class, never written by hand:

- publish the subjects of the message kinds it declares in `produces` (and its own dead-letter subject);
- pull only from its own durable consumers (`<actor>-p<k>`, one per partition), which carry the kinds it
  declares in `consumes`;
- write only its own keys of the state and lease buckets;
- what JetStream, the KV buckets and the `nats.micro` control service need to work, and requests to the
  paper venue's subjects when it trades through venues.

Upstream may publish `SubmitIntent` and `CancelIntent` and read the answers and reports; a monitor may only
read (live subjects, the log, the buckets, the control services' status); ops administers everything.
Every user reads replies only on its own inbox prefix (`bus.connect.inbox_prefix`), so nobody sees another's
answers. A client with the wrong user publishing anything else gets a permissions violation from the server.

`write_auth_dir` keeps passwords across runs (the files are the source of truth) and writes the server's
`authorization` block; passwords live in files of mode 0600 and go to clients through the environment
(`EXECBUS_AUTH_DIR`, `EXECBUS_NATS_PASSWORD_FILE`), never on a command line or in a log.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bus.connect import ADMIN_USER, ClientAuth, inbox_prefix
from bus.files import write_private
from bus.ops.actors import ACTORS, USES_VENUES, actor_class
from bus.settings import BusSettings
from messages import CancelIntent, SubmitIntent, subjects
from messages.base import Message

__all__ = [
    "Permissions",
    "User",
    "AuthDir",
    "users",
    "authorization_block",
    "write_auth_dir",
    "cluster_block",
    "write_private",
    "actor_classes",
    "VENUE_USER",
    "UPSTREAM_USER",
    "MONITOR_USER",
    "OPS_USER",
]

VENUE_USER = "venue"
UPSTREAM_USER = "upstream"
MONITOR_USER = "monitor"
OPS_USER = ADMIN_USER



@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May answer requests it received, whatever their reply subject (ops only: a responder told to reply on
    an `exec.` subject would write into the log, so the others may reply only to the inboxes of who asks)."""
    deny_publish: tuple[str, ...] = ()
    """Exceptions to `publish` (deny wins): every other actor's durable consumers."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    permissions: Permissions


@dataclass
class AuthDir:
    """What `write_auth_dir` wrote: `auth.conf` (the server's `authorization` block) and one password file
    per user under `users/`."""

    path: Path
    users: list[User] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.path / "auth.conf"

    def password_file(self, user: str) -> Path:
        return self.path / "users" / f"{user}.password"

    def route_password(self) -> str:
        """The password cluster nodes give each other (`routes.password`, made once, kept like the users')."""
        file = self.path / "routes.password"
        password = file.read_text().strip() if file.is_file() else ""
        if not password:
            password = secrets.token_urlsafe(32)
            write_private(file, password + "\n")
        file.chmod(0o600)
        return password

    def auth(self, user: str, ca_file: str | None = None) -> ClientAuth:
        """Credentials of `user`, read from its file (in memory only)."""
        return ClientAuth(user=user, password=self.password_file(user).read_text().strip(), ca_file=ca_file)


def actor_classes() -> dict[str, type]:
    """Every actor kind of the registry (`bus.ops.actors.ACTORS`), loaded by name."""
    return {name: actor_class(name) for name in ACTORS}


def _kind_subjects(kinds: Iterable[type[Message] | str]) -> list[str]:
    return [subjects.kind_filter(k if isinstance(k, str) else k.kind) for k in kinds]


def _stream_read(stream: str) -> list[str]:
    """Reading a stream through ephemeral consumers and direct gets (nats-py's and our own `read_stream`)."""
    api = "$JS.API"
    return [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _buckets(settings: BusSettings) -> list[str]:
    return [settings.state_bucket, settings.lease_bucket, settings.intent_bucket, settings.control_bucket]


def _reading(settings: BusSettings) -> list[str]:
    """Publish rights every client that reads the log and the buckets needs (they are API requests)."""
    allowed = ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"]
    for stream in [settings.stream, *(f"KV_{b}" for b in _buckets(settings))]:
        allowed += _stream_read(stream)
    return allowed


def _services_read() -> list[str]:
    """Asking the actors' control services (`nats micro ls`, `execbus.ctl.<actor>.status`)."""
    return ["$SRV.>", subjects.control("*", "*")]


def _durables(actor: str, settings: BusSettings) -> list[str]:
    return [f"{actor}-p{k}" for k in range(settings.partitions)]


def _others_durables(user: str, settings: BusSettings) -> list[str]:
    """What no user may do to a durable consumer that is not its own: re-create it with another filter, delete
    it, pull from it, acknowledge its messages."""
    api, stream = "$JS.API", settings.stream
    denied: list[str] = []
    for actor in ACTORS:
        if actor == user:
            continue
        for durable in _durables(actor, settings):
            denied += [f"{api}.CONSUMER.CREATE.{stream}.{durable}", f"{api}.CONSUMER.CREATE.{stream}.{durable}.>",
                       f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{durable}", f"{api}.CONSUMER.DELETE.{stream}.{durable}",
                       f"{api}.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>"]
    return denied


#: Paper venue requests that create or cancel orders: only actors that move money may send them.
MONEY_METHODS = ("create_order", "cancel_order")


def _replies_to(*users: str) -> list[str]:
    """Answering requests from these users: their inboxes, and nowhere else."""
    return [f"{inbox_prefix(u)}.>" for u in users]


def _actor(name: str, cls: type, settings: BusSettings) -> User:
    api = "$JS.API"
    stream = settings.stream
    durables = _durables(name, settings)
    publish = [*_kind_subjects(cls.produces), subjects.dead_letter(name), *_reading(settings)]
    # The layout is created by whoever starts first: creating what exists with the same config changes nothing,
    # and nobody but ops may update or delete it.
    publish += [f"{api}.STREAM.CREATE.{stream}", *(f"{api}.STREAM.CREATE.KV_{b}" for b in _buckets(settings))]
    for durable in durables:
        publish += [f"{api}.CONSUMER.CREATE.{stream}.{durable}", f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                    f"{api}.CONSUMER.CREATE.{stream}.{durable}.>"]
    publish += [f"$JS.ACK.{stream}.{durable}.>" for durable in durables]
    publish += [
        f"$KV.{settings.state_bucket}.{name}.>",
        f"$KV.{settings.lease_bucket}.*.{name}.>",  # lease.<actor>.<partition>, member.<actor>.<replica>
    ]
    buckets = {"intents": settings.intent_bucket, "controls": settings.control_bucket}
    for bucket, prefixes in cls.claims.items():
        publish += [f"$KV.{buckets[bucket]}.{prefix}.>" for prefix in prefixes]
    # Its control service answers the monitors and ops (status, `nats micro`), on their inboxes only.
    publish += _replies_to(MONITOR_USER, OPS_USER)
    subscribe = [f"{inbox_prefix(name)}.>", "$SRV.>", f"{subjects.control(name, '>')}"]
    deny = _others_durables(name, settings)
    if name in USES_VENUES:
        publish += ["venue.*.rpc.*", "venue.*.chunk.*"]
        subscribe += ["venue.*.evt.>"]
        if not cls.moves_money:
            deny += [f"venue.*.rpc.{method}" for method in MONEY_METHODS]
    return User(name, "actor", Permissions(tuple(publish), tuple(subscribe), deny_publish=tuple(deny)))


def users(settings: BusSettings | None = None) -> list[User]:
    """Every user of a deployment with these settings (partition count and bucket names shape the lists)."""
    settings = settings or BusSettings.from_env()
    found = [_actor(name, cls, settings) for name, cls in actor_classes().items()]
    trading = [name for name in ACTORS if name in USES_VENUES]
    found.append(User(VENUE_USER, "venue", Permissions(
        # It answers the trading actors, the operators and monitors, and nobody else.
        publish=("venue.*.evt.>", "venue.*.chunk.*", *_replies_to(*trading, OPS_USER, MONITOR_USER)),
        subscribe=(f"{inbox_prefix(VENUE_USER)}.>", "venue.*.rpc.*", "venue.*.ctl.*", "venue.*.chunk.*", "$SRV.>"),
    )))
    found.append(User(UPSTREAM_USER, "upstream", Permissions(
        publish=(*_kind_subjects([SubmitIntent, CancelIntent]), *_reading_log(settings)),
        subscribe=(f"{inbox_prefix(UPSTREAM_USER)}.>", *_kind_subjects(subjects.ANSWER_KINDS)),
        deny_publish=tuple(_others_durables(UPSTREAM_USER, settings)),
    )))
    found.append(User(MONITOR_USER, "monitor", Permissions(
        publish=(*_reading(settings), *_services_read()),
        subscribe=(f"{inbox_prefix(MONITOR_USER)}.>", subjects.STREAM_SUBJECTS),
        deny_publish=tuple(_others_durables(MONITOR_USER, settings)),
    )))
    found.append(User(OPS_USER, "ops", Permissions(publish=(">",), subscribe=(">",), allow_responses=True)))
    return found


def _reading_log(settings: BusSettings) -> list[str]:
    """Upstream finds an intent it wants to cancel in the log (its venue and symbol make the subject), and its
    client checks the layout is there (stream info of the buckets, never their contents)."""
    return ["$JS.API.INFO", *_stream_read(settings.stream),
            *(f"$JS.API.STREAM.INFO.KV_{b}" for b in _buckets(settings))]


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid NATS config string, escapes included


def authorization_block(entries: list[tuple[User, str]]) -> str:
    """The server's `authorization { users = [...] }` for (user, password) pairs."""
    lines = ["authorization {", "  users = ["]
    for user, password in entries:
        perms = user.permissions
        lines.append("    {")
        lines.append(f"      user: {_quote(user.name)}")
        lines.append(f"      password: {_quote(password)}")
        lines.append("      permissions: {")
        deny = f", deny: [{', '.join(_quote(s) for s in perms.deny_publish)}]" if perms.deny_publish else ""
        lines.append(f"        publish: {{ allow: [{', '.join(_quote(s) for s in perms.publish)}]{deny} }}")
        lines.append(f"        subscribe: {{ allow: [{', '.join(_quote(s) for s in perms.subscribe)}] }}")
        if perms.allow_responses:
            lines.append("        allow_responses: true")
        lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def cluster_block(
    routes: list[str], password: str, *, name: str = "execbus", listen: str = "0.0.0.0:6222", extra: str = ""
) -> str:
    """The `cluster { }` block of a node of a cluster whose nodes are at `routes` (host:port each, the node's
    own included: a server ignores the route to itself, so every node can load the same file). Routes give
    and ask the password of the user `route`, so no process may join as a node without it. `extra` goes inside
    the block (a `tls { }` for the routes)."""
    login = f"route:{password}@"
    lines = [
        "cluster {",
        f"  name: {_quote(name)}",
        f"  listen: {_quote(listen)}",
        f"  authorization {{ user: \"route\", password: {_quote(password)} }}",
        f"  routes: [{', '.join(_quote(f'nats-route://{login}{r}') for r in routes)}]",
        *(f"  {line}" for line in extra.strip().splitlines()),
        "}",
        "",
    ]
    return "\n".join(lines)


def write_auth_dir(path: str | os.PathLike[str], settings: BusSettings | None = None) -> AuthDir:
    """Write `auth.conf` and a password file per user under `path`; a user's existing password is kept."""
    auth = AuthDir(Path(path), users(settings))
    auth.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    auth.path.chmod(0o700)  # (kept files and folders too: whatever made them, only the owner reads them)
    (auth.path / "users").mkdir(exist_ok=True, mode=0o700)
    (auth.path / "users").chmod(0o700)
    entries: list[tuple[User, str]] = []
    for user in auth.users:
        file = auth.password_file(user.name)
        password = file.read_text().strip() if file.is_file() else ""
        if not password:
            password = secrets.token_urlsafe(32)
            write_private(file, password + "\n")
        file.chmod(0o600)
        entries.append((user, password))
    write_private(auth.config, authorization_block(entries))
    return auth
