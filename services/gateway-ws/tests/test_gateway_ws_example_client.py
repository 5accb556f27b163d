"""The README's client (examples/client.py) reconnects and resumes without loss or duplicates."""

from __future__ import annotations

import asyncio
import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "client.py"
T0 = datetime(2026, 3, 2, tzinfo=UTC)


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("gateway_ws_example_client", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_client_survives_killed_connections_without_loss_or_duplicates(
    gateway: Any,
) -> None:
    example = load_example()
    client = example.ResumingClient(gateway.url, "example-src", "infrastructure", gateway.key)
    runner = asyncio.create_task(client.run())
    try:
        for i in range(200):
            points = [
                {
                    "stream_id": "temp",
                    "value": float(seq),
                    "timestamp": (T0 + timedelta(seconds=seq)).isoformat(),
                    "sequence": seq,
                }
                for seq in range(i * 5, i * 5 + 5)
            ]
            await client.send(points)
            if i in (50, 120):
                kills = (50, 120).index(i)
                for _ in range(100):  # bounded: until (re)connected after the previous kill
                    if client._ws is not None and client.reconnects == kills:
                        break
                    await asyncio.sleep(0.05)
                client._ws.transport.abort()  # the connection dies under the client
        await asyncio.wait_for(client.flush(), 30)
    finally:
        await client.close()
        await asyncio.wait_for(runner, 10)

    assert client.reconnects >= 2
    stored = sorted(p.sequence for b in await gateway.raw_points() for p in b.points)
    assert stored == list(range(1000))
