"""Shadow verdicts of canary rollouts → ``rollout_verdicts`` (one row per point), idempotent.

``ShadowWriter.handle(messages)`` consumes a fetch of ``dp.shadow.>`` messages (``ShadowBatch``
JSON, durable ``writer-postgres-shadow`` on ``DP_SHADOW``), settled as every event loop settles
(``writer_postgres.events``). The view
``rollout_comparison`` and ``tributary rollout report`` read the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from tributary_contracts import WRITER_POSTGRES_SHADOW_DURABLE, ShadowBatch
from writer_postgres.events import EventWriter

CONSUMER = WRITER_POSTGRES_SHADOW_DURABLE

INSERT = """
INSERT INTO rollout_verdicts (
    rollout, revision, state, time, domain, source_id, stream_id, stream_type, value, live_cls,
    live_rule, live_version, shadow_cls, shadow_rule, shadow_reason, shadow_version, classified_at
)
SELECT $1, $2, $3, t.*, $4 FROM unnest(
    $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[], $10::float8[],
    $11::text[], $12::text[], $13::bigint[], $14::text[], $15::text[], $16::text[], $17::bigint[]
) AS t
ON CONFLICT ON CONSTRAINT rollout_verdicts_key DO NOTHING
"""


def insert_args(batch: ShadowBatch) -> tuple[object, ...]:
    v = batch.verdicts
    return (
        batch.rollout,
        batch.revision,
        batch.state.value,
        batch.classified_at,
        [x.ts for x in v],
        [batch.domain] * len(v),
        [batch.source_id] * len(v),
        [x.stream_id for x in v],
        [x.stream_type for x in v],
        [x.value for x in v],
        [x.live_cls.value for x in v],
        [x.live_rule for x in v],
        [x.live_version for x in v],
        [x.shadow_cls.value for x in v],
        [x.shadow_rule for x in v],
        [x.shadow_reason for x in v],
        [x.shadow_version for x in v],
    )


class ShadowStore:
    """Inserts ShadowBatches into ``rollout_verdicts``."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = 20.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def insert(self, batches: Sequence[ShadowBatch]) -> int:
        inserted = 0
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            for batch in batches:
                status = await conn.execute(INSERT, *insert_args(batch), timeout=self._timeout)
                inserted += int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"
        return inserted


@dataclass
class ShadowWriter(EventWriter[ShadowBatch]):
    """The shadow loop's ``EventWriter`` (see the module docstring)."""

    model = ShadowBatch
    CONSUMER = CONSUMER
    noun = "shadow batch"

    store: ShadowStore

    async def _write(self, events: Sequence[ShadowBatch]) -> int:
        return await self.store.insert(events)
