"""A small /ingest/stream client that pipelines, reconnects and resumes (needs ``websockets``).

    client = ResumingClient("ws://127.0.0.1:8002/ingest/stream", "server-01", "infrastructure", key)
    runner = asyncio.create_task(client.run())
    await client.send([{"stream_id": "cpu_usage", "value": 45.2, "timestamp": ts, "sequence": 1}])
    await client.flush()          # every message sent so far is acknowledged (durable)
    await client.close(); await runner

Give every point a ``timestamp`` and an increasing ``sequence``: after a reconnect the client asks
for the last sequence the gateway holds durably and resends only the unacknowledged messages
beyond it; identical resends are dropped by the bus (same ``Nats-Msg-Id``), so nothing is lost or
stored twice.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import websockets

FATAL_ERRORS = {"unauthorized", "forbidden"}  # reconnecting cannot help


class ResumingClient:
    def __init__(
        self, url: str, source_id: str, domain: str, api_key: str, max_unacked: int = 100
    ) -> None:
        self.url, self.source_id, self.domain, self.api_key = url, source_id, domain, api_key
        self.max_unacked = max_unacked  # the gateway reads no more than 100 ahead anyway
        self.unacked: deque[dict[str, Any]] = deque()  # sent or to send, oldest first
        self.acks: list[dict[str, Any]] = []  # every ack received (for the caller)
        self.errors: list[dict[str, Any]] = []  # refused data messages (bad_batch, …)
        self.reconnects = 0
        self._ws: Any = None  # set while connected and caught up
        self._changed = asyncio.Condition()
        self._closing = False

    async def send(self, points: list[dict[str, Any]]) -> None:
        """Queue one data message; waits while ``max_unacked`` messages are unacknowledged."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.unacked) < self.max_unacked)
            message = {"type": "data", "batch": points}
            self.unacked.append(message)
        if self._ws is not None:
            try:
                await self._ws.send(json.dumps(message))
            except websockets.ConnectionClosed:
                pass  # resent after the reconnect

    async def flush(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: not self.unacked)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()

    async def run(self, max_backoff: float = 5.0) -> None:
        """Stay connected until ``close()``: reconnect with backoff, resume, resend."""
        backoff = 0.1
        while not self._closing:
            try:
                await self._session()
                backoff = 0.1
            except (
                OSError,
                TimeoutError,
                websockets.ConnectionClosed,
                websockets.InvalidHandshake,
            ):
                pass
            self._ws = None
            if self._closing:
                return
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    async def _session(self) -> None:
        async with websockets.connect(self.url, open_timeout=5) as ws:
            hello = {"type": "connect", "source_id": self.source_id, "domain": self.domain}
            await ws.send(json.dumps({**hello, "api_key": self.api_key, "resume": True}))
            reply = json.loads(await ws.recv())
            if reply["type"] == "error":
                if reply["code"] in FATAL_ERRORS:
                    self._closing = True
                raise websockets.ConnectionClosed(None, None)
            last = reply.get("last_sequence")
            async with self._changed:  # drop what the gateway already holds durably
                while self.unacked and last is not None and _last_sequence(self.unacked[0]) <= last:
                    self.unacked.popleft()
                self._changed.notify_all()
            i = 0
            while i < len(
                self.unacked
            ):  # resend the rest in order, including ones queued meanwhile
                await ws.send(json.dumps(self.unacked[i]))
                i += 1
            self._ws = ws
            async for frame in ws:
                reply = json.loads(frame)
                if reply["type"] not in ("ack", "error"):
                    continue
                if reply["type"] == "error" and reply["code"] in FATAL_ERRORS | {
                    "bus_unavailable",
                    "too_many_sessions",
                }:
                    continue  # the gateway closes the socket next; the message is resent
                async with self._changed:
                    self.unacked.popleft()  # replies come in the order of the messages
                    (self.acks if reply["type"] == "ack" else self.errors).append(reply)
                    self._changed.notify_all()


def _last_sequence(message: dict[str, Any]) -> int:
    sequences = [p.get("sequence") for p in message["batch"] if isinstance(p, dict)]
    return max((s for s in sequences if isinstance(s, int)), default=-1)


async def main() -> None:  # pragma: no cover - a demonstration
    import os
    from datetime import UTC, datetime

    client = ResumingClient(
        os.environ.get("WS_URL", "ws://127.0.0.1:8002/ingest/stream"),
        "server-01",
        "infrastructure",
        os.environ["API_KEY"],
    )
    runner = asyncio.create_task(client.run())
    for seq in range(1, 101):
        now = datetime.now(UTC).isoformat()
        await client.send(
            [{"stream_id": "cpu_usage", "value": 40 + seq % 10, "timestamp": now, "sequence": seq}]
        )
    await client.flush()
    print(f"100 messages acknowledged, {client.reconnects} reconnect(s)")
    await client.close()
    await runner


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(main())
