"""TLS for the bus: a CA made for the run, a server certificate it signs, and the nats-server config text.

What `generate` / `ensure` leave in `directory`:

    ca.pem, ca-key.pem           the CA — only when no CA of one's own is given (then `TlsFiles.ca_*` point at it)
    server.pem, server-key.pem   the server's certificate and key, signed by the CA

Invariants:
- A private key is never on disk with a mode wider than 0600, not even for an instant: its file is created
  with that mode (a chmod afterwards would leave a window, and does nothing for a file that already existed).
- Every file is written whole or not at all (a temporary file renamed over the old one), under a lock on the
  directory: a server or a second `ensure` reading the files mid-way never sees half a key or a certificate
  from another CA than the one beside it.
- The server certificate carries serverAuth *and* clientAuth: a cluster route presents the same certificate
  whether it dialled or was dialled, and every node verifies the other (nats-server always verifies routes).
- Its subjectAltNames name every host a client may dial: IP addresses as IP SANs, names as DNS SANs. Clients
  verify the host in the URL (nats-py uses the URL's host), so a URL whose host is not in the list fails.

The client side is `bus.connect.ClientAuth(ca_file=...)` (`EXECBUS_NATS_CA` in the environment), which
builds the same context as `client_context` here.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import secrets
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes as PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.files import write_atomic

__all__ = ["TlsFiles", "DEFAULT_HOSTS", "generate", "ensure", "server_block", "cluster_block", "client_context",
           "conf_string"]

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca-key.pem", "server.pem", "server-key.pem"
HANDSHAKE_TIMEOUT_S = 5
"""nats-server's default is 0.5 s, too short for a loaded CI machine doing EC handshakes for many clients."""
BACKDATE = dt.timedelta(minutes=5)
"""Certificates start a little in the past: a node whose clock is a minute behind must not refuse them."""
RENEW_BEFORE = dt.timedelta(days=1)
"""`ensure` re-issues a certificate that expires within this (or within half its lifetime, if shorter)."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the server's certificate are. `ca_key` is None for files not made here (a CA and a
    server certificate both brought along): enough to run a server, not to issue another certificate."""

    ca_cert: Path
    ca_key: Path | None
    cert: Path
    key: Path


def generate(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    ca_cert: str | os.PathLike[str] | None = None,
    ca_key: str | os.PathLike[str] | None = None,
    days: int = 30,
) -> TlsFiles:
    """Write a new server certificate for `hosts` into `directory`, signed by a new CA (written beside it) or
    by the CA `ca_cert` + `ca_key` (left where it is). Replaces whatever was there."""
    folder = _folder(directory)
    with _locked(folder):
        return _generate(folder, _hosts(hosts), _given_ca(ca_cert, ca_key), _days(days))


def ensure(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    ca_cert: str | os.PathLike[str] | None = None,
    ca_key: str | os.PathLike[str] | None = None,
    days: int = 30,
) -> TlsFiles:
    """`generate`, unless `directory` already holds files that are still good: the given CA, or a CA of its
    own that is whole and not about to expire; and a server certificate that CA signed, not about to expire,
    with both key usages, naming every one of `hosts` (naming more is fine).

    A CA that is still good is kept even when the server certificate is re-issued, so clients that already
    trust `ca.pem` go on trusting the server."""
    folder = _folder(directory)
    names, days = _hosts(hosts), _days(days)
    given = _given_ca(ca_cert, ca_key)
    with _locked(folder):
        ca = given or _own_ca(folder, days)
        if ca is None:
            return _generate(folder, names, None, days)
        if not _server_cert_good(folder, ca, names, days):
            _issue_server_cert(folder, ca, names, days)
        return ca.files(folder)


def server_block(files: TlsFiles, *, verify_clients: bool = False) -> str:
    """The top-level `tls { }` of a nats-server config: clients must speak TLS. With `verify_clients`, they
    must also present a certificate signed by the CA (`EXECBUS_NATS_CERT` / `EXECBUS_NATS_KEY`)."""
    lines = _tls_lines(files)
    # Our clients start TLS before the server says anything (`bus.connect`: so a fake plain-text server never
    # hears a password); a client that waits for the server's INFO first still gets it after this long.
    lines.append(f"  handshake_first: {HANDSHAKE_FIRST_FALLBACK}")
    if verify_clients:
        lines.append("  verify: true")
    return "tls {\n" + "\n".join(lines) + "\n}\n"


def cluster_block(files: TlsFiles) -> str:
    """The `tls { }` to put inside `cluster { }`, so routes between nodes are TLS. nats-server verifies routes
    both ways whatever the block says (each side checks the other's certificate against `ca_file`, and the
    dialling side checks the route URL's host against the SANs), so every node's certificate must carry
    clientAuth and name the host other nodes dial it on; `verify: true` is written anyway, to say so."""
    return "tls {\n" + "\n".join([*_tls_lines(files), "  verify: true"]) + "\n}\n"


def client_context(
    ca_file: str | os.PathLike[str],
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client's context: trust `ca_file` (only it — not the system's CAs), check the server's host name,
    and present `cert` / `key` if given. The same as `bus.connect.ClientAuth(...).tls_context()`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca_file))
    if cert is not None:
        context.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    return context


def conf_string(value: str | os.PathLike[str]) -> str:
    r"""`value` as a double-quoted nats-server config string. The config lexer knows only the escapes \\, \",
    \t, \n, \r and \xXX (a JSON string's \uXXXX is a parse error), and quoting keeps `$` and `#` literal."""
    out = []
    for char in os.fspath(value):
        if char in '\\"':
            out.append("\\" + char)
        elif char in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[char])
        elif ord(char) < 0x20:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)  # non-ASCII as it is: the config is read as UTF-8
    return '"' + "".join(out) + '"'


# -- the CA ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ca:
    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path

    def files(self, folder: Path) -> TlsFiles:
        return TlsFiles(ca_cert=self.cert_path, ca_key=self.key_path, cert=folder / SERVER_CERT, key=folder / SERVER_KEY)


def _given_ca(ca_cert: str | os.PathLike[str] | None, ca_key: str | os.PathLike[str] | None) -> _Ca | None:
    if ca_cert is None and ca_key is None:
        return None
    if ca_cert is None or ca_key is None:
        # Signing needs the key; trusting needs the certificate. Half a CA can do neither here.
        raise ValueError("a CA of one's own needs both ca_cert and ca_key")
    cert_path, key_path = Path(ca_cert).absolute(), Path(ca_key).absolute()
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError:
        raise ValueError(f"the CA key {key_path} is encrypted; give an unencrypted one") from None
    if not _same_key(cert, key):
        raise ValueError(f"the CA key {key_path} is not the key of {cert_path}")
    if not _is_ca(cert):
        raise ValueError(f"{cert_path} is not a CA certificate (no basicConstraints CA:true)")
    if not cert.not_valid_before_utc <= _now() < cert.not_valid_after_utc:
        raise ValueError(f"the CA {cert_path} is not valid now (valid {cert.not_valid_before_utc} to "
                         f"{cert.not_valid_after_utc})")
    return _Ca(cert, key, cert_path, key_path)


def _own_ca(folder: Path, days: int) -> _Ca | None:
    """The CA this module wrote into `folder` earlier, if it is whole and good for a while yet."""
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not (_same_key(cert, key) and _is_ca(cert) and _lasts(cert, days)):
        return None
    return _Ca(cert, key, folder / CA_CERT, folder / CA_KEY)


def _new_ca(folder: Path, days: int) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own per run: two runs' CAs never look alike in a trust store or an error message.
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "execbus"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"execbus CA {secrets.token_hex(4)}"),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(folder / CA_KEY, _key_pem(key), secret=True)
    write_atomic(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return _Ca(cert, key, folder / CA_CERT, folder / CA_KEY)


# -- the server certificate --------------------------------------------------------------------------------


def _generate(folder: Path, hosts: list[str], given: _Ca | None, days: int) -> TlsFiles:
    ca = given or _new_ca(folder, days)
    _issue_server_cert(folder, ca, hosts, days)
    return ca.files(folder)


def _issue_server_cert(folder: Path, ca: _Ca, hosts: list[str], days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # Never outlive the CA: a chain is only as valid as its shortest-lived link.
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca.cert), critical=False)
        .sign(ca.key, _digest(ca.key))
    )
    # Two renames, so a reader between them sees a new key beside the old certificate: the directory lock keeps
    # out `ensure`/`generate`, and nats-server reads the files only when it starts (or reloads).
    write_atomic(folder / SERVER_KEY, _key_pem(key), secret=True)
    write_atomic(folder / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))


def _server_cert_good(folder: Path, ca: _Ca, hosts: list[str], days: int) -> bool:
    try:
        cert = x509.load_pem_x509_certificate((folder / SERVER_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / SERVER_KEY).read_bytes(), password=None)
        cert.verify_directly_issued_by(ca.cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    named = set(sans.get_values_for_type(x509.DNSName)) | {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    return (
        _same_key(cert, key)
        and set(hosts) <= named
        and {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
        and _lasts(cert, days)
    )


# -- helpers -----------------------------------------------------------------------------------------------


def _days(days: int) -> int:
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    return days


def _hosts(hosts: Sequence[str]) -> list[str]:
    if isinstance(hosts, str):
        raise TypeError("hosts is a sequence of host names, not one string")
    # Normalised (an IP written as its canonical text) so `ensure` compares like with like.
    names = list(dict.fromkeys(_canonical(h) for h in hosts))
    if not names:
        raise ValueError("a server certificate needs at least one host")
    return names


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        name = host.strip().lower()
        if not name:
            raise ValueError("an empty host name") from None
        return name


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # a CA of one's own made without one
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _digest(key: PrivateKey) -> hashes.HashAlgorithm | None:
    # Ed25519/Ed448 sign with their own hash; RSA, EC and DSA take SHA-256.
    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


def _same_key(cert: x509.Certificate, key: object) -> bool:
    public = getattr(key, "public_key", None)
    if public is None:
        return False
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*raw) == public().public_bytes(*raw))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _lasts(cert: x509.Certificate, days: int) -> bool:
    """Valid now and not about to expire: renewal margin is a day, or half the lifetime asked for if shorter."""
    now = _now()
    margin = min(RENEW_BEFORE, dt.timedelta(days=days) / 2)
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > margin


HANDSHAKE_FIRST_FALLBACK = "300ms"


def _tls_lines(files: TlsFiles) -> list[str]:
    return [
        f"  cert_file: {conf_string(files.cert.absolute())}",
        f"  key_file: {conf_string(files.key.absolute())}",
        f"  ca_file: {conf_string(files.ca_cert.absolute())}",
        f"  timeout: {HANDSHAKE_TIMEOUT_S}",
    ]


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _folder(directory: str | os.PathLike[str]) -> Path:
    folder = Path(directory).absolute()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds the CA's key
    return folder


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer per directory at a time, across processes (two `execbus up` starting side by side)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
