"""A run over real PostgreSQL rows and the real bus: rows, watermarks, events, idempotency."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from ml_batch.app import once
from ml_batch.settings import MlBatchSettings
from tributary_contracts import DP_EVENTS, STREAM_CONFIGS_BUCKET, Namespace, PredictionBatch
from tributary_runtime.stream_configs import StreamConfigBucket, StreamScope, parse_config

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
STEP = timedelta(minutes=1)


def _series(domain: str, source: str, stream: str, values: list[float], stype: str | None):
    start = NOW - STEP * (len(values) - 1)
    return [(domain, source, stream, start + STEP * i, v, stype) for i, v in enumerate(values)]


def _settings(dsn: str, servers: Any, prefix: str, **kw: Any) -> MlBatchSettings:
    return MlBatchSettings(
        postgres_dsn=dsn, nats_url=servers.nats_url, bus_prefix=prefix, ml_window_points=50, **kw
    )


async def _fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _events(js: Any, prefix: str) -> list[tuple[str, PredictionBatch]]:
    ns = Namespace(prefix)
    info = await js.stream_info(ns.stream(DP_EVENTS))
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(ns.stream(DP_EVENTS), seq)
        if msg.subject.startswith(f"{prefix}.dp.prediction."):
            out.append((msg.subject, PredictionBatch.model_validate_json(msg.data)))
    return out


async def test_run_stores_predictions_publishes_them_and_a_rerun_does_nothing(
    migrated_dsn: str, servers: Any, bus_prefix: str, jetstream: Any, insert_points: Any
) -> None:
    rising = [20.0 + 0.2 * i for i in range(40)]  # 27.8 now, +0.2/min toward 30
    spiky = [50.0 + (0.3 if i % 2 else -0.3) for i in range(39)] + [90.0]
    await insert_points(
        migrated_dsn,
        _series("iot", "dev.1", "temp-1", rising, "boiler")
        + _series("iot", "dev.1", "load", spiky, None)
        + _series("finance", "xch", "short", [1.0, 2.0, 3.0], None)  # too few points
        + [("finance", "xch", "stale", NOW - timedelta(days=3), 1.0, None)],  # not recent
    )
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(STREAM_CONFIGS_BUCKET))
    await StreamConfigBucket(kv).put(
        StreamScope("iot", "*", "boiler"),
        parse_config({"value_constraints": {"warning_max": 30, "alert_max": 60}}),
    )
    settings = _settings(
        migrated_dsn, servers, bus_prefix, ml_model_by_type="boiler=trend", ml_horizon_points=30
    )

    first = await once(settings)

    assert (first.streams, first.predictions, first.inserted, first.published) == (3, 2, 2, 2)
    rows = {r["stream_id"]: r for r in await _fetch(migrated_dsn, "SELECT * FROM predictions")}
    assert set(rows) == {"temp-1", "load"}
    temp = rows["temp-1"]
    assert temp["model"] == "trend" and temp["stream_type"] == "boiler"
    assert temp["as_of"] == NOW and temp["points_used"] == 40
    assert temp["horizon_seconds"] == pytest.approx(30 * 60.0)
    assert temp["forecast_values"][0] == pytest.approx(28.0, abs=1e-6)  # the line continued
    assert temp["time"] == NOW + timedelta(minutes=30)
    assert not temp["is_anomaly"] and temp["explanation"] is None
    # 27.8 + 0.2 × 11 = 30; alert_max 60 is not reached within 30 minutes.
    [event] = json.loads(temp["threshold_events"])
    expected_at = datetime.fromisoformat(event.pop("expected_at"))
    assert event == {
        "level": "warning", "limit": "warning_max", "bound": 30.0, "direction": "above",
        "in_seconds": pytest.approx(660.0),
    }
    assert abs(expected_at - (NOW + timedelta(minutes=11))) < timedelta(milliseconds=1)
    load = rows["load"]
    assert load["is_anomaly"] and load["anomaly_score"] > 50
    explanation = json.loads(load["explanation"])
    assert explanation["source"] == "builtin" and "90" in explanation["text"]
    assert all(r["published_at"] is not None for r in rows.values())
    marks = await _fetch(migrated_dsn, "SELECT stream_id, last_time FROM prediction_watermarks")
    assert {r["stream_id"]: r["last_time"] for r in marks} == {
        "temp-1": NOW, "load": NOW, "short": NOW,
    }

    published = await _events(jetstream, bus_prefix)
    assert [s for s, _ in published] == [f"{bus_prefix}.dp.prediction.iot.dev%2E1"]
    batch = published[0][1]
    assert {p.stream_id for p in batch.predictions} == {"temp-1", "load"}

    again = await once(settings)
    assert (again.streams, again.inserted, again.published) == (0, 0, 0)
    assert len(await _events(jetstream, bus_prefix)) == 1

    # One new point on one stream: only that stream is looked at again.
    await insert_points(migrated_dsn, [("iot", "dev.1", "load", NOW + STEP, 50.1, None)])
    third = await once(settings)
    assert (third.streams, third.inserted, third.published) == (1, 1, 1)
    assert len(await _fetch(migrated_dsn, "SELECT 1 FROM predictions")) == 3
    await asyncio.sleep(0)
