"""Scale-out on a real NATS cluster: 3 nats-server nodes on loopback, every stream R3, two
writer-postgres replicas sharing their durable, two classifier replicas each owning two of the
four bus partitions, a known HTTP load, the DP_RAW stream leader SIGKILLed mid-load.

Then reconcile: every point gateway-http acknowledged (202) is in PostgreSQL exactly once, and
nothing is stored that was never sent; each classifier replica read only the messages of its
own partitions (the delivered counts of their durables). The default run is short (~1 200
points); set ``TRIBUTARY_CLUSTER_REQUESTS`` (requests of 20 points each) for a longer one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet_process import FleetProcess
from tests.e2e.nats_cluster import NATS_SERVER, NatsCluster, wait_for_jetstream

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(NATS_SERVER).exists(), reason="nats-server binary not installed"),
]

REQUESTS = int(os.environ.get("TRIBUTARY_CLUSTER_REQUESTS", "60"))
POINTS_PER_REQUEST = 20
WORKERS = 4
DOMAIN = "infrastructure"
BASE_TS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())


CLASSIFIER_REPLICAS = 2


@dataclass
class Ledger:
    """What the load generator sent and what the gateway acknowledged, point by point."""

    sent: set[tuple[str, str, int]] = field(default_factory=set)
    acked: set[tuple[str, str, int]] = field(default_factory=set)
    retried_requests: int = 0
    given_up_requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "nats").start()
    try:
        asyncio.run(wait_for_jetstream(c.url))
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_fleet(cluster: NatsCluster, servers: object) -> Iterator[FleetProcess]:
    from tests.e2e.conftest import _drop_database

    prefix = f"c{uuid.uuid4().hex[:10]}"
    base = servers.postgres_dsn.rpartition("/")[0]
    replicas = {"writer-postgres": 2, "classifier": CLASSIFIER_REPLICAS}
    fleet = FleetProcess(
        bus_prefix=prefix,
        postgres_dsn=f"{base}/e2e_{prefix}",
        nats_url=cluster.url,
        skip=("gateway-ws", "csv-importer", "gateway-mqtt", "writer-sqlserver"),
        replicas=replicas,
        extra_env={"JETSTREAM_REPLICAS": "3"},
    )
    try:
        yield fleet.start(timeout=120)
    finally:
        fleet.stop()
        # The cluster (and its streams) lives in a temp dir and goes with it.
        asyncio.run(_drop_database(servers.postgres_dsn, fleet.postgres_dsn))


async def _send_load(
    fleet: FleetProcess, ledger: Ledger, kill_at: int, kill: asyncio.Event
) -> None:
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for r in range(REQUESTS):
        queue.put_nowait(r)
    url = fleet.url("gateway-http") + "/ingest/data"
    headers = {"X-API-Key": fleet.admin_key}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            r = queue.get_nowait()
            if r == kill_at:
                kill.set()
            source = f"host-{r % 7}"
            points = [
                {"stream_id": f"s{j % 4}", "value": float(j), "timestamp": ts, "sequence": ts}
                for j in range(POINTS_PER_REQUEST)
                for ts in [BASE_TS + r * POINTS_PER_REQUEST + j]
            ]
            keys = [(source, p["stream_id"], p["timestamp"]) for p in points]
            ledger.sent.update(keys)  # type: ignore[arg-type]
            body = {"source_id": source, "domain": DOMAIN, "data_points": points}
            # A real producer retries what was not acknowledged; the same points again are safe.
            for attempt in range(40):
                try:
                    reply = await client.post(url, json=body, headers=headers, timeout=10)
                except httpx.HTTPError:
                    status = 0
                else:
                    status = reply.status_code
                ledger.statuses[status] = ledger.statuses.get(status, 0) + 1
                if status == 202:
                    rejected = {e["index"] for e in reply.json()["rejected"]}
                    ledger.acked.update(k for i, k in enumerate(keys) if i not in rejected)  # type: ignore[misc]
                    break
                if attempt == 0:
                    ledger.retried_requests += 1
                await asyncio.sleep(0.5)
            else:
                ledger.given_up_requests += 1

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(WORKERS)))


async def _stored(dsn: str) -> tuple[int, set[tuple[str, str, int]]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT source_id, stream_id, time FROM data_points WHERE domain = $1", DOMAIN
        )
    finally:
        await conn.close()
    keys = {(r["source_id"], r["stream_id"], int(r["time"].timestamp())) for r in rows}
    return len(rows), keys


WRITTEN = "writer_postgres_points_written_total"


def _busy(status: dict[str, Any]) -> bool:
    """Whether the classifier's durables (``classifier-part-<p>``, and ``classifier-drain-<p>``
    for former per-source subjects) or the writers' still have pending or unacked messages."""
    durables = {c["durable"] for c in status["consumers"]}
    watched = {"writer-postgres"} | {d for d in durables if d.startswith("classifier-")}
    return any(
        c["num_pending"] or c["num_ack_pending"]
        for c in status["consumers"]
        if c["durable"] in watched
    )


def _operator_status(fleet: FleetProcess, cluster: NatsCluster, killed: str) -> dict[str, Any]:
    """``tributary status --json`` as an operator would run it against the surviving nodes."""
    services = [f"gateway-http={fleet.url('gateway-http')}"]
    services += [f"classifier={fleet.url('classifier', i)}" for i in range(CLASSIFIER_REPLICAS)]
    services += [f"writer-postgres={fleet.url('writer-postgres', i)}" for i in (0, 1)]
    env = {
        **os.environ,
        "NATS_URL": ",".join(n.url for n in cluster.nodes if n.name != killed),
        "BUS_PREFIX": fleet.bus_prefix,
    }
    cmd = [str(Path(sys.executable).parent / "tributary"), "status", "--json", "--interval", "0.5"]
    for service in services:
        cmd += ["--service", service]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


async def _metric(base_url: str, name: str) -> int:
    import httpx

    async with httpx.AsyncClient() as client:
        text = (await client.get(base_url + "/metrics")).text
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(name))


async def _partition_reads(url: str, prefix: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per bus partition p: the messages on its raw subjects (``dp.raw.*.part.<p>``) and how
    many deliveries its durable ``classifier-part-<p>`` made (first deliveries and redeliveries
    after the node was killed)."""
    import nats

    from tributary_contracts import (
        DEFAULT_PARTITIONS,
        DP_RAW,
        Namespace,
        classifier_partition_durable,
    )

    ns = Namespace(prefix)
    nc = await nats.connect(url.split(","))
    try:
        js = nc.jetstream()
        on_subject = {}
        delivered = {}
        for p in range(DEFAULT_PARTITIONS):
            info = await js.stream_info(
                ns.stream(DP_RAW), subjects_filter=ns.raw_partition_filter(p)
            )
            on_subject[p] = sum((info.state.subjects or {}).values())
            consumer = await js.consumer_info(ns.stream(DP_RAW), classifier_partition_durable(p))
            delivered[p] = consumer.delivered.consumer_seq
        return on_subject, delivered
    finally:
        await nc.close()


async def _stream_leader(url: str, stream: str) -> tuple[str, int]:
    import nats

    nc = await nats.connect(url.split(","))
    try:
        info = await nc.jetstream().stream_info(stream)
        return info.cluster.leader, info.config.num_replicas
    finally:
        await nc.close()


async def test_cluster_node_killed_mid_load_loses_and_doubles_no_acked_point(
    cluster: NatsCluster, cluster_fleet: FleetProcess
) -> None:
    fleet = cluster_fleet
    from tributary_contracts import DP_RAW, Namespace

    raw_stream = Namespace(fleet.bus_prefix).stream(DP_RAW)
    leader, replicas = await _stream_leader(cluster.url, raw_stream)
    assert replicas == 3

    ledger = Ledger()
    kill = asyncio.Event()
    load = asyncio.create_task(_send_load(fleet, ledger, kill_at=REQUESTS // 3, kill=kill))
    await asyncio.wait_for(kill.wait(), timeout=120)
    killed_at = time.monotonic()
    cluster.kill(leader)
    await asyncio.wait_for(load, timeout=300)
    load_seconds = time.monotonic() - killed_at

    # Drain: wait (bounded) until every acknowledged point is stored and the count is steady.
    deadline = time.monotonic() + 120
    count, stored = await _stored(fleet.postgres_dsn)
    while time.monotonic() < deadline and not ledger.acked <= stored:
        await asyncio.sleep(1)
        count, stored = await _stored(fleet.postgres_dsn)
    # Settle: both durables have nothing pending or unacked. An ack lost while the cluster
    # changed leaders comes back as a redelivery after ack_wait (30 s); it must not double a row.
    settle_deadline = time.monotonic() + 90
    status = await asyncio.to_thread(_operator_status, fleet, cluster, leader)
    while time.monotonic() < settle_deadline and _busy(status):
        await asyncio.sleep(2)
        status = await asyncio.to_thread(_operator_status, fleet, cluster, leader)
    count, stored = await _stored(fleet.postgres_dsn)
    consumers = {c["durable"]: c for c in status["consumers"]}

    missing = ledger.acked - stored
    unexpected = stored - ledger.sent
    duplicates = count - len(stored)
    new_leader, _ = await _stream_leader(
        ",".join(n.url for n in cluster.nodes if n.name != leader), raw_stream
    )
    report = (
        f"cluster: killed {leader} (DP_RAW leader, now {new_leader}); "
        f"writer-postgres x2, classifier x{CLASSIFIER_REPLICAS}; "
        f"sent={len(ledger.sent)} acked={len(ledger.acked)} stored={len(stored)} rows={count} "
        f"duplicates={duplicates} missing={len(missing)} unexpected={len(unexpected)} "
        f"retried_requests={ledger.retried_requests} gave_up={ledger.given_up_requests} "
        f"statuses={ledger.statuses} load_after_kill={load_seconds:.1f}s "
        f"redelivered(classifier,writer)=("
        f"{sum(c['num_redelivered'] for d, c in consumers.items() if d.startswith('classifier'))},"
        f"{consumers['writer-postgres']['num_redelivered']})"
    )
    written = [await _metric(fleet.url("writer-postgres", i), WRITTEN) for i in (0, 1)]
    report += f" written_by_writer_replica={written}"
    surviving = ",".join(n.url for n in cluster.nodes if n.name != leader)
    on_subject, delivered = await _partition_reads(surviving, fleet.bus_prefix)
    fetched = [
        await _metric(fleet.url("classifier", k), "classifier_received_messages_total")
        for k in range(CLASSIFIER_REPLICAS)
    ]
    report += f" partition_messages={on_subject} delivered={delivered} fetched={fetched}"
    print(report)
    # Each partition's durable delivered its own partition's messages (redeliveries after the
    # kill on top), and replica k fetched at least its partitions' (p % 2 == k) messages and
    # fewer than their durables delivered plus any other partition's messages: each replica read
    # its own half of the stream, nothing else. The kill blurs "delivered" both ways: a delivery
    # whose pull reply was lost with the killed node counts as delivered but never reaches a
    # replica, and one the killed leader made without replicating it is made again by the new
    # leader as a first delivery (fetched twice, counted once) — a few messages, not a partition.
    assert all(delivered[p] >= on_subject[p] for p in on_subject), report
    assert sum(on_subject.values()) > 0, report
    for k in range(CLASSIFIER_REPLICAS):
        own = [p for p in on_subject if p % CLASSIFIER_REPLICAS == k]
        others = [on_subject[p] for p in on_subject if p not in own]
        assert sum(on_subject[p] for p in own) <= fetched[k], report
        assert fetched[k] - sum(delivered[p] for p in own) < min(others), report
    assert sum(written) == len(stored), report  # the two replicas shared the work, no overlap
    streams = {s["name"]: s for s in status["streams"]}
    assert not _busy(status), status["consumers"]
    assert streams[raw_stream]["replicas"] == 3, status
    assert streams[raw_stream]["leader"] == new_leader, status
    assert all(s["up"] for s in status["services"]), status
    assert new_leader != leader, report
    assert ledger.acked, report
    assert missing == set(), report
    assert unexpected == set(), report
    assert duplicates == 0, report
