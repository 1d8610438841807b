"""The bus's users and permissions (bus/ops/auth.py), without a running server: every actor may publish exactly
the kinds it declares in `produces`, upstream only intents and cancels, a monitor nothing on the data plane;
everyone reads only its own inbox; the auth dir keeps its passwords, private and long, and nats-server accepts
the configuration. A new actor gets its permissions from its declarations alone."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

import bus.ops.actors
from bus.actor import Actor
from bus.connect import inbox_prefix
from bus.ops.auth import (
    MONITOR_USER,
    OPS_USER,
    UPSTREAM_USER,
    User,
    _actor,
    actor_classes,
    users,
    write_auth_dir,
)
from bus.server import find_nats_server
from bus.settings import BusSettings
from messages import MESSAGE_TYPES, CancelIntent, OrderFilled, PlaceOrder, StrategyFinished, SubmitIntent, subjects

SETTINGS = BusSettings()


def by_name(settings: BusSettings = SETTINGS) -> dict[str, User]:
    return {user.name: user for user in users(settings)}


def data_plane(patterns: tuple[str, ...]) -> set[str]:
    """The patterns that can match an `exec.` subject (`exec.…`, or a leading wildcard)."""
    return {p for p in patterns if p.split(".")[0] in (subjects.PREFIX, "*", ">")}


def a_subject(kind: str) -> str:
    """A concrete live subject of `kind`, as an actor would publish it."""
    return subjects.subject(kind, "paper", "BTC/USDT", "i-1")


def may_publish(user: User, subject: str) -> bool:
    return any(subjects.matches(p, subject) for p in user.permissions.publish)


def may_subscribe(user: User, subject: str) -> bool:
    return any(subjects.matches(p, subject) for p in user.permissions.subscribe)


def expected_publishers(kind: type) -> set[str]:
    """Who may publish a kind: the actors declaring it, upstream for intents and cancels, and ops."""
    found = {name for name, cls in actor_classes().items() if kind in cls.produces}
    if kind in (SubmitIntent, CancelIntent):
        found.add(UPSTREAM_USER)
    return found | {OPS_USER}


# -- publish: derived from `produces` ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(bus.ops.actors.ACTORS))
def test_an_actor_publishes_on_the_data_plane_exactly_the_kinds_it_produces_and_its_dead_letters(name: str) -> None:
    cls = actor_classes()[name]
    user = by_name()[name]

    expected = {subjects.kind_filter(k.kind) for k in cls.produces} | {subjects.dead_letter(name)}
    assert data_plane(user.permissions.publish) == expected
    assert user.role == "actor"


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda k: k.kind)
def test_every_kind_is_publishable_by_exactly_the_users_declaring_it(kind: type) -> None:
    found = {name for name, user in by_name().items() if may_publish(user, a_subject(kind.kind))}

    assert found == expected_publishers(kind)


def test_a_dead_letter_subject_is_its_own_actors_alone() -> None:
    for name in bus.ops.actors.ACTORS:
        found = {u for u, user in by_name().items() if may_publish(user, subjects.dead_letter(name))}
        assert found == {name, OPS_USER}


def test_the_pricer_may_not_place_an_order() -> None:
    pricer = by_name()["pricer"]

    assert subjects.kind_filter(PlaceOrder.kind) not in pricer.permissions.publish
    assert not may_publish(pricer, a_subject(PlaceOrder.kind))


def test_upstream_publishes_only_intents_and_cancels_on_the_data_plane() -> None:
    upstream = by_name()[UPSTREAM_USER]

    assert data_plane(upstream.permissions.publish) == {
        subjects.kind_filter(SubmitIntent.kind), subjects.kind_filter(CancelIntent.kind)}
    assert {k for k in MESSAGE_TYPES if may_publish(upstream, a_subject(k.kind))} == {SubmitIntent, CancelIntent}
    assert not upstream.permissions.allow_responses


def test_a_monitor_publishes_nothing_on_the_data_plane() -> None:
    monitor = by_name()[MONITOR_USER]

    assert data_plane(monitor.permissions.publish) == set()
    assert not any(may_publish(monitor, a_subject(k.kind)) for k in MESSAGE_TYPES)
    assert not any(may_publish(monitor, subjects.dead_letter(a)) for a in bus.ops.actors.ACTORS)
    assert not monitor.permissions.allow_responses


# -- subscribe: one's own inbox -----------------------------------------------------------------------------------


def test_every_user_reads_its_own_inbox_and_nobody_elses() -> None:
    everyone = by_name()
    for name, user in everyone.items():
        assert may_subscribe(user, f"{inbox_prefix(name)}.reply1"), name
        if name == OPS_USER:
            continue  # ops administers everything (`>`)
        assert f"{inbox_prefix(name)}.>" in user.permissions.subscribe
        others = [o for o in everyone if o != name]
        assert [o for o in others if f"{inbox_prefix(o)}.>" in user.permissions.subscribe] == []
        assert [o for o in others if may_subscribe(user, f"{inbox_prefix(o)}.reply1")] == [], name
        assert not may_subscribe(user, "_INBOX.reply1"), name  # nats-py's default prefix is nobody's


# -- a new actor ------------------------------------------------------------------------------------------------


class Auditor(Actor):
    """A hypothetical new actor kind: it exists only in this test's registry."""

    consumes = (OrderFilled,)
    produces = (OrderFilled, StrategyFinished)


def test_a_new_actor_gets_its_permissions_from_its_declarations_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bus.ops.actors.ACTORS, "auditor", f"{__name__}:Auditor")

    everyone = by_name()
    auditor = everyone["auditor"]

    assert actor_classes()["auditor"] is Auditor
    assert data_plane(auditor.permissions.publish) == {
        "exec.order_filled.>", "exec.strategy_finished.>", "exec.dead_letter.auditor"}
    assert auditor.permissions == _actor("auditor", Auditor, SETTINGS).permissions
    assert f"$JS.API.CONSUMER.CREATE.{SETTINGS.stream}.auditor-p0" in auditor.permissions.publish
    assert f"$KV.{SETTINGS.state_bucket}.auditor.>" in auditor.permissions.publish
    assert not any(p.startswith("venue.") for p in auditor.permissions.publish)  # not in USES_VENUES
    assert f"{inbox_prefix('auditor')}.>" in auditor.permissions.subscribe
    for kind in (OrderFilled, StrategyFinished):  # it joins the declared producers, nobody else does
        assert {n for n, u in everyone.items() if may_publish(u, a_subject(kind.kind))} == expected_publishers(kind)
        assert "auditor" in expected_publishers(kind)


# -- the auth dir -----------------------------------------------------------------------------------------------


def passwords(directory: Path) -> dict[str, str]:
    return {f.name.removesuffix(".password"): f.read_text().strip() for f in (directory / "users").glob("*.password")}


def test_the_auth_dir_keeps_its_passwords_across_runs(tmp_path: Path) -> None:
    first = write_auth_dir(tmp_path / "auth", SETTINGS)
    before = passwords(first.path)
    config = first.config.read_text()

    second = write_auth_dir(tmp_path / "auth", SETTINGS)

    assert passwords(second.path) == before
    assert second.config.read_text() == config
    assert set(before) == set(by_name())
    assert {u: second.auth(u).password for u in before} == before


def test_a_lost_password_is_made_anew_and_the_others_are_kept(tmp_path: Path) -> None:
    auth = write_auth_dir(tmp_path / "auth", SETTINGS)
    before = passwords(auth.path)
    auth.password_file("pricer").unlink()

    write_auth_dir(tmp_path / "auth", SETTINGS)
    after = passwords(auth.path)

    assert after["pricer"] != before["pricer"]
    assert {u: p for u, p in after.items() if u != "pricer"} == {u: p for u, p in before.items() if u != "pricer"}


def test_the_secrets_are_private_files(tmp_path: Path) -> None:
    auth = write_auth_dir(tmp_path / "auth", SETTINGS)

    files = [auth.config, *sorted((auth.path / "users").iterdir())]
    assert len(files) == len(by_name()) + 1  # (no temporary file left behind)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (auth.path, auth.path / "users"):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, folder


def test_passwords_are_long_random_strings(tmp_path: Path) -> None:
    one = passwords(write_auth_dir(tmp_path / "one", SETTINGS).path)
    other = passwords(write_auth_dir(tmp_path / "other", SETTINGS).path)

    for password in [*one.values(), *other.values()]:
        assert len(password) >= 32
        assert len(set(password)) >= 16  # not a repeated character or a short word padded out
        assert password.isascii() and password.isprintable() and not any(c in password for c in " \"'\\")
    assert len(set(one.values()) | set(other.values())) == 2 * len(one)  # nobody shares one, across dirs too
    assert all(user not in password for user, password in one.items())


def test_nats_server_accepts_the_configuration(tmp_path: Path) -> None:
    auth = write_auth_dir(tmp_path / "auth", SETTINGS)

    checked = subprocess.run([find_nats_server(), "-t", "-c", str(auth.config)], capture_output=True, text=True,
                             timeout=30)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is valid" in checked.stdout + checked.stderr
    text = auth.config.read_text()
    assert all(f'"{p}"' in text for p in passwords(auth.path).values())  # the server's copy is the files' one


def test_nats_server_accepts_the_configuration_of_other_settings(tmp_path: Path) -> None:
    settings = BusSettings(partitions=3, stream="EXEC_B", state_bucket="state_b")
    auth = write_auth_dir(tmp_path / "auth", settings)

    checked = subprocess.run([find_nats_server(), "-t", "-c", str(auth.config)], capture_output=True, text=True,
                             timeout=30)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    placer = by_name(settings)["placer"].permissions.publish
    assert "$JS.API.CONSUMER.CREATE.EXEC_B.placer-p2" in placer and not any(".placer-p3" in p for p in placer)
    assert "$KV.state_b.placer.>" in placer
