"""The query API against the real PostgreSQL (as the read-only role) and NATS: replies, paging,
downsampling, the scope of source_writer keys, CSV jobs, configs, fleet status, the legacy
sensor status, OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.app import create_app
from tributary_access.apikeys import Role
from tributary_contracts import CSV_JOBS_BUCKET, DEVICES_BUCKET, DP_DLQ, STREAM_CONFIGS_BUCKET
from tributary_runtime.devices import DeviceRecord, DeviceRegistry, SensorRecord
from tributary_runtime.stream_configs import StreamConfigBucket, StreamScope, parse_config

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RANGE = {"from": "2026-12-01T12:00:00Z", "to": "2026-12-01T13:00:00Z"}
STREAM = {"domain": "infrastructure", "source_id": "server-01", "stream_id": "cpu"}


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def five_points(console: Any) -> None:
    classes = ["normal", "normal", "warning", "critical", "normal"]
    await console.insert_points(
        [
            ("infrastructure", "server-01", "cpu", T0 + timedelta(seconds=10 * i), 40.0 + i, c)
            for i, c in enumerate(classes)
        ]
        + [("infrastructure", "server-02", "cpu", T0, 99.0, "critical")]
    )


async def test_points_of_a_stream_come_in_pages_that_join_up(console: Any) -> None:
    await five_points(console)

    first = await console.get("/api/v1/points", params={**STREAM, **RANGE, "limit": 2})
    assert first.status_code == 200, first.text
    second = await console.get(
        "/api/v1/points", params={**STREAM, **RANGE, "limit": 2, "cursor": first.json()["next"]}
    )
    third = await console.get(
        "/api/v1/points", params={**STREAM, **RANGE, "limit": 2, "cursor": second.json()["next"]}
    )

    values = [p["value"] for r in (first, second, third) for p in r.json()["points"]]
    assert values == [40.0, 41.0, 42.0, 43.0, 44.0]
    assert third.json()["next"] is None
    assert first.json()["points"][0] | {"metadata": None} == {
        "time": "2026-12-01T12:00:00Z",
        "value": 40.0,
        "cls": "normal",
        "reason": "reason normal",
        "rule": None,
        "config_version": 1,
        "stream_type": None,
        "transport": "http",
        "received_at": None,
        "metadata": None,
    }


async def test_points_filter_by_class_and_time_range(console: Any) -> None:
    await five_points(console)

    reply = await console.get(
        "/api/v1/points",
        params=[*STREAM.items(), *RANGE.items(), ("cls", "warning"), ("cls", "critical")],
    )
    narrow = await console.get(
        "/api/v1/points",
        params={
            **STREAM,
            "from": iso(T0 + timedelta(seconds=15)),
            "to": iso(T0 + timedelta(seconds=35)),
        },
    )

    assert [(p["value"], p["cls"]) for p in reply.json()["points"]] == [
        (42.0, "warning"),
        (43.0, "critical"),
    ]
    assert [p["value"] for p in narrow.json()["points"]] == [42.0, 43.0]


async def test_downsampled_buckets_carry_min_max_mean_and_the_worst_class(console: Any) -> None:
    await five_points(console)

    reply = await console.get("/api/v1/points", params={**STREAM, **RANGE, "every": 20})

    assert reply.status_code == 200, reply.text
    assert reply.json()["buckets"] == [
        {
            "time": "2026-12-01T12:00:00Z",
            "count": 2,
            "min": 40.0,
            "max": 41.0,
            "mean": 40.5,
            "cls": "normal",
        },
        {
            "time": "2026-12-01T12:00:20Z",
            "count": 2,
            "min": 42.0,
            "max": 43.0,
            "mean": 42.5,
            "cls": "critical",
        },
        {
            "time": "2026-12-01T12:00:40Z",
            "count": 1,
            "min": 44.0,
            "max": 44.0,
            "mean": 44.0,
            "cls": "normal",
        },
    ]
    by_count = await console.get("/api/v1/points", params={**STREAM, **RANGE, "buckets": 60})
    assert by_count.json()["every_seconds"] == 60.0
    assert [b["count"] for b in by_count.json()["buckets"]] == [5]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"source_id": "s", "stream_id": "x"}, "domain"),
        ({**STREAM, "from": "yesterday"}, "from"),
        ({**STREAM, **RANGE, "cls": "bad"}, "cls"),
        ({**STREAM, **RANGE, "limit": "0"}, "limit"),
        ({**STREAM, **RANGE, "cursor": "nonsense"}, "cursor"),
        ({**STREAM, **RANGE, "every": "0.01"}, "every"),
        ({**STREAM, "from": "2026-12-01T13:00:00Z", "to": "2026-12-01T12:00:00Z"}, "from"),
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    console: Any, params: dict[str, str], field: str
) -> None:
    reply = await console.get("/api/v1/points", params=params)

    assert (reply.status_code, reply.json()["field"]) == (422, field)


async def test_a_request_without_a_valid_key_is_401(console: Any) -> None:
    missing = await console.get("/api/v1/points", key=None, params=STREAM)
    wrong = await console.get("/api/v1/points", key="trb_0123456789ab_" + "x" * 40, params=STREAM)

    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert "X-API-Key" in missing.json()["error"]


async def test_a_source_writer_key_reads_only_its_own_source(console: Any) -> None:
    await five_points(console)
    await console.execute(
        "INSERT INTO stream_alerts (alert_id, domain, source_id, stream_id, severity, status,"
        " opened_at) VALUES ('a1', 'infrastructure', 'server-01', 'cpu', 'critical', 'open', $1),"
        " ('a2', 'infrastructure', 'server-02', 'cpu', 'critical', 'open', $1)",
        T0,
    )
    scoped = await console.keys.create(
        Role.SOURCE_WRITER, "one source", source_ids=["server-01"], domains=["infrastructure"]
    )

    own = await console.get("/api/v1/points", key=scoped, params={**STREAM, **RANGE})
    other = await console.get(
        "/api/v1/points", key=scoped, params={**STREAM, **RANGE, "source_id": "server-02"}
    )
    alerts = await console.get("/api/v1/alerts", key=scoped)
    streams = await console.get("/api/v1/streams", key=scoped, params={"hours": 24 * 366})
    everything = await console.get("/api/v1/alerts")

    assert own.status_code == 200 and len(own.json()["points"]) == 5
    assert other.status_code == 403
    assert "may not read source_id 'server-02'" in other.json()["error"]
    assert [a["alert_id"] for a in alerts.json()["alerts"]] == ["a1"]
    assert [s["source_id"] for s in streams.json()["streams"]] == ["server-01"]
    assert sorted(a["alert_id"] for a in everything.json()["alerts"]) == ["a1", "a2"]


async def test_alerts_open_closed_and_of_one_stream_paged(console: Any) -> None:
    rows = [
        (
            f"a{i}",
            "server-01" if i < 3 else "server-02",
            "open" if i % 2 else "closed",
            T0 + timedelta(minutes=i),
        )
        for i in range(4)
    ]
    for alert_id, source, status, opened in rows:
        await console.execute(
            "INSERT INTO stream_alerts (alert_id, domain, source_id, stream_id, severity, status,"
            " opened_at, closed_at) VALUES ($1, 'infrastructure', $2, 'cpu', 'warning', $3, $4,"
            " CASE WHEN $3 = 'closed' THEN $4::timestamptz + interval '30 seconds' END)",
            alert_id,
            source,
            status,
            opened,
        )

    open_now = await console.get("/api/v1/alerts")
    one_stream = await console.get("/api/v1/alerts", params={**STREAM, "status": "all", "limit": 2})
    rest = await console.get(
        "/api/v1/alerts",
        params={**STREAM, "status": "all", "limit": 2, "cursor": one_stream.json()["next"]},
    )

    assert [a["alert_id"] for a in open_now.json()["alerts"]] == ["a3", "a1"]
    assert [a["alert_id"] for a in one_stream.json()["alerts"]] == ["a2", "a1"]
    assert [a["alert_id"] for a in rest.json()["alerts"]] == ["a0"]
    assert rest.json()["next"] is None


async def test_predictions_and_rejects_are_listed_newest_first(console: Any) -> None:
    for minutes in (1, 2):
        await console.execute(
            "INSERT INTO predictions (time, as_of, domain, source_id, stream_id, model,"
            " predicted_value, anomaly_score, is_anomaly, explanation)"
            " VALUES ($1, $1, 'infrastructure', 'server-01', 'cpu', 'baseline', 42, 0.5, false,"
            ' \'{"text": "steady"}\')',
            T0 + timedelta(minutes=minutes),
        )
    await console.execute(
        "INSERT INTO ingest_rejects (time, transport, domain, source_id, stream_id, reason,"
        " payload_excerpt) VALUES ($1, 'http', 'infrastructure', 'server-01', 'cpu', 'value is"
        ' not a number\', \'{"value": "x"}\')',
        T0,
    )

    predictions = await console.get("/api/v1/predictions", params={**STREAM, "limit": 1})
    more = await console.get(
        "/api/v1/predictions", params={**STREAM, "limit": 1, "cursor": predictions.json()["next"]}
    )
    rejects = await console.get("/api/v1/rejects", params={"transport": "http"})

    assert [p["as_of"] for p in predictions.json()["predictions"] + more.json()["predictions"]] == [
        "2026-12-01T12:02:00Z",
        "2026-12-01T12:01:00Z",
    ]
    assert predictions.json()["predictions"][0]["explanation"] == {"text": "steady"}
    assert [(r["reason"], r["source_id"]) for r in rejects.json()["rejects"]] == [
        ("value is not a number", "server-01")
    ]


async def test_csv_jobs_show_their_progress_within_the_scope(console: Any) -> None:
    kv = await console.js.key_value(console.settings.namespace.bucket(CSV_JOBS_BUCKET))
    for job_id, source, percent in (("a" * 32, "server-01", 40.0), ("b" * 32, "server-02", 100.0)):
        await kv.put(
            job_id,
            orjson.dumps(
                {
                    "job_id": job_id,
                    "status": "processing",
                    "domain": "infrastructure",
                    "source_id": source,
                    "filename": "x.csv",
                    "created_at": f"2026-12-01T12:0{job_id[0] == 'b':d}:00Z",
                    "rows_total": 10,
                    "rows_processed": 4,
                    "percent": percent,
                    "spool_file": "/var/tmp/secret-path",
                    "errors": [{"row": 2, "reason": "bad"}],
                }
            ),
        )
    scoped = await console.keys.create(
        Role.SOURCE_WRITER, "s1", source_ids=["server-01"], domains=["*"]
    )

    listed = await console.get("/api/v1/csv-jobs")
    one = await console.get(f"/api/v1/csv-jobs/{'a' * 32}")
    scoped_list = await console.get("/api/v1/csv-jobs", key=scoped)
    hidden = await console.get(f"/api/v1/csv-jobs/{'b' * 32}", key=scoped)

    assert [(j["job_id"][0], j["percent"]) for j in listed.json()["jobs"]] == [
        ("b", 100.0),
        ("a", 40.0),
    ]
    assert "spool_file" not in listed.text and "spool_file" not in one.text
    assert one.json()["errors"] == [{"row": 2, "reason": "bad"}]
    assert [j["source_id"] for j in scoped_list.json()["jobs"]] == ["server-01"]
    assert hidden.status_code == 404


async def test_configs_are_listed_with_their_version_and_limits(console: Any) -> None:
    bucket = StreamConfigBucket(
        await console.js.key_value(console.settings.namespace.bucket(STREAM_CONFIGS_BUCKET))
    )
    stored = await bucket.put(
        StreamScope("infrastructure", "*", "cpu"),
        parse_config({"value_constraints": {"warning_max": 85}}),
    )

    reply = await console.get("/api/v1/configs")

    assert [
        (c["domain"], c["source_id"], c["stream_id"], c["version"], c["summary"])
        for c in reply.json()["configs"]
    ] == [("infrastructure", "*", "cpu", stored.version, "warning_max=85")]


async def test_fleet_status_reports_dlq_depth_and_unreachable_services(console: Any) -> None:
    ns = console.settings.namespace
    await console.js.publish(ns.dlq_subject("writer-postgres"), b"{}", stream=ns.stream(DP_DLQ))

    reply = await console.get("/api/v1/fleet")

    body = reply.json()
    assert body["dlq_depth"] == 1
    assert [(s["name"], s["up"]) for s in body["services"]] == [("nothing", False)]
    assert {s["name"] for s in body["streams"]} >= {ns.stream(DP_DLQ)}


async def test_sensor_status_answers_the_legacy_shape_from_stored_rows(console: Any) -> None:
    registry = DeviceRegistry(
        await console.js.key_value(console.settings.namespace.bucket(DEVICES_BUCKET))
    )
    device = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"
    sensor = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a01"
    await registry.put_device(
        DeviceRecord(
            device_uuid=device,
            serial="SN-1",
            sensors=[SensorRecord(sensor_uuid=sensor, sensor_id=17, sensor_type="temperature")],
        )
    )
    await console.insert_points([("iot", device, "17", T0, 101.0, "critical")])
    await console.execute(
        "INSERT INTO stream_alerts (alert_id, domain, source_id, stream_id, severity, status,"
        " rule, opened_at, violation_count) VALUES ('x', 'iot', $1, '17', 'critical', 'open',"
        " 'physical_range', $2, 1)",
        device,
        T0,
    )

    reply = await console.get("/sensors/17/status")
    unknown = await console.get("/sensors/18/status")
    bad = await console.get("/sensors/abc/status")

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["state"], body["device_uuid"], body["sensor_type"]) == (
        "ALERT",
        device,
        "temperature",
    )
    assert body["latest"]["value"] == 101.0 and body["active_alert"]["rule"] == "physical_range"
    assert unknown.status_code == 404 and "not registered" in unknown.json()["detail"]
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "sensor_id"]


async def test_the_console_role_may_read_but_never_write(console: Any) -> None:
    reader = console.settings.postgres_read_dsn
    conn = await asyncpg.connect(reader)
    try:
        assert await conn.fetchval("SELECT count(*) FROM data_points") == 0
        await conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO ingest_rejects (time, transport, reason) VALUES (now(), 'x', 'y')"
            )
    finally:
        await conn.close()


async def test_openapi_documents_every_api_route(console: Any) -> None:
    app = create_app(console.settings)
    routes = {
        r.path
        for r in app.routes
        if r.path.startswith(("/api/", "/sensors/"))  # type: ignore[attr-defined]
    }

    document = (await console.get("/openapi.json", key=None)).json()

    assert set(document["paths"]) == routes


# who → key; (who, domain, source) → status of one stream's points: reads are scoped like writes.
READ_TABLE = [
    ("admin", "infrastructure", "server-01", 200),
    ("admin", "finance", "desk-9", 200),
    ("reader", "finance", "desk-9", 200),
    ("writer", "infrastructure", "server-01", 200),
    ("writer", "infrastructure", "server-02", 403),
    ("writer", "finance", "server-01", 403),
    ("revoked", "infrastructure", "server-01", 401),
    ("missing", "infrastructure", "server-01", 401),
]


@pytest.mark.parametrize(("who", "domain", "source", "status"), READ_TABLE)
async def test_read_access_matrix(
    console: Any, who: str, domain: str, source: str, status: int
) -> None:
    writer = await console.keys.issue(
        Role.SOURCE_WRITER, "w", source_ids=["server-01"], domains=["infrastructure"]
    )
    revoked = await console.keys.issue(Role.READ_ONLY, "gone")
    await console.keys.revoke(revoked.record.key_id)
    key = {
        "admin": console.admin,
        "reader": console.reader,
        "writer": writer.key,
        "revoked": revoked.key,
        "missing": None,
    }[who]

    reply = await console.get(
        "/api/v1/points",
        key=key,
        params={"domain": domain, "source_id": source, "stream_id": "cpu", **RANGE},
    )

    assert reply.status_code == status, reply.text
    if status == 403:
        assert "its scope: source_ids server-01; domains infrastructure" in reply.json()["error"]
        assert writer.key not in reply.text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    params=st.dictionaries(
        st.sampled_from(
            [
                "domain",
                "source_id",
                "stream_id",
                "from",
                "to",
                "cls",
                "limit",
                "cursor",
                "every",
                "buckets",
                "status",
                "hours",
            ]
        ),
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                [
                    "0001-01-01T00:00:00Z",
                    "9999-12-31T23:59:59+14:00",
                    "-1",
                    "1e309",
                    "nan",
                    "normal",
                    "2026-12-01T12:00:00",
                ]
            ),
        ),
    ),
    path=st.sampled_from(
        [
            "/api/v1/points",
            "/api/v1/alerts",
            "/api/v1/streams",
            "/api/v1/predictions",
            "/api/v1/rejects",
        ]
    ),
)
async def test_no_query_string_makes_the_api_fail(
    console: Any, params: dict[str, str], path: str
) -> None:
    reply = await console.get(path, params=params)

    assert reply.status_code in (200, 403, 422), reply.text
