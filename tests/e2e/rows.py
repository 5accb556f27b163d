"""Reading what the fleet stored: rows of ``data_points`` once they are there (bounded wait)."""

from __future__ import annotations

import asyncio
import time

import asyncpg


async def rows_for(
    dsn: str,
    source_id: str,
    want: int,
    timeout: float = 20.0,
    order_by: str = "stream_id, time",
) -> list[asyncpg.Record]:
    """Rows of ``source_id`` once there are at least ``want`` (or whatever is there at timeout).

    The database and table may not exist yet (the writer creates them at start): that is waited
    out like missing rows.
    """
    deadline = time.monotonic() + timeout
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.InvalidCatalogNameError):
            await asyncio.sleep(0.2)
            continue
        try:
            rows = await conn.fetch(
                f"SELECT * FROM data_points WHERE source_id = $1 ORDER BY {order_by}", source_id
            )
        except asyncpg.UndefinedTableError:
            rows = []
        finally:
            await conn.close()
        if len(rows) >= want:
            return rows
        await asyncio.sleep(0.1)
    return rows
