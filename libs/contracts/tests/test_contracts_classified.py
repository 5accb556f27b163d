from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tributary_contracts import (
    ClassifiedBatch,
    ClassifiedBundle,
    ClassifiedSubject,
    Namespace,
    PointClass,
    PointDeduplicator,
    classified_batches,
    decode_classified,
    iter_readings,
    parse_classified_subject,
    partition_of,
    point_key,
)

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def _batch(source: str, values: list[float], cls: str = "critical") -> ClassifiedBatch:
    return ClassifiedBatch.model_validate(
        {
            "domain": "infrastructure",
            "source_id": source,
            "transport": "http",
            "received_at": T0,
            "cls": cls,
            "classified_at": T0,
            "points": [
                {
                    "stream_id": "cpu_usage",
                    "value": v,
                    "ts": T0 + timedelta(seconds=i),
                    "reason": f"value {v} above alert_max 90",
                    "rule": "alert_max",
                    "config_version": 3,
                }
                for i, v in enumerate(values)
            ],
        }
    )


def _bundle(*batches: ClassifiedBatch) -> ClassifiedBundle:
    return ClassifiedBundle(
        domain="infrastructure", cls=PointClass.CRITICAL, partition=2, batches=list(batches)
    )


def test_decode_classified_reads_a_bundle() -> None:
    bundle = _bundle(_batch("server-01", [95.0]), _batch("server-02", [97.0, 99.0]))
    assert decode_classified(bundle.model_dump_json()) == bundle


def test_decode_classified_reads_a_former_per_source_batch() -> None:
    batch = _batch("server-01", [95.0])
    assert decode_classified(batch.model_dump_json().encode()) == batch


def test_decode_classified_reads_a_batch_whose_metadata_says_batches() -> None:
    batch = _batch("server-01", [95.0])
    batch.points[0].metadata = {"batches": 3}
    assert decode_classified(batch.model_dump_json()) == batch


def test_decode_classified_agrees_with_the_message_annotation() -> None:
    from pydantic import TypeAdapter

    from tributary_contracts import ClassifiedMessage

    adapter: TypeAdapter[ClassifiedBundle | ClassifiedBatch] = TypeAdapter(ClassifiedMessage)
    for message in (_batch("s", [95.0]), _bundle(_batch("s", [95.0]), _batch("t", [96.0]))):
        body = message.model_dump_json()
        assert decode_classified(body) == adapter.validate_json(body) == message


def test_decode_classified_names_the_bad_field() -> None:
    body = _bundle(_batch("server-01", [95.0])).model_dump(mode="json")
    body["batches"][0]["points"][0]["value"] = "hot"
    with pytest.raises(ValidationError, match=r"batches\.0\.points\.0\.value"):
        decode_classified(json.dumps(body))


def test_decode_classified_refuses_a_raw_batch() -> None:
    raw = _batch("server-01", [95.0]).model_dump(mode="json")
    del raw["cls"], raw["classified_at"]
    with pytest.raises(ValidationError, match="cls"):
        decode_classified(json.dumps(raw))


def test_classified_batches_of_a_batch_is_itself() -> None:
    batch = _batch("server-01", [95.0])
    assert classified_batches(batch) == [batch]
    assert classified_batches(_bundle(batch, batch)) == [batch, batch]


def test_iter_readings_flattens_points_in_order_with_their_envelope() -> None:
    bundle = _bundle(_batch("server-01", [95.0]), _batch("server-02", [97.0, 99.0]))
    readings = list(iter_readings(bundle))
    assert [(r.source_id, r.point.value) for r in readings] == [
        ("server-01", 95.0),
        ("server-02", 97.0),
        ("server-02", 99.0),
    ]
    assert {(r.domain, r.cls, r.transport) for r in readings} == {
        ("infrastructure", PointClass.CRITICAL, "http")
    }


def test_iter_readings_keeps_only_the_given_sources() -> None:
    bundle = _bundle(_batch("server-01", [95.0]), _batch("server-02", [97.0, 99.0]))
    assert [r.point.value for r in iter_readings(bundle, sources={"server-02"})] == [97.0, 99.0]
    assert list(iter_readings(bundle, sources=())) == []


def test_reading_key_is_the_points_idempotency_key() -> None:
    (reading,) = iter_readings(_batch("a.b c", [95.0]))
    assert reading.key == point_key("infrastructure", "a.b c", "cpu_usage", T0)


def test_deduplicator_drops_points_seen_before() -> None:
    dedup = PointDeduplicator()
    first = _bundle(_batch("server-01", [95.0, 96.0]))
    redelivered = _bundle(_batch("server-01", [95.0, 96.0, 97.0]))
    assert [r.point.value for r in dedup.fresh(iter_readings(first))] == [95.0, 96.0]
    assert [r.point.value for r in dedup.fresh(iter_readings(redelivered))] == [97.0]
    assert len(dedup) == 3


def test_deduplicator_unseen_remembers_only_what_was_handled() -> None:
    dedup = PointDeduplicator()
    bundle = _bundle(_batch("server-01", [95.0, 96.0]), _batch("server-01", [95.0]))
    unseen = dedup.unseen(iter_readings(bundle))
    # The repeat inside the message itself is dropped too; nothing is remembered yet.
    assert [r.point.value for r in unseen] == [95.0, 96.0]
    assert [r.point.value for r in dedup.unseen(iter_readings(bundle))] == [95.0, 96.0]
    dedup.remember(unseen[:1])
    assert unseen[0].key in dedup
    assert [r.point.value for r in dedup.unseen(iter_readings(bundle))] == [96.0]


def test_deduplicator_forgets_the_least_recently_seen_beyond_its_capacity() -> None:
    dedup = PointDeduplicator(capacity=2)
    assert [dedup.first_time(k) for k in ("a", "b", "a", "c")] == [True, True, False, True]
    # "b" was the least recently seen when "c" came: forgotten, so new again.
    assert [dedup.first_time(k) for k in ("a", "b")] == [False, True]
    with pytest.raises(ValueError, match="capacity"):
        PointDeduplicator(capacity=0)


@pytest.mark.parametrize("prefix", ["", "t1"])
def test_parse_classified_subject_reads_bundle_and_former_subjects(prefix: str) -> None:
    ns = Namespace(prefix)
    part = ns.classified_partition_subject("finance", PointClass.ANOMALY, 3)
    assert parse_classified_subject(part, ns) == ClassifiedSubject(
        "finance", PointClass.ANOMALY, 3, None
    )
    former = ns.classified_subject("finance", PointClass.NORMAL, "BTC.USDT >x")
    assert parse_classified_subject(former, ns) == ClassifiedSubject(
        "finance", PointClass.NORMAL, None, "BTC.USDT >x"
    )


@pytest.mark.parametrize(
    "subject",
    ["dp.raw.finance.part.1", "dp.classified.finance.hot.part.1", "dp.classified.finance.normal"],
)
def test_parse_classified_subject_refuses_other_subjects(subject: str) -> None:
    with pytest.raises(ValueError, match="not a classified subject"):
        parse_classified_subject(subject)


def test_classified_filter_matches_bundle_and_former_subjects_of_one_domain_and_class() -> None:
    ns = Namespace("t1")
    assert ns.classified_filter("iot", "critical") == "t1.dp.classified.iot.critical.>"
    assert ns.classified_filter(cls=PointClass.WARNING) == "t1.dp.classified.*.warning.>"
    assert Namespace().classified_filter() == "dp.classified.*.*.>"
    part = partition_of("iot", "dev-1", 4)
    for subject in (
        ns.classified_partition_subject("iot", "critical", part),
        ns.classified_subject("iot", "critical", "dev-1"),
    ):
        assert _matches(ns.classified_filter("iot", "critical"), subject)
    assert not _matches(
        ns.classified_filter("iot", "critical"), ns.classified_partition_subject("iot", "normal", 0)
    )


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching (``*`` one token, ``>`` one or more trailing tokens)."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
