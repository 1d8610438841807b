"""Writing files whole or not at all, and secrets readable by their owner only (configs with passwords, keys)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_atomic", "write_private"]


def write_atomic(path: Path, data: bytes | str, *, secret: bool = False) -> None:
    """Write `path` whole or not at all: a fresh temporary name (O_EXCL, so a leftover file of another mode is
    never reused), fsync, then a rename. A secret is 0600 from its first byte (the umask can only narrow it)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    mode = 0o600 if secret else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, text: bytes | str) -> None:
    """A file only its owner may read (its folder made first, owner-only, if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, text, secret=True)
