"""A downstream team's consumer on the live fleet: the consumer kit's FastStream example, run as
its own process with the fleet's NATS_URL and BUS_PREFIX, receives the classified points of one
domain and class that producers sent over HTTP, only those, each once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from tests.e2e.fleet_process import ROOT, FleetProcess
from tributary_contracts import (
    DEFAULT_PARTITIONS,
    DP_CLASSIFIED,
    ClassifiedBundle,
    Namespace,
    decode_classified,
    iter_readings,
    partition_of,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EXAMPLE = ROOT / "libs" / "consumer-kit" / "examples" / "classified_consumer.py"


class ExampleConsumer:
    """The example as a process; its stdout (one JSON object per point) read by a thread."""

    def __init__(self, fleet: FleetProcess, *args: str) -> None:
        env = {**os.environ, "NATS_URL": fleet.nats_url, "BUS_PREFIX": fleet.bus_prefix}
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    async def wait_for(self, predicate: Any, what: str) -> list[dict[str, Any]]:
        for _ in range(300):  # bounded: 30 s
            if predicate(self.lines):
                return list(self.lines)
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"{what}: got {self.lines} (exit {self.proc.poll()}) {err}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def start_reader(fleet: FleetProcess) -> Iterator[Any]:
    """Starts the example for critical points of domain infrastructure from one source, with a
    durable of its own (each test its own source, so earlier tests' points are not its)."""
    started: list[ExampleConsumer] = []

    def start(source: str) -> ExampleConsumer:
        consumer = ExampleConsumer(
            fleet, "--domain", "infrastructure", "--cls", "critical", "--source", source,
            "--durable", f"reader-e2e-{source}",
        )  # fmt: skip
        started.append(consumer)
        return consumer

    try:
        yield start
    finally:
        for consumer in started:
            consumer.stop()


async def post(fleet: FleetProcess, source: str, domain: str, values: list[float]) -> None:
    body = {
        "source_id": source,
        "domain": domain,
        "data_points": [
            # cpu_usage's shipped default: >= 95 critical, >= 85 warning, else normal.
            {"stream_id": "cpu", "stream_type": "cpu_usage", "value": v,
             "timestamp": f"2026-03-05T10:00:{i:02d}Z"}
            for i, v in enumerate(values)
        ],
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        reply = await client.post("/ingest/data", json=body, headers={"X-API-Key": fleet.admin_key})
    assert reply.status_code == 202, reply.text


async def test_example_consumer_receives_classified_points_of_one_domain_and_class(
    fleet: FleetProcess, start_reader: Any
) -> None:
    critical_reader = start_reader("dn-rack-1")
    # Critical and other classes from the chosen source, critical points of another source of
    # the same domain (another or the same partition), and of another domain.
    await post(fleet, "dn-rack-1", "infrastructure", [96.0, 50.0, 97.5, 88.0])
    await post(fleet, "dn-rack-2", "infrastructure", [99.0])
    await post(fleet, "dn-rack-1", "finance", [98.0])
    # Published after all of the above: once it is in, the others had their chance.
    await post(fleet, "dn-rack-1", "infrastructure", [50.0, 50.0, 50.0, 50.0, 50.0, 100.0])

    lines = await critical_reader.wait_for(
        lambda seen: any(p["value"] == 100.0 for p in seen), "the last critical point"
    )
    assert [(p["source_id"], p["stream_id"], p["ts"], p["value"], p["cls"]) for p in lines] == [
        ("dn-rack-1", "cpu", "2026-03-05T10:00:00+00:00", 96.0, "critical"),
        ("dn-rack-1", "cpu", "2026-03-05T10:00:02+00:00", 97.5, "critical"),
        ("dn-rack-1", "cpu", "2026-03-05T10:00:05+00:00", 100.0, "critical"),
    ]
    assert {(p["domain"], p["rule"]) for p in lines} == {("infrastructure", "critical_zone")}
    assert all(p["reason"] for p in lines)
    # They came as ClassifiedBundles on the partitioned subject of their source.
    nc = await nats.connect(fleet.nats_url)
    try:
        ns = Namespace(fleet.bus_prefix)
        part = partition_of("infrastructure", "dn-rack-1", DEFAULT_PARTITIONS)
        last = await nc.jetstream().get_last_msg(
            ns.stream(DP_CLASSIFIED),
            ns.classified_partition_subject("infrastructure", "critical", part),
        )
    finally:
        await nc.close()
    bundle = decode_classified(last.data or b"")
    assert isinstance(bundle, ClassifiedBundle)
    assert [(r.source_id, r.point.value) for r in iter_readings(bundle)] == [("dn-rack-1", 100.0)]


async def test_a_repeated_request_reaches_the_consumer_once(
    fleet: FleetProcess, start_reader: Any
) -> None:
    critical_reader = start_reader("dn-rack-3")
    await post(fleet, "dn-rack-3", "infrastructure", [96.5])
    await critical_reader.wait_for(lambda seen: len(seen) >= 1, "the first copy")
    # The same request again (a producer's retry), then a marker.
    await post(fleet, "dn-rack-3", "infrastructure", [96.5])
    await post(fleet, "dn-rack-3", "infrastructure", [50.0, 99.5])
    lines = await critical_reader.wait_for(
        lambda seen: any(p["value"] == 99.5 for p in seen), "the marker"
    )
    assert [(p["ts"], p["value"]) for p in lines] == [
        ("2026-03-05T10:00:00+00:00", 96.5),
        ("2026-03-05T10:00:01+00:00", 99.5),
    ]
