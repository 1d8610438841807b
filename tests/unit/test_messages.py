"""The message contract: round trips, deterministic ids, hand-written JSON, readable errors, JSON Schema."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import messages
from messages import (
    BY_KIND,
    MESSAGE_TYPES,
    AttemptTimedOut,
    OrderKept,
    CancelOrder,
    CancelRejected,
    AggressiveLimitParams,
    InvalidMessage,
    IntentRejected,
    LateFillRecorded,
    Message,
    OrderCanceled,
    OrderFilled,
    OrderFinalized,
    OrderOutcomeUnknown,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
    PriceQuoted,
    PriceRequested,
    PriceUnavailable,
    SubmitIntent,
    decode,
    decode_as,
    encode,
    headers_for,
    json_schema,
)
from messages.codec import HEADER_CORRELATION
from tests.unit.factories import ALL_TYPES, INTENT_ID, OPS_TYPES, make, registered_types

ORDER_TYPES: tuple[type[Message], ...] = (
    PlaceOrder,
    OrderPlaced,
    OrderRejected,
    OrderOutcomeUnknown,
    CancelOrder,
    OrderCanceled,
    CancelRejected,
    OrderFilled,
    OrderFinalized,
    LateFillRecorded,
)
PRICING_TYPES: tuple[type[Message], ...] = (PriceRequested, PriceQuoted, PriceUnavailable)

_DROP = object()
"""In a payload change: remove the field."""


def name_of(cls: type[Any]) -> str:
    return cls.__name__


def wire(msg: msgspec.Struct) -> dict[str, Any]:
    """The encoded message as plain JSON values, as any other client would see it."""
    result: dict[str, Any] = json.loads(encode(msg))
    return result


def decimals_with_wire(value: Any, json_value: Any, path: str = "") -> list[tuple[str, Decimal, Any]]:
    """Every Decimal in a message (nested structs and tuples too), paired with its JSON value."""
    if isinstance(value, Decimal):
        return [(path, value, json_value)]
    if isinstance(value, msgspec.Struct):
        return [
            pair
            for name in value.__struct_fields__
            for pair in decimals_with_wire(getattr(value, name), json_value[name], f"{path}.{name}".lstrip("."))
        ]
    if isinstance(value, tuple):
        return [
            pair
            for i, (item, json_item) in enumerate(zip(value, json_value, strict=True))
            for pair in decimals_with_wire(item, json_item, f"{path}.{i}")
        ]
    return []


TYPES_WITH_DECIMALS = tuple(t for t in ALL_TYPES if decimals_with_wire(make(t), wire(make(t))))


def submit_payload(**changes: Any) -> bytes:
    """A SubmitIntent written by hand, as a client in another language would: a plain JSON object."""
    payload: dict[str, Any] = {
        "type": "SubmitIntent",
        "intent_id": "ext-client-1",
        "venue": "paper",
        "symbol": "BTC/USDT",
        "side": "sell",
        "qty": "0.25",
    }
    for name, value in changes.items():
        if value is _DROP:
            payload.pop(name)
        else:
            payload[name] = value
    return json.dumps(payload).encode()


def place_order_payload(**changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "type": "PlaceOrder",
        "intent_id": "ext-client-1",
        "venue": "paper",
        "symbol": "BTC/USDT",
        "client_order_id": "ext-client-1-1",
        "attempt": 1,
        "side": "buy",
        "order_type": "limit",
        "qty": "0.25",
        "price": "61837.63",
    }
    for name, value in changes.items():
        if value is _DROP:
            payload.pop(name)
        else:
            payload[name] = value
    return json.dumps(payload).encode()


def decode_error(raw: bytes) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        decode(raw)
    return info.value


# -- the registry of message types -----------------------------------------------------------------------


def test_factory_registry_covers_every_message_type() -> None:
    # Act
    missing = {t.__name__ for t in ALL_TYPES} - {t.__name__ for t in registered_types()}

    # Assert
    assert missing == set(), f"add factories for {sorted(missing)} in tests/unit/factories.py"


def test_every_message_class_in_the_contract_is_in_message_types() -> None:
    # Arrange
    def public_subclasses(cls: type[Message]) -> set[type[Message]]:
        found = set()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("messages.") and not sub.__name__.startswith("_"):
                found.add(sub)
            found |= public_subclasses(sub)
        return found

    # Act
    missing = public_subclasses(Message) - set(MESSAGE_TYPES)

    # Assert
    assert missing == set()


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_by_kind_maps_each_kind_back_to_its_class(cls: type[Message]) -> None:
    assert BY_KIND[cls.kind] is cls


@pytest.mark.parametrize(
    ("cls", "kind"),
    [
        (SubmitIntent, "submit_intent"),
        (OrderFilled, "order_filled"),
        (LateFillRecorded, "late_fill_recorded"),
        (messages.ExecutionTimedOut, "execution_timed_out"),
    ],
    ids=["SubmitIntent", "OrderFilled", "LateFillRecorded", "ExecutionTimedOut"],
)
def test_kind_is_the_class_name_in_snake_case(cls: type[Message], kind: str) -> None:
    assert cls.kind == kind


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_kind_is_a_nats_subject_token(cls: type[Message]) -> None:
    assert re.fullmatch(r"[a-z_]+", cls.kind)


# -- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_decode_returns_the_encoded_message(cls: type[Message]) -> None:
    # Arrange
    msg = make(cls)

    # Act
    decoded = decode(encode(msg))

    # Assert
    assert decoded == msg


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_decode_as_its_own_type_returns_the_encoded_message(cls: type[Message]) -> None:
    # Arrange
    msg = make(cls)

    # Act
    decoded = decode_as(encode(msg), cls)

    # Assert
    assert decoded == msg


@pytest.mark.parametrize("cls", OPS_TYPES, ids=name_of)
def test_ops_message_round_trips_through_a_typed_decoder(cls: type[msgspec.Struct]) -> None:
    # Arrange
    msg = make(cls)

    # Act
    decoded = msgspec.json.decode(encode(msg), type=cls)

    # Assert
    assert decoded == msg


@pytest.mark.parametrize("cls", ALL_TYPES, ids=name_of)
def test_encoded_json_names_the_class_in_type(cls: type[msgspec.Struct]) -> None:
    # Act
    obj = wire(make(cls))

    # Assert
    assert obj["type"] == cls.__name__


@pytest.mark.parametrize("cls", TYPES_WITH_DECIMALS, ids=name_of)
def test_decimal_fields_travel_as_json_strings_of_the_same_value(cls: type[msgspec.Struct]) -> None:
    # Arrange
    msg = make(cls)

    # Act
    pairs = decimals_with_wire(msg, wire(msg))

    # Assert
    wrong = [
        (path, value, sent) for path, value, sent in pairs if not isinstance(sent, str) or Decimal(sent) != value
    ]
    assert wrong == []


def test_one_satoshi_qty_survives_the_round_trip_exactly() -> None:
    # Arrange
    msg = make(SubmitIntent, qty=Decimal("0.00000001"))

    # Act
    decoded = decode_as(encode(msg), SubmitIntent)

    # Assert
    assert decoded.qty.as_tuple() == Decimal("0.00000001").as_tuple()


def test_price_in_cents_survives_the_round_trip_exactly() -> None:
    # Arrange
    msg = make(OrderFilled, price=Decimal("61837.63"))

    # Act
    obj = wire(msg)
    decoded = decode_as(encode(msg), OrderFilled)

    # Assert
    assert (obj["price"], decoded.price.as_tuple()) == ("61837.63", Decimal("61837.63").as_tuple())


@given(st.decimals(min_value=Decimal("1e-12"), max_value=Decimal("1e12"), allow_nan=False, allow_infinity=False))
def test_any_positive_qty_survives_the_round_trip_digit_for_digit(qty: Decimal) -> None:
    # Arrange
    msg = make(SubmitIntent, qty=qty)

    # Act
    decoded = decode_as(encode(msg), SubmitIntent)

    # Assert
    assert decoded.qty.as_tuple() == qty.as_tuple()


# -- deterministic message ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_same_content_gives_the_same_msg_id(cls: type[Message]) -> None:
    # Act
    first, second = make(cls), make(cls)

    # Assert
    assert first.msg_id and first.msg_id == second.msg_id


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_timestamps_do_not_change_the_msg_id(cls: type[Message]) -> None:
    # Arrange: a handler that runs twice stamps its output with two different clock readings
    first = make(cls, ts_event=1_000, ts_init=2_000)

    # Act
    second = make(cls, ts_event=3_000, ts_init=4_000)

    # Assert
    assert first.msg_id == second.msg_id


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_different_intent_gives_a_different_msg_id(cls: type[Message]) -> None:
    assert make(cls).msg_id != make(cls, intent_id="intent-other").msg_id


@pytest.mark.parametrize("cls", [OrderFilled, LateFillRecorded], ids=name_of)
def test_different_trade_id_gives_a_different_msg_id(cls: type[Message]) -> None:
    assert make(cls, trade_id="paper-t-1").msg_id != make(cls, trade_id="paper-t-2").msg_id


@pytest.mark.parametrize("cls", [AttemptTimedOut, OrderKept, *PRICING_TYPES], ids=name_of)
def test_different_attempt_gives_a_different_msg_id(cls: type[Message]) -> None:
    assert make(cls, attempt=1).msg_id != make(cls, attempt=2).msg_id


@pytest.mark.parametrize("cls", PRICING_TYPES, ids=name_of)
def test_different_price_request_retry_gives_a_different_msg_id(cls: type[Message]) -> None:
    assert make(cls, request=0).msg_id != make(cls, request=1).msg_id


@pytest.mark.parametrize("cls", ORDER_TYPES, ids=name_of)
def test_different_client_order_id_gives_a_different_msg_id(cls: type[Message]) -> None:
    # Arrange
    first = make(cls, client_order_id=f"{INTENT_ID}-1")

    # Act
    second = make(cls, client_order_id=f"{INTENT_ID}-2")

    # Assert
    assert first.msg_id != second.msg_id


def test_duplicate_rejection_has_a_different_msg_id_from_an_invalid_one() -> None:
    # Arrange
    invalid = make(IntentRejected)

    # Act
    duplicate = make(IntentRejected, field="intent_id", reason="intent id already taken", duplicate=True)

    # Assert
    assert invalid.msg_id != duplicate.msg_id


def test_msg_id_given_on_the_wire_is_kept() -> None:
    # Arrange
    raw = submit_payload(msg_id="client-chosen-42")

    # Act
    msg = decode(raw)

    # Assert
    assert msg.msg_id == "client-chosen-42"


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_headers_carry_the_msg_id_as_nats_msg_id(cls: type[Message]) -> None:
    # Arrange
    msg = make(cls)

    # Act
    headers = headers_for(msg)

    # Assert
    assert headers["Nats-Msg-Id"] == msg.msg_id


def test_correlation_header_carries_the_intent_id() -> None:
    # Act
    headers = headers_for(make(OrderFilled))

    # Assert
    assert headers[HEADER_CORRELATION] == INTENT_ID


def test_our_own_headers_do_not_use_the_reserved_nats_prefix() -> None:
    # Act
    ours = [name for name in headers_for(make(OrderFilled)) if name != "Nats-Msg-Id"]

    # Assert
    assert ours and not any(name.lower().startswith("nats-") for name in ours)


# -- JSON written by other clients -----------------------------------------------------------------------


def test_hand_written_submit_intent_decodes_with_defaults_filled_in() -> None:
    # Arrange
    raw = submit_payload()

    # Act
    msg = decode(raw)

    # Assert
    assert msg == SubmitIntent(
        intent_id="ext-client-1", venue="paper", symbol="BTC/USDT", side="sell", qty=Decimal("0.25")
    )


@pytest.mark.parametrize(
    ("qty", "expected"),
    [
        ("0.00000001", Decimal("0.00000001")),
        ("61837.63", Decimal("61837.63")),
        (0.00000001, Decimal("0.00000001")),
        (61837.63, Decimal("61837.63")),
        (2, Decimal("2")),
    ],
    ids=["string-satoshi", "string-cents", "number-satoshi", "number-cents", "number-integer"],
)
def test_hand_written_qty_decodes_from_a_json_string_or_number(qty: str | float, expected: Decimal) -> None:
    # Arrange
    raw = submit_payload(qty=qty)

    # Act
    msg = decode(raw)

    # Assert
    assert isinstance(msg, SubmitIntent) and msg.qty == expected


def test_hand_written_params_decode_into_execution_params() -> None:
    # Arrange
    raw = submit_payload(
        strategy="aggressive_limit",
        params={"max_retries": 5, "total_timeout_seconds": 20, "trigger_fill_price": "61900.5"},
    )

    # Act
    msg = decode(raw)

    # Assert
    assert isinstance(msg, SubmitIntent) and msg.params == AggressiveLimitParams(
        max_retries=5, total_timeout_seconds=Decimal("20"), trigger_fill_price=Decimal("61900.5")
    )


def test_hand_written_limit_order_decodes_with_price_as_a_json_number() -> None:
    # Arrange
    raw = place_order_payload(price=61837.63)

    # Act
    msg = decode(raw)

    # Assert
    assert isinstance(msg, PlaceOrder) and msg.price == Decimal("61837.63")


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=name_of)
def test_unknown_fields_on_a_message_are_ignored(cls: type[Message]) -> None:
    # Arrange: a newer producer added fields this version does not know
    msg = make(cls)
    obj = wire(msg) | {"added_in_v2": {"nested": [1, "two"]}, "venue_hint": None}

    # Act
    decoded = decode(json.dumps(obj).encode())

    # Assert
    assert decoded == msg


def test_unknown_field_inside_params_is_rejected() -> None:
    # Act
    error = decode_error(submit_payload(params={"slice_count": 4}))

    # Assert
    assert error.field == "params.slice_count"


def test_decode_as_accepts_a_payload_without_a_type_tag() -> None:
    # Arrange
    raw = submit_payload(type=_DROP)

    # Act
    msg = decode_as(raw, SubmitIntent)

    # Assert
    assert msg == decode(submit_payload())


def test_decode_as_rejects_a_payload_tagged_as_another_type() -> None:
    # Act
    with pytest.raises(InvalidMessage) as info:
        decode_as(place_order_payload(), SubmitIntent)

    # Assert
    assert info.value.field == "type"


@pytest.mark.parametrize(
    "raw",
    [submit_payload(type="SubmitOrder"), submit_payload(type=_DROP), submit_payload(type=7)],
    ids=["unknown-type", "missing-type", "type-not-a-string"],
)
def test_decode_names_type_when_the_tag_is_wrong(raw: bytes) -> None:
    assert decode_error(raw).field == "type"


# -- validation errors name the field --------------------------------------------------------------------

INVALID_SUBMISSIONS = [
    pytest.param(b'{"type": "SubmitIntent", "qty": ', "", "malformed JSON", id="malformed-json"),
    pytest.param(b"\xff\xfe", "", "malformed JSON", id="not-utf8"),
    pytest.param(submit_payload(qty=_DROP), "qty", "missing required field `qty`", id="missing-qty"),
    pytest.param(submit_payload(qty=True), "qty", "Expected `decimal`, got `bool`", id="qty-wrong-type"),
    pytest.param(submit_payload(side=1), "side", "Expected `str`, got `int`", id="side-wrong-type"),
    pytest.param(submit_payload(qty="0"), "qty", "must be > 0", id="zero-qty"),
    pytest.param(submit_payload(qty="-0.5"), "qty", "must be > 0", id="negative-qty"),
    pytest.param(submit_payload(qty=-0.5), "qty", "must be > 0", id="negative-qty-number"),
    pytest.param(submit_payload(qty="NaN"), "qty", "finite", id="nan-qty"),
    pytest.param(submit_payload(qty="Infinity"), "qty", "finite", id="infinite-qty"),
    pytest.param(submit_payload(side="hold"), "side", "'hold'", id="bad-side"),
    pytest.param(submit_payload(strategy="vwap"), "strategy", "'vwap'", id="unknown-strategy"),
    pytest.param(
        submit_payload(strategy="market", params={"horizon_seconds": "6"}),
        "params.horizon_seconds",
        "unknown field `horizon_seconds`",
        id="twap-param-on-a-market-intent",
    ),
    pytest.param(
        submit_payload(strategy="market", params={"strategy": "twap", "slices": 4}),
        "params",
        "are twap's but `strategy` is 'market'",
        id="params-of-another-strategy",
    ),
    pytest.param(submit_payload(strategy="iceberg"), "params", "display_qty", id="iceberg-without-display-qty"),
    pytest.param(
        submit_payload(strategy="twap", params={"slices": 4, "interval_seconds": "2"}),
        "params.slices",
        "give one of them",
        id="twap-slices-and-interval",
    ),
    pytest.param(
        submit_payload(params={"max_retires": 5}),
        "params.max_retires",
        "unknown field `max_retires`",
        id="misspelt-param",
    ),
    pytest.param(
        submit_payload(strategy="aggressive_limit", params={"max_retries": "five"}),
        "params.max_retries",
        "Expected `int`, got `str`",
        id="param-wrong-type",
    ),
    pytest.param(
        submit_payload(params={"timeout_seconds": "-1"}),
        "params.timeout_seconds",
        "must be > 0",
        id="param-negative",
    ),
    pytest.param(submit_payload(intent_id="ext client 1"), "intent_id", "regex", id="intent-id-with-space"),
    pytest.param(submit_payload(intent_id="ext.client.1"), "intent_id", "regex", id="intent-id-with-dot"),
    pytest.param(submit_payload(symbol="BTCUSDT"), "symbol", "regex", id="symbol-without-slash"),
]


@pytest.mark.parametrize(("raw", "field", "_reason"), INVALID_SUBMISSIONS)
def test_invalid_submission_error_names_the_field(raw: bytes, field: str, _reason: str) -> None:
    # Act
    error = decode_error(raw)

    # Assert
    assert error.field == field


@pytest.mark.parametrize(("raw", "_field", "reason"), INVALID_SUBMISSIONS)
def test_invalid_submission_error_gives_a_readable_reason(raw: bytes, _field: str, reason: str) -> None:
    # Act
    error = decode_error(raw)

    # Assert: says what is wrong, without msgspec's `$.path` (the field says where)
    assert reason in error.reason and "`$" not in error.reason


def test_invalid_message_text_starts_with_the_field() -> None:
    # Act
    error = decode_error(submit_payload(qty="0"))

    # Assert
    assert str(error) == "qty: `qty` must be > 0, got 0"


def test_limit_place_order_without_price_names_price() -> None:
    # Act
    error = decode_error(place_order_payload(price=_DROP))

    # Assert
    assert (error.field, error.reason) == ("price", "`price` is required for a limit order")


def test_constructing_a_submit_intent_with_zero_qty_raises_naming_qty() -> None:
    with pytest.raises(ValueError, match="`qty` must be > 0"):
        make(SubmitIntent, qty=Decimal("0"))


@pytest.mark.parametrize("name", ["params", "ms"])
def test_unknown_param_whose_name_ends_the_word_params_is_named_under_params(name: str) -> None:
    # Arrange: e.g. a client that wrapped its params twice
    raw = submit_payload(params={name: {"max_retries": 5}})

    # Act
    error = decode_error(raw)

    # Assert
    assert error.field == f"params.{name}"


# -- JSON Schema -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_TYPES, ids=name_of)
def test_json_schema_defines_every_message_type(cls: type[msgspec.Struct]) -> None:
    assert cls.__name__ in json_schema()["$defs"]


def test_json_schema_is_json_serialisable() -> None:
    # Arrange
    schema = json_schema()

    # Act
    text = json.dumps(schema, allow_nan=False)

    # Assert
    assert json.loads(text).keys() == schema.keys()


def test_json_schema_of_submit_intent_requires_routing_side_and_qty() -> None:
    # Act
    required = set(json_schema()["$defs"]["SubmitIntent"]["required"])

    # Assert
    assert {"intent_id", "venue", "symbol", "side", "qty"} <= required


def test_decimals_are_written_without_exponent_so_any_consumer_reads_them_as_they_are() -> None:
    """msgspec writes `str(Decimal)`, which is `1E-8` for 0.00000001: a JavaScript or spreadsheet reader
    would take that for a float or text. Every Decimal goes out in plain notation; strings are untouched."""
    from messages import OrderFilled, encode

    fill = OrderFilled(intent_id="I-1E5", venue="paper", symbol="BTC/USDT", client_order_id="1E5", order_id="7",
                       trade_id="2E-3", attempt=1, side="buy", qty=Decimal("0.00000001"), price=Decimal("64000.5"),
                       fee=Decimal("-1E-10"), fee_currency="USDT", liquidity="maker", ts_event=1)

    body = json.loads(encode(fill))

    assert body["qty"] == "0.00000001" and body["fee"] == "-0.0000000001" and body["price"] == "64000.5"
    assert body["client_order_id"] == "1E5" and body["trade_id"] == "2E-3"  # (strings that look like numbers)
    assert decode(encode(fill)) == fill
    assert json.loads(encode(new_like := fill))["msg_id"] == new_like.msg_id
    assert b"E-" not in encode({"a": [Decimal("0E-8"), Decimal("1E+3")]}) and encode({"a": Decimal("1E+3")}) == b'{"a":"1000"}'


def test_decimals_inside_a_tuple_of_structs_are_written_without_exponent_too() -> None:
    """A status answer lists its orders in a tuple of structs, and a dust fill there is 0.00000001 as well
    (msgspec's `to_builtins` keeps tuples as tuples: the rewrite has to go into them)."""
    from messages.ops import IntentStatus, OrderStatus

    dust = OrderStatus(client_order_id="c-1", order_id="7", attempt=1, state="final", filled_qty=Decimal("1E-8"), fills=1)
    status = IntentStatus(intent_id="i-1", known=True, filled_qty=Decimal("1E-8"), orders=(dust,))

    body = json.loads(encode(status))

    assert body["orders"][0]["filled_qty"] == "0.00000001" and body["filled_qty"] == "0.00000001"
    assert msgspec.json.decode(encode(status), type=IntentStatus) == status
