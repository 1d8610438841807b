"""Every NATS subject execbus uses, built here and nowhere else.

Data plane (recorded in the `EXEC` stream)::

    exec.<kind>.<venue>.<symbol-token>.<intent_id>

`kind` is the message class in snake case (`submit_intent`, `order_filled`, ...), so wildcards filter
naturally: `exec.order_filled.>` is every fill, `exec.*.paper.BTC-USDT.>` everything on one market,
`exec.*.*.*.I-42` one execution. Inside the stream the partition of the intent is added as a token by the
stream's subject transform; live subscribers never see it. Where it goes is the stream's *shape*:

    exec.<kind>.<venue>.<symbol-token>.<partition>.<intent_id>     partition_first (streams made since v2)
    exec.<kind>.<venue>.<symbol-token>.<intent_id>.<partition>     partition_last (older streams)

The partition goes before the intent because of how nats-server's file store finds a consumer's next
message: after every new 8 MB block, a consumer with several filters walks the store's per-subject index
(`checkSkipFirstBlockMulti` -> `stree.IntersectGSL`, under the store's lock). With the intent before the
partition, the filter `exec.<kind>.*.*.*.<p>` cannot prune that walk before the last token, so it visited
every intent ever logged and the stream stalled for seconds once it held a few hundred thousand;
`exec.<kind>.*.*.<p>.*` prunes at the partition token (measured in `bench/stall.py`). A stream keeps the
shape it was made with (`shape_of`): a log is never half one shape and half the other.

Symbols become NATS tokens reversibly: letters and digits stay, `/` becomes `-`, and any other character
becomes `_` plus two hex digits (`:` -> `_3A`). So `BTC/USDT` is `BTC-USDT` and `BTC/USDT:USDT` is
`BTC-USDT_3AUSDT`.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

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
    "Shape",
    "SHAPES",
    "CURRENT_SHAPE",
    "shape_of",
    "stored_filter",
    "intent_filter",
    "live_of",
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

Shape = Literal["partition_first", "partition_last"]
SHAPES: tuple[Shape, ...] = ("partition_first", "partition_last")
CURRENT_SHAPE: Shape = "partition_first"
"""The shape of a stream created now."""


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


def parse(subj: str, shape: Shape = CURRENT_SHAPE) -> SubjectParts | None:
    """Split a data-plane subject (live, or stored in a stream of `shape`); None if it is not one."""
    tokens = subj.split(".")
    if tokens[0] != PREFIX or len(tokens) not in (5, 6) or not all(tokens[1:]):
        return None
    partition = None
    if len(tokens) == 6:
        at = 4 if shape == "partition_first" else 5
        if not _PARTITION.fullmatch(tokens[at]):
            return None  # six tokens but no partition where the shape puts it: not one of ours
        partition = int(tokens.pop(at))
    return SubjectParts(tokens[1], tokens[2], symbol_from_token(tokens[3]), tokens[4], partition)


def live_of(stored: str, shape: Shape = CURRENT_SHAPE) -> str:
    """The live subject of a stored one (the partition token taken out); anything else as it is."""
    tokens = stored.split(".")
    if len(tokens) == 6 and tokens[0] == PREFIX:
        del tokens[4 if shape == "partition_first" else 5]
        return ".".join(tokens)
    return stored


def partition_transform(partitions: int, shape: Shape = CURRENT_SHAPE) -> tuple[str, str]:
    """(source, destination) of the stream's subject transform that adds the intent's partition."""
    src = f"{PREFIX}.*.*.*.*"
    head = f"{PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"
    part, intent = f"{{{{partition({partitions},4)}}}}", "{{wildcard(4)}}"
    dest = f"{head}.{part}.{intent}" if shape == "partition_first" else f"{head}.{intent}.{part}"
    return src, dest


def shape_of(dest: str | None) -> Shape | None:
    """The shape of a stream whose transform's destination is `dest`; None if it adds no partition token."""
    tokens = (dest or "").split(".")
    if len(tokens) == 6:
        for shape, at in (("partition_first", 4), ("partition_last", 5)):
            if tokens[at].startswith("{{partition("):
                return shape  # type: ignore[return-value]
    return None


def partition_filter(kind: str, partition: int, shape: Shape = CURRENT_SHAPE) -> str:
    """Stored subjects of one kind in one partition (a consumer filter)."""
    if shape == "partition_first":
        return f"{PREFIX}.{kind}.*.*.{partition}.*"
    return f"{PREFIX}.{kind}.*.*.*.{partition}"


def stored_filter(live_filter: str, shape: Shape = CURRENT_SHAPE) -> str:
    """A filter on live subjects as a filter on the stored ones: a five-token filter gains a `*` where the
    partition is; a filter ending in `>` already covers it."""
    tokens = live_filter.split(".")
    if len(tokens) != 5 or tokens[-1] == ">":
        return live_filter
    tokens.insert(4 if shape == "partition_first" else 5, "*")
    return ".".join(tokens)


def intent_filter(intent_id: str, shape: Shape = CURRENT_SHAPE) -> str:
    """Every stored message of one intent."""
    return stored_filter(f"{PREFIX}.*.*.*.{intent_id}", shape)


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
