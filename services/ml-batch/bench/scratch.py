"""What both ml-batch bench scripts share: a throw-away database and bus namespace, bulk points.

Everything is created under a unique name on the local servers (127.0.0.1) and removed at the
end, whatever happens, so the scripts never touch other people's data.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats

from ml_batch.settings import MlBatchSettings
from tributary_contracts import Namespace, ensure_jetstream
from writer_postgres.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root, for tests.*
from tests.streams import drop_namespace

ADMIN_DSN = os.environ.get("POSTGRES_DSN_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


@dataclass(frozen=True)
class Scratch:
    dsn: str
    prefix: str

    def settings(self, **overrides: Any) -> MlBatchSettings:
        return MlBatchSettings(
            postgres_dsn=self.dsn, nats_url=NATS_URL, bus_prefix=self.prefix, **overrides
        )


@contextlib.asynccontextmanager
async def scratch(tag: str) -> AsyncIterator[Scratch]:
    name = f"ml_{tag}_{uuid.uuid4().hex[:8]}"
    prefix = f"ml{uuid.uuid4().hex[:8]}"
    base, _, _ = ADMIN_DSN.rpartition("/")
    dsn = f"{base}/{name}"
    ns = Namespace(prefix)
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        await ensure_jetstream(js, ns)
        await migrate(dsn, months_back=1, months_ahead=1)
        yield Scratch(dsn, prefix)
    finally:
        await drop_namespace(js, ns)
        await nc.close()
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def copy_points(
    dsn: str, rows: Iterable[tuple[datetime, str, str, str, float, str | None]]
) -> None:
    """(time, domain, source, stream, value, stream_type) rows into data_points, class normal."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "data_points",
            records=((t, d, s, st, v, "normal", ty) for t, d, s, st, v, ty in rows),
            columns=["time", "domain", "source_id", "stream_id", "value", "cls", "stream_type"],
        )
        await conn.execute("ANALYZE data_points")
    finally:
        await conn.close()
