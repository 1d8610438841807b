"""One encoder and one typed decoder for the whole contract, plus readable decode errors and JSON Schema."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Union

import msgspec

from messages import controls, intents, orders, pricing
from messages.base import Message
from messages.ops import DeadLetter, IntentStatus, StatusQuery

__all__ = [
    "MESSAGE_TYPES",
    "BY_KIND",
    "AnyMessage",
    "InvalidMessage",
    "encode",
    "decode",
    "decode_as",
    "json_schema",
    "HEADER_CORRELATION",
    "headers_for",
]

_MESSAGE_MODULES = (intents, pricing, orders, controls)
MESSAGE_TYPES: tuple[type[Message], ...] = tuple(
    kind
    for module in _MESSAGE_MODULES
    for kind in (getattr(module, name) for name in module.__all__)
    if isinstance(kind, type) and issubclass(kind, Message)
)
"""Every message kind, collected from the modules that define them (each names its own in `__all__`)."""
BY_KIND: dict[str, type[Message]] = {t.kind: t for t in MESSAGE_TYPES}

AnyMessage = Union[MESSAGE_TYPES]  # type: ignore[valid-type]

HEADER_CORRELATION = "Execbus-Correlation-Id"
"""Our own header (never the reserved `Nats-` prefix): the intent id, for tools that read headers only."""

_encoder = msgspec.json.Encoder(decimal_format="string")
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyMessage)
_decoders: dict[type[Message], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in MESSAGE_TYPES
}


class InvalidMessage(ValueError):
    """A payload that is not a valid message. `field` is the offending field ("" if none applies)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


_EXPONENT = re.compile(rb'"-?\d+(?:\.\d+)?E[+-]?\d+"')
"""A JSON string that is a number in exponent notation: how msgspec writes `Decimal("0.00000001")` ("1E-8")."""
_plain_encoder = msgspec.json.Encoder()


def encode(msg: Any) -> bytes:
    """JSON, with every Decimal as a string in plain notation (`"0.00000001"`, never `"1E-8"`), so a
    JavaScript or spreadsheet consumer reads it as it is. msgspec writes `str(Decimal)`, which uses exponent
    notation below 1e-6; such a payload (rare: dust amounts, tiny fees) is written again the exact way."""
    data = _encoder.encode(msg)
    if _EXPONENT.search(data) is None:
        return data
    return _plain_encoder.encode(_plain_decimals(msgspec.to_builtins(msg, builtin_types=(Decimal,))))


def _plain_decimals(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {k: _plain_decimals(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # (`to_builtins` keeps a struct's tuples as tuples)
        return [_plain_decimals(v) for v in value]
    return value


def decode(raw: bytes) -> Message:
    """Any message, dispatched on its `"type"` tag."""
    try:
        return _any_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        retagged = _params_tagged(raw, exc)
        if retagged is not None:
            return decode(retagged)
        raise _explain(exc) from None


def decode_as(raw: bytes, expected: type[Message]) -> Message:
    """A message that must be of one type: a missing `"type"` tag is allowed, a different one is not."""
    try:
        return _decoders[expected].decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        retagged = _params_tagged(raw, exc)
        if retagged is not None:
            return decode_as(retagged, expected)
        raise _explain(exc) from None


def _params_tagged(raw: bytes, exc: Exception) -> bytes | None:
    """An intent whose `params` leave out their strategy tag (it is in the top-level `strategy`, or the
    default market): the same intent with the tag put in, or None when that is not what failed."""
    if not isinstance(exc, msgspec.ValidationError) or "`$.params`" not in str(exc) or "`strategy`" not in str(exc):
        return None
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    params = doc.get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or "strategy" in params:
        return None
    strategy = doc.get("strategy") or "market"
    if not isinstance(strategy, str):
        return None
    return msgspec.json.encode({**doc, "params": {**params, "strategy": strategy}})


def headers_for(msg: Message) -> dict[str, str]:
    return {"Nats-Msg-Id": msg.msg_id, HEADER_CORRELATION: msg.intent_id}


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")
_NAMED = re.compile(r"^`(?P<name>[a-z_]+)`")


def _explain(exc: Exception) -> InvalidMessage:
    """Turn msgspec's error text into (field, reason): `Expected `str`, got `int` - at `$.side``
    names `side`; our own `__post_init__` errors start with the field in backticks."""
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return InvalidMessage("", f"malformed JSON: {text}")
    match = _AT.match(text)
    reason = match.group("reason") if match else text
    path = (match.group("path") or "") if match else ""
    field = path.lstrip(".").replace("[", ".").replace("]", "")
    for pattern in (_MISSING, _UNKNOWN, _NAMED):
        named = pattern.search(reason)
        if named:
            name = named.group("name")
            field = f"{field}.{name}" if field else name
            break
    if field == "type" or "tag" in reason and not field:
        field = "type"
    return InvalidMessage(field, reason)


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of every message, for clients in other languages."""
    schemas, components = msgspec.json.schema_components(
        [*MESSAGE_TYPES, DeadLetter, StatusQuery, IntentStatus], ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "execbus messages",
        "description": "Every execbus message; the `type` property names the message.",
        "anyOf": list(schemas),
        "$defs": components,
    }
