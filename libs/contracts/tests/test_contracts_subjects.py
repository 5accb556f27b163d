from __future__ import annotations

import pytest

from tributary_contracts import (
    Namespace,
    PointClass,
    config_lookup_keys,
    escape_key,
    escape_token,
    parse_stream_config_key,
    stream_config_key,
    unescape_key,
    unescape_token,
)

AWKWARD_IDS = [
    "server-01",
    "a.b.c",
    "wild*card",
    "tail>",
    "with space",
    "tab\there",
    "100%",
    "%2E",  # looks escaped already: must survive a round trip unchanged
    "ünïcødé-温度",
    "BTCUSDT:price",
    "*",
    ">",
    "=3D",
]


@pytest.mark.parametrize("value", AWKWARD_IDS)
def test_subject_token_round_trips(value: str) -> None:
    token = escape_token(value)
    assert unescape_token(token) == value
    assert not set(token) & {".", "*", ">", " ", "\t"}


@pytest.mark.parametrize("value", AWKWARD_IDS)
def test_kv_key_token_round_trips_and_uses_only_legal_characters(value: str) -> None:
    token = escape_key(value)
    assert unescape_key(token) == value
    assert all(c.isascii() and (c.isalnum() or c in "_-=") for c in token)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a.b", "a%2Eb"), ("a*", "a%2A"), ("a>", "a%3E"), ("a b", "a%20b"), ("5%", "5%25")],
)
def test_escape_token_uses_percent_hex(value: str, expected: str) -> None:
    assert escape_token(value) == expected


def test_escape_token_refuses_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        escape_token("")


def test_subjects_have_one_token_per_source_id() -> None:
    ns = Namespace()
    assert ns.raw_subject("infrastructure", "web.01 eu") == "dp.raw.infrastructure.web%2E01%20eu"
    assert (
        ns.classified_subject("health", PointClass.CRITICAL, "p*1")
        == "dp.classified.health.critical.p%2A1"
    )
    assert ns.alert_subject("iot", "critical", "d>") == "dp.alert.iot.critical.d%3E"
    assert ns.prediction_subject("finance", "x") == "dp.prediction.finance.x"
    assert ns.rejected_subject("http") == "dp.rejected.http"
    assert ns.dlq_subject("classifier") == "dp.dlq.classifier"


def test_namespace_prefixes_subjects_streams_and_buckets() -> None:
    ns = Namespace("t42")
    assert ns.raw_subject("iot", "s") == "t42.dp.raw.iot.s"
    assert ns.all_classified() == "t42.dp.classified.>"
    assert ns.stream("DP_RAW") == "T42_DP_RAW"
    assert ns.bucket("api-keys") == "t42_api-keys"
    assert Namespace().stream("DP_RAW") == "DP_RAW"


def test_namespace_refuses_a_prefix_that_is_not_a_token() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Namespace("a.b")


@pytest.mark.parametrize("source", ["*", "web.01", "ünï"])
def test_stream_config_key_round_trips(source: str) -> None:
    key = stream_config_key("infrastructure", source, "cpu.usage")
    assert parse_stream_config_key(key) == ("infrastructure", source, "cpu.usage")


def test_config_lookup_goes_from_exact_stream_to_global_default() -> None:
    keys = config_lookup_keys("infrastructure", "web.01", "cpu", "cpu_usage")
    assert [parse_stream_config_key(k) for k in keys] == [
        ("infrastructure", "web.01", "cpu"),
        ("infrastructure", "*", "cpu"),
        ("infrastructure", "*", "cpu_usage"),
        ("infrastructure", "*", "*"),
        ("*", "*", "cpu_usage"),
        ("*", "*", "*"),
    ]
    assert len(config_lookup_keys("iot", "s", "17", None)) == 4
