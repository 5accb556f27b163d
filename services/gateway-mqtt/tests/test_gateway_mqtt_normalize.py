"""Table-driven tests of topic parsing and payload normalisation, and of every rejection code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway_mqtt.normalize import (
    REJECTION_CODES,
    Rejection,
    Route,
    normalize_message,
    parse_topic,
    with_ts,
)
from gateway_mqtt.settings import GatewayMqttSettings
from tributary_contracts import DataPoint, LegacyIds

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
INFRA = Route("infrastructure", "server-01", "cpu_usage")
LEGACY = Route("iot", "sensor-17", "17", LegacyIds(sensor_id=17))
MAX = 16 * 1024


# --- topics ---------------------------------------------------------------------------------

TOPIC_CASES: list[tuple[str, str, Route | str]] = [
    ("infrastructure/server-01/cpu_usage/data", "", INFRA),
    (
        "finance/trading-system/latency_ms/data",
        "",
        Route("finance", "trading-system", "latency_ms"),
    ),
    ("health/patient 7/heart.rate/data", "", Route("health", "patient 7", "heart.rate")),
    ("iot/sensors/17/readings", "", LEGACY),
    ("iot/sensors/0017/readings", "", LEGACY),
    ("site-a/infrastructure/server-01/cpu_usage/data", "site-a", INFRA),
    ("site-a/x/iot/sensors/17/readings", "site-a/x", LEGACY),
    ("iot/s/c/data", "", "iot_domain"),
    ("Infrastructure/s/c/data", "", "domain"),
    ("in.fra/s/c/data", "", "domain"),
    ("infrastructure/s/c/readings", "", "topic"),
    ("infrastructure/s/c/d/data", "", "topic"),
    ("infrastructure//c/data", "", "topic"),
    ("foo", "", "topic"),
    ("iot/sensors/abc/readings", "", "sensor_id"),
    ("iot/sensors/-1/readings", "", "sensor_id"),
    ("iot/sensors/99999999999999999999/readings", "", "sensor_id"),
    ("infrastructure/s\x07x/c/data", "", "source_id"),
    (f"infrastructure/s/{'c' * 257}/data", "", "stream_id"),
    ("other/infrastructure/s/c/data", "site-a", "topic"),
]


@pytest.mark.parametrize(("topic", "prefix", "expected"), TOPIC_CASES)
def test_parse_topic(topic: str, prefix: str, expected: Route | str) -> None:
    result = parse_topic(topic, prefix)
    if isinstance(expected, Route):
        assert result == expected
    else:
        assert isinstance(result, Rejection)
        assert result.code == expected
        assert result.reason


def test_legacy_topic_ids_follow_the_architecture() -> None:
    route = parse_topic("iot/sensors/42/readings")

    assert route == Route("iot", "sensor-42", "42", LegacyIds(sensor_id=42))


# --- accepted payloads ------------------------------------------------------------------------

ACCEPTED: list[tuple[str, Route, Any, dict[str, Any], bool]] = [
    (
        "iso_z",
        INFRA,
        {"value": 45.2, "timestamp": "2026-02-25T21:00:00Z"},
        {"value": 45.2, "ts": datetime(2026, 2, 25, 21, tzinfo=UTC)},
        True,
    ),
    (
        "offset_to_utc",
        INFRA,
        {"value": 1, "timestamp": "2026-02-25T23:30:00+02:30"},
        {"value": 1.0, "ts": datetime(2026, 2, 25, 21, tzinfo=UTC)},
        True,
    ),
    (
        "epoch_seconds",
        INFRA,
        {"value": 1, "timestamp": 1772053200.5},
        {"ts": datetime(2026, 2, 25, 21, 0, 0, 500000, tzinfo=UTC)},
        True,
    ),
    ("no_timestamp_is_receive_time", INFRA, {"value": 12.5}, {"ts": RECEIVED}, False),
    (
        "null_timestamp_is_receive_time",
        INFRA,
        {"value": 1, "timestamp": None},
        {"ts": RECEIVED},
        False,
    ),
    (
        "all_fields",
        INFRA,
        {"value": -3, "metadata": {"core": 0}, "sequence": 9, "stream_type": "cpu_usage"},
        {"value": -3.0, "metadata": {"core": 0}, "sequence": 9, "stream_type": "cpu_usage"},
        False,
    ),
    (
        "legacy",
        LEGACY,
        {"value": 21.5, "timestamp": "2026-02-25T21:00:00Z"},
        {"stream_id": "17", "legacy": LegacyIds(sensor_id=17)},
        True,
    ),
    ("legacy_matching_sensor_id", LEGACY, {"value": 1, "sensor_id": 17}, {"value": 1.0}, False),
]


@pytest.mark.parametrize(
    ("route", "payload", "expected", "stamped"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted_payloads(
    route: Route, payload: Any, expected: dict[str, Any], stamped: bool
) -> None:
    result = normalize_message(route, orjson.dumps(payload), RECEIVED, MAX)

    assert not isinstance(result, Rejection), result
    point, had_timestamp = result
    assert had_timestamp == stamped
    assert point.stream_id == route.stream_id
    for name, value in expected.items():
        assert getattr(point, name) == value
    # Built without validation: it must equal (and serialise like) a validated point.
    validated = DataPoint.model_validate(point.model_dump())
    assert validated == point
    assert validated.model_dump_json() == point.model_dump_json()


# --- rejections: every code -------------------------------------------------------------------

REJECTED: list[tuple[Route, bytes, str, str]] = [
    (INFRA, b"x" * (MAX + 1), "payload_size", "at most 16384 bytes"),
    (INFRA, b"not json", "json", "not UTF-8 JSON"),
    (INFRA, b"\xff\xfe{}", "json", "not UTF-8 JSON"),
    (INFRA, b"", "json", "not UTF-8 JSON"),
    (INFRA, b"45.2", "payload", "JSON object"),
    (INFRA, b"[1, 2]", "payload", "JSON object"),
    (INFRA, b"{}", "value", "value is required"),
    (INFRA, b'{"value": "high"}', "value", "must be a number, got the text 'high'"),
    (INFRA, b'{"value": null}', "value", "got null"),
    (INFRA, b'{"value": true}', "value", "got a boolean"),
    (INFRA, b'{"value": NaN}', "value", "got NaN"),
    (INFRA, b'{"value": Infinity}', "value", "got Infinity"),
    (INFRA, b'{"value": "nan"}', "value", "finite"),
    (INFRA, b'{"value": 1, "timestamp": "yesterday"}', "timestamp", "not ISO 8601"),
    (INFRA, b'{"value": 1, "timestamp": 1772053200000}', "timestamp", "milliseconds"),
    (INFRA, b'{"value": 1, "timestamp": true}', "timestamp", "got a boolean"),
    (INFRA, b'{"value": 1, "metadata": [1]}', "metadata", "must be an object"),
    (
        INFRA,
        orjson.dumps({"value": 1, "metadata": {"k": "x" * 9000}}),
        "metadata",
        "at most 8192 bytes",
    ),
    (INFRA, b'{"value": 1, "sequence": 1.5}', "sequence", "must be an integer"),
    (
        INFRA,
        b'{"value": 1, "sequence": 99999999999999999999}',
        "sequence",
        "integer",
    ),  # a float to orjson
    (INFRA, b'{"value": 1, "stream_type": 5}', "stream_type", "must be a string"),
    (INFRA, b'{"value": 1, "stream_type": ""}', "stream_type", "must not be empty"),
    (INFRA, b'{"value": 1, "unit": "C"}', "unknown_field", "unknown field(s) unit"),
    (LEGACY, b'{"value": 1, "sensor_id": 18}', "sensor_id", "differs"),
]


@pytest.mark.parametrize(("route", "payload", "code", "words"), REJECTED)
def test_rejected_payloads(route: Route, payload: bytes, code: str, words: str) -> None:
    result = normalize_message(route, payload, RECEIVED, MAX)

    assert isinstance(result, Rejection)
    assert (result.code, result.domain, result.source_id, result.stream_id) == (
        code,
        route.domain,
        route.source_id,
        route.stream_id,
    )
    assert words in result.reason


def test_every_problem_is_named_and_the_first_is_the_code() -> None:
    payload = b'{"value": "x", "timestamp": "never", "extra": 1}'

    result = normalize_message(INFRA, payload, RECEIVED, MAX)

    assert isinstance(result, Rejection)
    assert result.code == "value"
    assert "value must be" in result.reason
    assert "timestamp 'never'" in result.reason
    assert "unknown field(s) extra" in result.reason


def test_every_rejection_code_is_covered_by_the_tables() -> None:
    topic_codes = {c for _, _, c in TOPIC_CASES if isinstance(c, str)}
    payload_codes = {c for _, _, c, _ in REJECTED}

    assert topic_codes | payload_codes == set(REJECTION_CODES)


def test_with_ts_keeps_every_other_field() -> None:
    result = normalize_message(INFRA, b'{"value": 1, "sequence": 3}', RECEIVED, MAX)
    assert not isinstance(result, Rejection)
    earlier = datetime(2026, 1, 1, tzinfo=UTC)

    point = with_ts(result[0], earlier)

    assert point.model_dump() == {**result[0].model_dump(), "ts": earlier}


# --- settings ---------------------------------------------------------------------------------


def test_subscriptions_apply_prefix_and_shared_group() -> None:
    settings = GatewayMqttSettings(mqtt_topic_prefix="/site-a/", mqtt_shared_group="gw")

    assert settings.subscriptions() == [
        "$share/gw/site-a/+/+/+/data",
        "$share/gw/site-a/iot/sensors/+/readings",
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, False)),
        ("mqtt://broker", ("broker", 1883, False)),
        ("mqtts://broker", ("broker", 8883, True)),
        ("mqtts://broker:9999", ("broker", 9999, True)),
    ],
)
def test_broker_url(url: str, expected: tuple[str, int, bool]) -> None:
    assert GatewayMqttSettings(mqtt_url=url).broker == expected


@pytest.mark.parametrize(
    "overrides",
    [
        {"mqtt_url": "http://broker"},
        {"mqtt_url": "mqtt://"},
        {"mqtt_url": "mqtt://b:99999"},
        {"mqtt_topic_prefix": "a/#"},
        {"mqtt_shared_group": "a/b"},
        {"mqtt_topics": " , "},
        {"bus_partitions": 0},
        {"bundle_linger_ms": -1},
        {"mqtt_qos": 2},
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GatewayMqttSettings(**overrides)


def test_topic_prefix_and_client_id_default_to_the_bus_namespace() -> None:
    namespaced = GatewayMqttSettings(bus_prefix="e2e1")
    production = GatewayMqttSettings()
    explicit = GatewayMqttSettings(bus_prefix="e2e1", mqtt_topic_prefix="", mqtt_client_id="gw-1")

    assert (namespaced.topic_prefix, namespaced.client_id) == (
        "e2e1",
        "tributary-gateway-mqtt-e2e1",
    )
    assert (production.topic_prefix, production.client_id) == ("", "tributary-gateway-mqtt")
    assert (explicit.topic_prefix, explicit.client_id) == ("", "gw-1")
    assert explicit.subscriptions() == ["+/+/+/data", "iot/sensors/+/readings"]
