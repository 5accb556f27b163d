"""The AI explainer as a small local HTTP stub that is up, slow, or down."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from ml_batch.app import once
from ml_batch.settings import MlBatchSettings

pytestmark = pytest.mark.integration


class Stub:
    """``POST /explain/anomaly``: mode ``up`` answers at once, ``slow`` after 2 s."""

    def __init__(self) -> None:
        self.mode = "up"
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body})
                if stub.mode == "slow":
                    time.sleep(2.0)
                reply = json.dumps({"explanation": f"AI: {body['stream_id']} jumped"}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up (slow mode)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


def _spike(source: str) -> list[tuple[str, str, str, datetime, float, None]]:
    now = datetime.now(UTC).replace(microsecond=0)
    values = [10.0 + 0.1 * (i % 5) for i in range(29)] + [40.0]
    return [("infrastructure", source, "cpu", now - timedelta(seconds=10 * (29 - i)), v, None)
            for i, v in enumerate(values)]


def _settings(dsn: str, servers: Any, prefix: str, url: str, **kw: Any) -> MlBatchSettings:
    return MlBatchSettings(
        postgres_dsn=dsn, nats_url=servers.nats_url, bus_prefix=prefix, ai_explainer_url=url,
        ml_explain_timeout_seconds=0.5, ml_explain_budget_seconds=5.0, **kw,
    )


async def _row(dsn: str, source: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(
            "SELECT explanation, explain_attempts, published_at, is_anomaly FROM predictions"
            " WHERE source_id = $1", source,
        )
    finally:
        await conn.close()


async def test_up_explainer_writes_its_explanation(
    migrated_dsn: str, servers: Any, bus_prefix: str, jetstream: Any, insert_points: Any,
    stub: Stub,
) -> None:
    await insert_points(migrated_dsn, _spike("web-1"))
    result = await once(_settings(migrated_dsn, servers, bus_prefix, stub.url))
    assert result.explanations == {"explained": 1, "failed": 0, "gave_up": 0, "unfinished": 0}
    row = await _row(migrated_dsn, "web-1")
    explanation = json.loads(row["explanation"])
    assert explanation["source"] == "ai-explainer"
    assert explanation["text"] == "AI: cpu jumped"
    [request] = stub.requests
    assert request["path"] == "/explain/anomaly"
    assert request["body"]["source_id"] == "web-1"
    assert request["body"]["anomaly_score"] > 5
    assert "40" in request["body"]["builtin_explanation"]


async def test_slow_explainer_is_skipped_without_blocking_and_retried_next_run(
    migrated_dsn: str, servers: Any, bus_prefix: str, jetstream: Any, insert_points: Any,
    stub: Stub,
) -> None:
    await insert_points(migrated_dsn, _spike("web-2"))
    settings = _settings(migrated_dsn, servers, bus_prefix, stub.url)
    stub.mode = "slow"
    first = await once(settings)
    assert (first.inserted, first.published) == (1, 1)  # predictions went out regardless
    assert first.explanations["failed"] == 1
    row = await _row(migrated_dsn, "web-2")
    assert row["explanation"] is None and row["explain_attempts"] == 1

    stub.mode = "up"
    second = await once(settings)
    assert second.streams == 0  # no new points: only the pending explanation is retried
    assert second.explanations["explained"] == 1
    row = await _row(migrated_dsn, "web-2")
    assert json.loads(row["explanation"])["source"] == "ai-explainer"
    assert len(stub.requests) == 2


async def test_down_explainer_gives_way_to_the_builtin_after_max_attempts(
    migrated_dsn: str, servers: Any, bus_prefix: str, jetstream: Any, insert_points: Any,
) -> None:
    await insert_points(migrated_dsn, _spike("web-3"))
    settings = _settings(
        migrated_dsn, servers, bus_prefix, _closed_port_url(), ml_explain_max_attempts=2
    )
    first = await once(settings)
    assert (first.inserted, first.published, first.explanations["failed"]) == (1, 1, 1)
    assert (await _row(migrated_dsn, "web-3"))["explanation"] is None
    second = await once(settings)
    assert second.explanations["gave_up"] == 1
    row = await _row(migrated_dsn, "web-3")
    explanation = json.loads(row["explanation"])
    assert explanation["source"] == "builtin" and row["explain_attempts"] == 2
    assert "ConnectError" in explanation["explainer_error"]
    assert "40" in explanation["text"] and "robust standard deviations" in explanation["text"]
    third = await once(settings)
    assert third.explanations == {"explained": 0, "failed": 0, "gave_up": 0, "unfinished": 0}
