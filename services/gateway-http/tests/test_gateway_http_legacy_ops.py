"""The seed 002 operational endpoints against the real local NATS and PostgreSQL (the fleet-wide
answers — gateway-mqtt connected, writers' breakers — are shown in tests/e2e/legacy_compat)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway_http.legacy_ops import breaker_state, metric_sums, mqtt_stats_body
from tests.host import free_port

pytestmark = pytest.mark.integration

CLOSED_URL = "http://127.0.0.1:{}"


async def test_health_postgres_answers_from_a_real_select(start_gateway: Any, servers: Any) -> None:
    async with start_gateway(postgres_dsn=servers.postgres_dsn) as gw:
        up = await gw.client.get("/health/postgres")
    async with start_gateway(postgres_dsn="postgresql://nobody@127.0.0.1:1/none") as gw:
        down = await gw.client.get("/health/postgres")
    assert up.status_code == 200
    assert {k: up.json()[k] for k in ("status", "database", "connected")} == {
        "status": "ok",
        "database": "postgresql",
        "connected": True,
    }
    assert down.status_code == 503
    assert (down.json()["status"], down.json()["connected"]) == ("error", False)
    assert down.json()["error"]


async def test_ingest_health_shows_the_bus_the_registry_and_the_auth_mode(
    start_gateway: Any,
) -> None:
    async with start_gateway(device_auth_mode="migration") as gw:
        reply = await gw.client.get("/ingest/health")
    assert (reply.status_code, reply.json()) == (
        200,
        {
            "status": "ok",
            "checks": {"nats": True, "stream": True, "device_registry": True},
            "device_auth_mode": "migration",
        },
    )


async def test_mqtt_health_is_503_down_when_no_mqtt_gateway_answers(start_gateway: Any) -> None:
    url = CLOSED_URL.format(free_port())
    async with start_gateway(mqtt_gateway_urls=[url]) as gw:
        health = await gw.client.get("/mqtt/health")
        stats = await gw.client.get("/mqtt/stats")
    assert (health.status_code, health.json()) == (
        503,
        {
            "status": "down",
            "enabled": True,
            "connected": False,
            "instances": [{"url": url, "up": False, "connected": False, "checks": {}}],
        },
    )
    assert stats.status_code == 200
    assert (stats.json()["instances"], stats.json()["instances_answering"]) == (1, 0)
    assert stats.json()["messages_received"] == 0


async def test_resilience_health_counts_dead_letters_and_unknown_breakers(
    start_gateway: Any,
) -> None:
    writer = CLOSED_URL.format(free_port())
    async with start_gateway(writer_urls={"writer-postgres": writer}) as gw:
        clean = await gw.client.get("/resilience/health")
        await gw.js.publish(gw.ns.dlq_subject("writer-postgres"), b"{}")
        dirty = await gw.client.get("/resilience/health")
    assert clean.status_code == 200
    assert clean.json()["dlq"]["depth"] == 0
    assert clean.json()["circuit_breakers"] == {"writer-postgres": "UNKNOWN"}
    assert clean.json()["status"] == "degraded"  # a breaker nobody can read is not "ok"
    assert dirty.json()["dlq"]["depth"] == 1
    assert dirty.json()["dlq"]["by_subject"] == {"dp.dlq.writer-postgres": 1}


async def test_diagnostics_needs_an_api_key_and_shows_every_probe(
    start_gateway: Any, servers: Any
) -> None:
    async with start_gateway(
        postgres_dsn=servers.postgres_dsn,
        mqtt_gateway_urls=[CLOSED_URL.format(free_port())],
        writer_urls={},
    ) as gw:
        anonymous = await gw.client.get("/diagnostics")
        wrong = await gw.client.get("/diagnostics", headers={"X-API-Key": "nope"})
        reply = await gw.client.get("/diagnostics", headers={"X-API-Key": gw.key})
    assert anonymous.status_code == 401 and "detail" in anonymous.json()
    assert wrong.status_code == 401
    body = reply.json()
    assert reply.status_code == 200
    assert set(body) == {
        "service",
        "uptime_seconds",
        "ingest",
        "postgres",
        "mqtt",
        "resilience",
        "settings",
    }
    assert body["postgres"]["connected"] is True
    assert body["ingest"]["status"] == "ok"
    assert body["mqtt"]["connected"] is False
    assert body["resilience"] == {
        "circuit_breakers": {},
        "dlq": {"stream": gw.ns.stream("DP_DLQ"), "depth": 0, "by_subject": {}},
    }
    assert body["settings"]["device_auth_mode"] == "required"


def test_breaker_state_reads_the_writers_gauges() -> None:
    assert breaker_state(None) == "UNKNOWN"
    assert breaker_state({"writer_postgres_points_written_total": 5}) == "UNKNOWN"
    assert breaker_state({"writer_postgres_circuit_open": 0.0}) == "CLOSED"
    assert breaker_state({"writer_sqlserver_circuit_open": 1.0}) == "OPEN"


def test_mqtt_stats_sum_the_replicas_counters() -> None:
    text = (
        "# TYPE gateway_mqtt_messages_received counter\n"
        "gateway_mqtt_messages_received_total 3.0\n"
        "# TYPE gateway_mqtt_messages_rejected counter\n"
        'gateway_mqtt_messages_rejected_total{reason="value"} 1.0\n'
        'gateway_mqtt_messages_rejected_total{reason="json"} 2.0\n'
    )
    one = {"connected": True, "metrics": metric_sums(text)}
    two = {"connected": False, "metrics": metric_sums(text)}
    body = mqtt_stats_body([one, two, {"connected": False, "metrics": None}])
    assert (body["messages_received"], body["messages_rejected"]) == (6, 6)
    assert (body["connected"], body["instances"], body["instances_answering"]) == (True, 3, 2)
