"""``encode_points`` writes the JSON itself: every message must still be a valid ``PointBatch``
with the points it was given and the ``batch_msg_id`` the rest of the fleet computes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from csv_importer.encode import encode_points
from csv_importer.reading import SourcePoints, timestamp_texts

from tributary_contracts import PointBatch, batch_msg_id

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def decoded(messages: list, domain: str, source: str) -> list[tuple[str, float, datetime]]:
    points = []
    for message in messages:
        batch = PointBatch.model_validate_json(message.payload)
        assert (batch.domain, batch.source_id, batch.transport) == (domain, source, "csv")
        assert batch.received_at == RECEIVED
        assert message.points == len(batch.points)
        assert message.msg_id == batch_msg_id(
            domain, source, ((p.stream_id, p.ts) for p in batch.points)
        )
        points += [(p.stream_id, p.value, p.ts) for p in batch.points]
    return points


def test_odd_ids_values_and_times_survive_the_hand_written_json() -> None:
    micros = np.array([0, 1_500, -2_208_988_800_000_000, 4_102_444_799_999_999], dtype=np.int64)
    times = timestamp_texts(micros)
    assert times == [
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:00:00.001500Z",
        "1900-01-01T00:00:00Z",
        "2099-12-31T23:59:59.999999Z",
    ]
    ids = ['quote " and \\ back', "température", "slash/and space", "BTCUSDT:price"]
    values = [1e-7, -0.0, 1.2345678901234567e22, 20.1]
    points = SourcePoints(ids, values, times)
    source = 'src "x"/ü'
    out = decoded(
        encode_points("finance", source, RECEIVED, points, 1 << 20), "finance", source
    )
    assert out == [
        (sid, value, datetime.fromisoformat(ts))
        for sid, value, ts in zip(ids, values, times, strict=True)
    ]


def test_batches_are_cut_at_500_points_and_halved_until_they_fit() -> None:
    n = 1_203
    times = timestamp_texts(np.arange(n, dtype=np.int64) * 1_000_000)
    points = SourcePoints([f"s{i % 3}" for i in range(n)], [float(i) for i in range(n)], times)

    cut = encode_points("iot", "dev", RECEIVED, points, 1 << 20)
    assert [m.points for m in cut] == [500, 500, 203]

    small = encode_points("iot", "dev", RECEIVED, points, 20_000)
    assert all(len(m.payload) <= 20_000 for m in small)
    assert sum(m.points for m in small) == n
    assert decoded(small, "iot", "dev") == decoded(cut, "iot", "dev")
