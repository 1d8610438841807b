"""Every NATS subject execbus uses, built here and nowhere else.

Data plane (recorded in the `EXEC` stream)::

    exec.<kind>.<venue>.<symbol-token>.<intent_id>

`kind` is the message class in snake case (`submit_intent`, `order_filled`, ...), so wildcards filter
naturally: `exec.order_filled.>` is every fill, `exec.*.paper.BTC-USDT.>` everything on one market,
`exec.*.*.*.I-42` one execution. Inside the stream a sixth token, the partition of the intent, is
appended by the stream's subject transform; live subscribers never see it.

Symbols become NATS tokens reversibly: letters and digits stay, `/` becomes `-`, and any other character
becomes `_` plus two hex digits (`:` -> `_3A`). So `BTC/USDT` is `BTC-USDT` and `BTC/USDT:USDT` is
`BTC-USDT_3AUSDT`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "PREFIX",
    "STREAM_SUBJECTS",
    "symbol_token",
    "symbol_from_token",
    "subject",
    "SubjectParts",
    "parse",
    "partition_filter",
    "kind_filter",
    "dead_letter",
    "DEAD_LETTERS",
    "control",
    "partition_transform",
    "matches",
    "ANSWER_KINDS",
    "answer_filters",
]

PREFIX = "exec"
STREAM_SUBJECTS = f"{PREFIX}.>"
DEAD_LETTERS = f"{PREFIX}.dead_letter.>"
_CONTROL = "execbus.ctl"

_PLAIN = re.compile(r"[A-Za-z0-9]")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_PARTITION = re.compile(r"[0-9]{1,6}")


def symbol_token(symbol: str) -> str:
    """`BTC/USDT` -> `BTC-USDT`; reversible by `symbol_from_token`."""
    out = []
    for ch in symbol:
        if _PLAIN.match(ch):
            out.append(ch)
        elif ch == "/":
            out.append("-")
        else:
            code = ord(ch)
            if code > 0xFF:
                raise ValueError(f"symbol {symbol!r} has a character that cannot be a NATS token")
            out.append(f"_{code:02X}")
    return "".join(out)


def symbol_from_token(token: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), token.replace("-", "/"))


def subject(kind: str, venue: str, symbol: str, intent_id: str) -> str:
    """The live subject of one message."""
    if not _TOKEN.match(intent_id) or not _TOKEN.match(venue):
        raise ValueError(f"intent id {intent_id!r} and venue {venue!r} must be NATS tokens")
    return f"{PREFIX}.{kind}.{venue}.{symbol_token(symbol)}.{intent_id}"


class SubjectParts(NamedTuple):
    kind: str
    venue: str
    symbol: str
    intent_id: str
    partition: int | None


def parse(subj: str) -> SubjectParts | None:
    """Split a data-plane subject (live or stored, with its partition token); None if it is not one."""
    tokens = subj.split(".")
    if tokens[0] != PREFIX or len(tokens) not in (5, 6) or not all(tokens[1:5]):
        return None
    partition = None
    if len(tokens) == 6:
        if not _PARTITION.fullmatch(tokens[5]):
            return None  # six tokens but no partition: not one of ours
        partition = int(tokens[5])
    return SubjectParts(tokens[1], tokens[2], symbol_from_token(tokens[3]), tokens[4], partition)


def partition_transform(partitions: int) -> tuple[str, str]:
    """(source, destination) of the stream's subject transform that appends the intent's partition."""
    src = f"{PREFIX}.*.*.*.*"
    dest = (
        f"{PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{{{{wildcard(4)}}}}"
        f".{{{{partition({partitions},4)}}}}"
    )
    return src, dest


def partition_filter(kind: str, partition: int) -> str:
    """Stored subjects of one kind in one partition (a consumer filter)."""
    return f"{PREFIX}.{kind}.*.*.*.{partition}"


def kind_filter(kind: str) -> str:
    """Live subjects of one kind (for `nats sub` and monitors)."""
    return f"{PREFIX}.{kind}.>"


def dead_letter(actor: str) -> str:
    return f"{PREFIX}.dead_letter.{actor}"


ANSWER_KINDS = ("intent_accepted", "intent_rejected", "cancel_intent_accepted", "cancel_intent_rejected",
                "order_filled", "execution_completed")
"""What an upstream service hears about its intents: the answers to what it published, the fills, the report.
(It may read nothing else live; see bus/ops/auth.py.)"""


def answer_filters(intent_id: str) -> list[str]:
    """Live subjects of the answers about one intent."""
    return [f"{PREFIX}.{kind}.*.*.{intent_id}" for kind in ANSWER_KINDS]


def control(actor: str, endpoint: str) -> str:
    """Control-plane request/reply subjects (not recorded), e.g. the tracker's status endpoint."""
    return f"{_CONTROL}.{actor}.{endpoint}"


def matches(pattern: str, subj: str) -> bool:
    """NATS subject matching: `*` is one token, a trailing `>` one or more."""
    p, s = pattern.split("."), subj.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)
