"""Subjects: reversible symbol tokens, the data-plane layout, filters and the stream's partition transform."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages import subjects
from messages.subjects import (
    DEAD_LETTERS,
    STREAM_SUBJECTS,
    SubjectParts,
    control,
    dead_letter,
    kind_filter,
    parse,
    partition_filter,
    partition_transform,
    subject,
    symbol_from_token,
    symbol_token,
)

INTENT_ID = "intent-7f3a"
LIVE = "exec.order_filled.paper.BTC-USDT.intent-7f3a"

symbols = st.text(alphabet=string.ascii_letters + string.digits + "/:-_.", min_size=1, max_size=40)
intent_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")


def nats_match(pattern: str, subj: str) -> bool:
    """NATS wildcard semantics: `*` is one token, a trailing `>` is one or more."""
    pattern_tokens, subject_tokens = pattern.split("."), subj.split(".")
    for i, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > i
        if i >= len(subject_tokens) or token not in ("*", subject_tokens[i]):
            return False
    return len(pattern_tokens) == len(subject_tokens)


# -- symbol tokens ---------------------------------------------------------------------------------------


def test_symbol_token_turns_the_slash_into_a_dash() -> None:
    # Arrange
    symbol = "BTC/USDT"

    # Act
    token = symbol_token(symbol)

    # Assert
    assert token == "BTC-USDT"


def test_symbol_token_escapes_the_settle_colon_as_hex() -> None:
    assert symbol_token("BTC/USDT:USDT") == "BTC-USDT_3AUSDT"


def test_symbol_token_escapes_dashes_so_they_cannot_be_read_back_as_slashes() -> None:
    assert symbol_token("BTC-PERP/USD") == "BTC_2DPERP-USD"


@given(symbols)
def test_symbol_survives_the_round_trip_through_its_token(symbol: str) -> None:
    # Act
    back = symbol_from_token(symbol_token(symbol))

    # Assert
    assert back == symbol


@given(symbols)
def test_symbol_token_contains_only_nats_token_characters(symbol: str) -> None:
    # Act
    token = symbol_token(symbol)

    # Assert
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token), token


def test_symbol_token_refuses_a_character_beyond_latin_1() -> None:
    with pytest.raises(ValueError, match="NATS token"):
        symbol_token("BTC/USD\u20ae")  # U+20AE TUGRIK SIGN, as in "USD₮"


# -- data-plane subjects ---------------------------------------------------------------------------------


def test_subject_is_namespace_kind_venue_symbol_token_and_intent_id() -> None:
    # Act
    subj = subject("order_filled", "paper", "BTC/USDT", INTENT_ID)

    # Assert
    assert subj == LIVE


@pytest.mark.parametrize(
    "intent_id",
    ["intent.7f3a", "intent 7f3a", "*", ">", ""],
    ids=["dot", "space", "star-wildcard", "tail-wildcard", "empty"],
)
def test_subject_refuses_an_intent_id_that_is_not_a_nats_token(intent_id: str) -> None:
    with pytest.raises(ValueError, match="intent id"):
        subject("order_filled", "paper", "BTC/USDT", intent_id)


def test_subject_refuses_a_venue_that_is_not_a_nats_token() -> None:
    with pytest.raises(ValueError, match="venue"):
        subject("order_filled", "pa.per", "BTC/USDT", INTENT_ID)


def test_parse_inverts_subject_for_a_live_subject() -> None:
    # Arrange
    subj = subject("order_filled", "paper", "BTC/USDT:USDT", INTENT_ID)

    # Act
    parts = parse(subj)

    # Assert
    assert parts == SubjectParts("order_filled", "paper", "BTC/USDT:USDT", INTENT_ID, None)


@given(symbols, intent_ids)
def test_parse_recovers_symbol_and_intent_id_from_any_live_subject(symbol: str, intent_id: str) -> None:
    # Act
    parts = parse(subject("place_order", "paper", symbol, intent_id))

    # Assert
    assert parts == SubjectParts("place_order", "paper", symbol, intent_id, None)


def test_parse_reads_the_partition_of_a_stored_subject() -> None:
    # Arrange
    stored = f"exec.order_filled.paper.BTC-USDT.5.{INTENT_ID}"

    # Act
    parts = parse(stored)

    # Assert
    assert parts == SubjectParts("order_filled", "paper", "BTC/USDT", INTENT_ID, 5)


@pytest.mark.parametrize(
    "subj",
    [
        "exec.order_filled.paper.BTC-USDT",
        f"{LIVE}.5.extra",
        f"other.order_filled.paper.BTC-USDT.{INTENT_ID}",
        dead_letter("supervisor"),
        control("tracker", "status"),
        "",
    ],
    ids=["four-tokens", "seven-tokens", "other-namespace", "dead-letter", "control", "empty"],
)
def test_parse_returns_none_for_a_subject_outside_the_data_plane(subj: str) -> None:
    assert parse(subj) is None


def test_parse_returns_none_when_the_partition_token_is_not_a_partition() -> None:
    assert parse(f"exec.order_filled.paper.BTC-USDT.extra.{INTENT_ID}") is None
    assert parse(f"{LIVE}.extra", "partition_last") is None


def test_parse_returns_none_instead_of_raising_for_a_superscript_digit_partition() -> None:
    assert parse(f"exec.order_filled.paper.BTC-USDT.\u00b2.{INTENT_ID}") is None
    assert parse(f"{LIVE}.\u00b2", "partition_last") is None


# -- filters and other subjects --------------------------------------------------------------------------


def test_stream_records_every_data_plane_subject() -> None:
    assert nats_match(STREAM_SUBJECTS, LIVE)


def test_kind_filter_is_every_live_subject_of_one_kind() -> None:
    # Act
    pattern = kind_filter("order_filled")

    # Assert
    assert pattern == "exec.order_filled.>"


def test_kind_filter_does_not_match_another_kind() -> None:
    assert not nats_match(kind_filter("order_placed"), LIVE)


def test_partition_filter_is_one_kind_in_one_partition_of_stored_subjects() -> None:
    # Act
    pattern = partition_filter("order_filled", 3)

    # Assert
    assert pattern == "exec.order_filled.*.*.3.*"


def test_partition_filter_of_an_older_stream_has_the_partition_last() -> None:
    assert partition_filter("order_filled", 3, "partition_last") == "exec.order_filled.*.*.*.3"


def test_partition_filter_matches_a_stored_subject_of_its_partition_only() -> None:
    # Arrange
    pattern = partition_filter("order_filled", 3)

    # Act
    matches = [nats_match(pattern, f"exec.order_filled.paper.BTC-USDT.{p}.{INTENT_ID}") for p in (2, 3, 4)]

    # Assert
    assert matches == [False, True, False]


def test_partition_filter_does_not_match_a_live_subject() -> None:
    assert not nats_match(partition_filter("order_filled", 3), LIVE)


def test_dead_letter_subject_names_the_actor() -> None:
    # Act
    subj = dead_letter("supervisor")

    # Assert
    assert subj == "exec.dead_letter.supervisor"


def test_dead_letters_filter_matches_every_actors_dead_letter_subject() -> None:
    assert nats_match(DEAD_LETTERS, dead_letter("supervisor"))


def test_control_subject_is_namespace_actor_and_endpoint() -> None:
    # Act
    subj = control("tracker", "status")

    # Assert
    assert subj == "execbus.ctl.tracker.status"


def test_control_subject_is_not_recorded_in_the_stream() -> None:
    assert not nats_match(STREAM_SUBJECTS, control("tracker", "status"))


# -- the stream's partition transform --------------------------------------------------------------------


def test_partition_transform_source_matches_every_live_subject() -> None:
    # Act
    src, _ = partition_transform(8)

    # Assert
    assert nats_match(src, LIVE)


def test_partition_transform_source_does_not_match_a_dead_letter() -> None:
    # Act
    src, _ = partition_transform(8)

    # Assert
    assert not nats_match(src, dead_letter("supervisor"))


def test_partition_transform_destination_partitions_on_the_intent_token() -> None:
    # Act
    _, dest = partition_transform(8)

    # Assert
    assert "partition(8,4)" in dest


def test_partition_transform_destination_puts_the_partition_before_the_intent() -> None:
    # Act
    _, dest = partition_transform(8)

    # Assert
    assert dest.split(".") == [
        subjects.PREFIX,
        "{{wildcard(1)}}",
        "{{wildcard(2)}}",
        "{{wildcard(3)}}",
        "{{partition(8,4)}}",
        "{{wildcard(4)}}",
    ]


def test_partition_transform_of_an_older_stream_appends_the_partition() -> None:
    # Act
    _, dest = partition_transform(8, "partition_last")

    # Assert
    assert dest.split(".")[4:] == ["{{wildcard(4)}}", "{{partition(8,4)}}"]


@pytest.mark.parametrize("shape", subjects.SHAPES)
def test_shape_of_a_transform_is_the_shape_that_made_it(shape: subjects.Shape) -> None:
    assert subjects.shape_of(partition_transform(16, shape)[1]) == shape


def test_shape_of_no_transform_is_none() -> None:
    assert subjects.shape_of(None) is None
    assert subjects.shape_of("exec.{{wildcard(1)}}") is None


@pytest.mark.parametrize(
    ("shape", "stored"),
    [("partition_first", f"exec.order_filled.paper.BTC-USDT.5.{INTENT_ID}"),
     ("partition_last", f"exec.order_filled.paper.BTC-USDT.{INTENT_ID}.5")],
)
def test_a_stored_subject_parses_and_goes_live_in_its_streams_shape(shape: subjects.Shape, stored: str) -> None:
    # Act
    parts = parse(stored, shape)

    # Assert
    assert parts == SubjectParts("order_filled", "paper", "BTC/USDT", INTENT_ID, 5)
    assert subjects.live_of(stored, shape) == LIVE


def test_a_digit_only_intent_id_parses_by_the_streams_shape_not_by_guessing() -> None:
    assert parse("exec.order_filled.paper.BTC-USDT.5.12", "partition_first").intent_id == "12"  # type: ignore[union-attr]
    assert parse("exec.order_filled.paper.BTC-USDT.12.5", "partition_last").intent_id == "12"  # type: ignore[union-attr]


def test_a_stored_subject_without_a_partition_where_its_shape_puts_it_is_not_ours() -> None:
    assert parse(f"exec.order_filled.paper.BTC-USDT.{INTENT_ID}.5", "partition_first") is None


@pytest.mark.parametrize("shape", subjects.SHAPES)
def test_the_intent_filter_matches_every_stored_message_of_the_intent_and_no_other(shape: subjects.Shape) -> None:
    # Arrange
    pattern = subjects.intent_filter(INTENT_ID, shape)

    def stored(intent: str) -> str:
        return subjects.stored_filter(f"exec.order_filled.paper.BTC-USDT.{intent}", shape).replace("*", "3")

    # Assert
    assert nats_match(pattern, stored(INTENT_ID))
    assert not nats_match(pattern, stored("intent-other"))
    assert not nats_match(pattern, LIVE)


def test_a_filter_ending_in_a_full_wildcard_is_stored_as_it_is() -> None:
    assert subjects.stored_filter("exec.order_filled.>") == "exec.order_filled.>"
