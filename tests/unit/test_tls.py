"""The run's CA and server certificate (bus/tls.py), checked without a server: real TLS handshakes in memory
(OpenSSL on both ends, through `ssl.MemoryBIO`) and the `cryptography` verifier."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from bus import tls
from bus.connect import ClientAuth
from bus.tls import TlsFiles, client_context, cluster_block, conf_string, ensure, generate, server_block


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A whole TLS handshake between two contexts in memory; raises what either side raises."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(to_server, to_client, server_side=True)
    c = client.wrap_bio(to_client, to_server, server_hostname=hostname)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, side in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            # TLS 1.3: the server learns of a refused client certificate only on the first read.
            c.write(b"ping")
            assert s.read(4) == b"ping"
            return
    raise AssertionError("handshake did not finish")


def serving(files: TlsFiles, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    if require_client_cert:  # what a cluster route does: both ends verify
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(files.ca_cert)
    return context


def strict(context: ssl.SSLContext) -> ssl.SSLContext:
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default: catches a sloppy certificate now
    return context


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def stamp(files: TlsFiles) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (files.ca_cert, files.cert, files.key)}


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)  # the key's 0600 must come from how it is created, not from the caller's umask
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_client_trusting_the_generated_ca_verifies_the_server_for_every_default_host(tmp_path: Path, host: str) -> None:
    files = generate(tmp_path)

    handshake(serving(files), strict(client_context(files.ca_cert)), host)


def test_the_chain_passes_the_cryptography_verifier_for_names_and_addresses(tmp_path: Path) -> None:
    files = generate(tmp_path)
    verifier = PolicyBuilder().store(Store([load(files.ca_cert)]))

    for subject in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = verifier.build_server_verifier(subject).verify(load(files.cert), [])
        assert chain[-1] == load(files.ca_cert)


def test_a_host_the_certificate_does_not_name_fails_verification(tmp_path: Path) -> None:
    files = generate(tmp_path, hosts=("localhost",))

    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(serving(files), client_context(files.ca_cert), "127.0.0.1")


def test_a_client_trusting_another_ca_refuses_the_server(tmp_path: Path) -> None:
    files = generate(tmp_path / "run")
    other = generate(tmp_path / "other")

    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(serving(files), client_context(other.ca_cert), "127.0.0.1")


def test_the_server_certificate_also_passes_as_a_client_certificate_as_cluster_routes_need(tmp_path: Path) -> None:
    files = generate(tmp_path)

    handshake(serving(files, require_client_cert=True),
              strict(client_context(files.ca_cert, files.cert, files.key)), "127.0.0.1")


def test_addresses_are_ip_sans_and_names_dns_sans_with_both_key_usages(tmp_path: Path) -> None:
    files = generate(tmp_path, hosts=("10.0.0.7", "nats.internal", "[fd00::1]", "Node-2"))
    cert = load(files.cert)

    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("fd00::1")]
    assert sans.get_values_for_type(x509.DNSName) == ["nats.internal", "node-2"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert load(files.ca_cert).extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_lifetime_is_the_days_asked_for_starting_a_little_in_the_past(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    cert = load(generate(tmp_path, days=7).cert)

    assert cert.not_valid_before_utc < before  # a node whose clock is behind still accepts it
    assert dt.timedelta(days=7) - dt.timedelta(seconds=5) < cert.not_valid_after_utc - before <= dt.timedelta(days=7)


def test_private_keys_are_created_0600_whatever_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    files = generate(tmp_path)

    assert files.ca_key is not None
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    assert oct(files.ca_key.stat().st_mode & 0o777) == "0o600"
    assert oct(files.cert.stat().st_mode & 0o777) == "0o644"


def test_a_key_file_that_was_world_readable_is_replaced_by_a_0600_one(tmp_path: Path, permissive_umask: None) -> None:
    (tmp_path / "server-key.pem").write_text("old")
    (tmp_path / "server-key.pem").chmod(0o644)

    files = generate(tmp_path)

    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_ensure_reuses_files_that_are_still_good(tmp_path: Path) -> None:
    first = ensure(tmp_path)
    written = stamp(first)

    again = ensure(tmp_path, hosts=("localhost", "127.0.0.1"))  # fewer hosts than the certificate names

    assert again == first
    assert stamp(again) == written


def test_ensure_reissues_the_server_certificate_for_a_new_host_and_keeps_the_ca(tmp_path: Path) -> None:
    first = ensure(tmp_path)
    written = stamp(first)

    again = ensure(tmp_path, hosts=("127.0.0.1", "nats-2.internal"))

    assert again.ca_cert.read_bytes() == written["ca.pem"], "clients that trust ca.pem keep trusting the server"
    assert again.cert.read_bytes() != written["server.pem"]
    handshake(serving(again), client_context(again.ca_cert), "nats-2.internal")


def test_ensure_replaces_a_damaged_server_certificate(tmp_path: Path) -> None:
    files = ensure(tmp_path)
    files.cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")

    again = ensure(tmp_path)

    handshake(serving(again), client_context(again.ca_cert), "127.0.0.1")


def test_ensure_regenerates_everything_once_the_ca_is_about_to_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ensure(tmp_path, days=2)
    written = stamp(files)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1, hours=1)  # under a day left
    monkeypatch.setattr(tls, "_now", lambda: later)

    ensure(tmp_path, days=2)

    assert files.ca_cert.read_bytes() != written["ca.pem"]
    assert files.cert.read_bytes() != written["server.pem"]


def test_a_ca_of_ones_own_signs_the_server_certificate_and_is_left_where_it_is(tmp_path: Path) -> None:
    own = generate(tmp_path / "own-ca")
    assert own.ca_key is not None

    files = generate(tmp_path / "run", ca_cert=own.ca_cert, ca_key=own.ca_key)

    assert (files.ca_cert, files.ca_key) == (own.ca_cert, own.ca_key)
    assert not (tmp_path / "run" / "ca.pem").exists() and not (tmp_path / "run" / "ca-key.pem").exists()
    assert load(files.cert).issuer == load(own.ca_cert).subject
    load(files.cert).verify_directly_issued_by(load(own.ca_cert))
    handshake(serving(files), strict(client_context(own.ca_cert)), "localhost")


def test_ensure_reissues_when_the_server_certificate_is_from_another_ca_than_the_one_given(tmp_path: Path) -> None:
    own = generate(tmp_path / "own-ca")
    assert own.ca_key is not None
    run = tmp_path / "run"
    generate(run)  # signed by a CA of its own

    files = ensure(run, ca_cert=own.ca_cert, ca_key=own.ca_key)
    written = stamp(files)

    load(files.cert).verify_directly_issued_by(load(own.ca_cert))
    assert stamp(ensure(run, ca_cert=own.ca_cert, ca_key=own.ca_key)) == written, "and then reuses it"


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    own = generate(tmp_path / "own-ca")

    with pytest.raises(ValueError, match="both ca_cert and ca_key"):
        generate(tmp_path / "run", ca_cert=own.ca_cert)


def test_a_ca_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    own = generate(tmp_path / "own-ca")
    other = generate(tmp_path / "other-ca")

    with pytest.raises(ValueError, match="is not the key of"):
        generate(tmp_path / "run", ca_cert=own.ca_cert, ca_key=other.ca_key)


def test_a_certificate_that_is_not_a_ca_is_refused_as_one(tmp_path: Path) -> None:
    files = generate(tmp_path / "own-ca")

    with pytest.raises(ValueError, match="not a CA certificate"):
        generate(tmp_path / "run", ca_cert=files.cert, ca_key=files.key)


def test_server_block_names_the_files_and_asks_for_client_certificates_only_when_told(tmp_path: Path) -> None:
    files = generate(tmp_path)

    plain, verifying = server_block(files), server_block(files, verify_clients=True)

    assert plain.startswith("tls {") and plain.rstrip().endswith("}")
    for line in (f'cert_file: "{files.cert}"', f'key_file: "{files.key}"', f'ca_file: "{files.ca_cert}"', "timeout: 5"):
        assert line in plain
    assert "verify" not in plain
    assert "verify: true" in verifying


def test_cluster_block_says_routes_verify_each_other(tmp_path: Path) -> None:
    files = generate(tmp_path)

    assert "verify: true" in cluster_block(files)
    assert f'cert_file: "{files.cert}"' in cluster_block(files)


@pytest.mark.parametrize(("raw", "quoted"), [
    ("/plain/path", '"/plain/path"'),
    ('we"ird\\dir', '"we\\"ird\\\\dir"'),
    ("tab\there", '"tab\\there"'),
    ("bell\x07", '"bell\\x07"'),
    ("$VAR #not-a-comment", '"$VAR #not-a-comment"'),
    ("café", '"café"'),  # not \u00e9: the nats config lexer refuses \u
])
def test_conf_string_uses_only_the_escapes_the_nats_config_lexer_knows(raw: str, quoted: str) -> None:
    assert conf_string(raw) == quoted


def test_client_context_and_client_auth_build_the_same_trust(tmp_path: Path) -> None:
    files = generate(tmp_path)
    ours = client_context(files.ca_cert)
    theirs = ClientAuth(ca_file=str(files.ca_cert)).tls_context()

    assert theirs is not None
    for context in (ours, theirs):
        handshake(serving(files), context, "127.0.0.1")
        assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert ours.get_ca_certs() == theirs.get_ca_certs()
