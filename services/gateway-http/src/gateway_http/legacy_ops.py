"""The legacy service's operational endpoints (seed 002), answered from the fleet's real state.

The monolith answered its probes from inside one process; in the fleet each answer comes from
the service that owns the state, probed when asked (each probe bounded by
``OPS_PROBE_TIMEOUT_SECONDS``):

- ``GET /health/postgres`` — ``SELECT 1`` on ``POSTGRES_DSN`` (the database writer-postgres
  fills): 200 ``{"status": "ok", …}`` or 503 ``{"status": "error", …}``.
- ``GET /ingest/health`` — this gateway's ingest path: NATS connected, the raw stream answering,
  the device registry loaded; 200 or 503, with the device-auth mode.
- ``GET /mqtt/health`` — every gateway-mqtt replica of ``MQTT_GATEWAY_URLS``: its ``/ready``
  (broker and bus connected); 200 when at least one is connected, else 503.
- ``GET /mqtt/stats`` — the replicas' counters from their ``/metrics`` summed (messages
  received/rejected/acked, points published, redeliveries, in flight, errors, connects).
- ``GET /resilience/health`` — the writers' circuit breakers (``WRITER_URLS``' ``/metrics``:
  ``*_circuit_open`` gauges, ``CLOSED``/``OPEN``/``UNKNOWN``) and the DLQ
  depth (the ``DP_DLQ`` stream, by subject); 200 ``ok`` or ``degraded`` (a breaker open or
  unknown, or dead letters waiting), 503 when JetStream does not answer.
- ``GET /diagnostics`` — ``X-API-Key`` (any role): everything above plus this gateway's
  settings that matter to an operator (device-auth mode, rate limits, sink routes) and uptime.

Replies are JSON objects; the unauthenticated ones carry no secret and no device/key data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.routing import Route

from gateway_http.context import HttpContext
from gateway_http.metrics import ERRORS
from tributary_access.apikeys import Action
from tributary_access.guard import client_ip
from tributary_contracts import DP_DLQ
from tributary_ingest import http
from tributary_ingest.gateway import unavailable_reply
from tributary_ingest.http import Answer, Handler, Slot, detail_shape, endpoint
from tributary_runtime.ops import Reply

MQTT_COUNTERS = {
    "messages_received": "gateway_mqtt_messages_received_total",
    "messages_rejected": "gateway_mqtt_messages_rejected_total",
    "messages_acked": "gateway_mqtt_messages_acked_total",
    "points_published": "gateway_mqtt_points_published_total",
    "batches_published": "gateway_mqtt_batches_published_total",
    "redeliveries": "gateway_mqtt_redeliveries_total",
    "errors": "gateway_mqtt_errors_total",
    "connects": "gateway_mqtt_connects_total",
    "in_flight": "gateway_mqtt_in_flight",
}
"""Field of ``/mqtt/stats`` → gateway-mqtt sample summed over labels and replicas."""
BREAKER_SUFFIXES = ("_circuit_open",)


def metric_sums(text: str) -> dict[str, float]:
    """Sample name → value summed over labels (counters keep their ``_total`` name)."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def breaker_state(sums: dict[str, float] | None) -> str:
    """``OPEN``/``CLOSED`` from a writer's breaker gauge, ``UNKNOWN`` without one."""
    if sums is None:
        return "UNKNOWN"
    values = [v for name, v in sums.items() if name.endswith(BREAKER_SUFFIXES)]
    if not values:
        return "UNKNOWN"
    return "OPEN" if any(values) else "CLOSED"


def routes(slot: Slot[HttpContext], not_started: Callable[[], Reply]) -> list[Route]:
    """The routes above on the context of ``slot`` (legacy ``{"detail"}`` error shape)."""

    def route(path: str, handler: Handler[HttpContext]) -> Route:
        return Route(
            path,
            endpoint(slot, handler, not_started, ERRORS, shape=detail_shape, count=no_store),
            methods=["GET"],
        )

    return [
        route("/health/postgres", postgres_health),
        route("/ingest/health", ingest_health),
        route("/mqtt/health", mqtt_health),
        route("/mqtt/stats", mqtt_stats),
        route("/resilience/health", resilience),
        route("/diagnostics", diagnostics),
    ]


def no_store(_: Request, answer: Answer) -> None:
    answer.headers = {**(answer.headers or {}), "Cache-Control": "no-store"}


# -- probes ------------------------------------------------------------------------------------
async def _postgres_probe(ctx: HttpContext) -> dict[str, Any]:
    timeout = ctx.settings.ops_probe_timeout_seconds
    started = time.perf_counter()
    try:
        pool = await asyncio.wait_for(ctx.postgres.pool(), timeout)
        async with asyncio.timeout(timeout), pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:
        return {"status": "error", "connected": False, "error": _error(exc)}
    latency = round((time.perf_counter() - started) * 1000, 2)
    return {"status": "ok", "connected": True, "latency_ms": latency}


async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response | None:
    try:
        return await client.get(url)
    except httpx.HTTPError:
        return None


async def _mqtt_instances(ctx: HttpContext) -> list[dict[str, Any]]:
    urls = [u.rstrip("/") for u in ctx.settings.mqtt_gateway_urls]
    async with httpx.AsyncClient(timeout=ctx.settings.ops_probe_timeout_seconds) as client:

        async def one(url: str) -> dict[str, Any]:
            ready, metrics = await asyncio.gather(
                _get(client, url + "/ready"), _get(client, url + "/metrics")
            )
            checks: dict[str, Any] = {}
            if ready is not None and ready.headers.get("content-type", "").startswith(
                "application/json"
            ):
                checks = ready.json().get("checks", {})
            sums = metric_sums(metrics.text) if metrics is not None and metrics.is_success else None
            return {
                "url": url,
                "up": ready is not None,
                "connected": bool(ready is not None and ready.status_code == 200),
                "checks": checks,
                "metrics": sums,
            }

        return list(await asyncio.gather(*(one(u) for u in urls)))


async def _breakers(ctx: HttpContext) -> dict[str, str]:
    writers = dict(ctx.settings.writer_urls)
    async with httpx.AsyncClient(timeout=ctx.settings.ops_probe_timeout_seconds) as client:
        replies = await asyncio.gather(
            *(_get(client, url.rstrip("/") + "/metrics") for url in writers.values())
        )
    return {
        name: breaker_state(metric_sums(r.text) if r is not None and r.is_success else None)
        for name, r in zip(writers, replies, strict=True)
    }


async def _dlq(ctx: HttpContext) -> dict[str, Any]:
    settings = ctx.settings
    stream = settings.namespace.stream(DP_DLQ)
    try:
        info = await asyncio.wait_for(
            ctx.gateway.js.stream_info(stream, subjects_filter=">"),
            settings.ops_probe_timeout_seconds,
        )
    except Exception as exc:
        raise unavailable_reply(
            settings.retry_after_seconds, f"JetStream did not answer for {stream}: {_error(exc)}"
        ) from None
    prefix = f"{settings.namespace.prefix}." if settings.namespace.prefix else ""
    subjects = {
        name.removeprefix(prefix): count
        for name, count in sorted((info.state.subjects or {}).items())
    }
    return {"stream": stream, "depth": info.state.messages, "by_subject": subjects}


async def _ingest(ctx: HttpContext) -> dict[str, Any]:
    checks = await ctx.gateway.ready()
    checks["device_registry"] = True  # loaded with the context
    return {
        "status": "ok" if all(checks.values()) else "error",
        "checks": checks,
        "device_auth_mode": ctx.settings.device_auth_mode,
    }


# -- handlers ----------------------------------------------------------------------------------
async def postgres_health(ctx: HttpContext, request: Request) -> Answer:
    """GET /health/postgres: SELECT 1 on POSTGRES_DSN."""
    ctx.gateway.guard.admit(client_ip(request.scope))  # per-IP budget: probes are requests like any
    body = {"database": "postgresql", **await _postgres_probe(ctx)}
    return Answer(200 if body["connected"] else 503, body)


async def ingest_health(ctx: HttpContext, request: Request) -> Answer:
    """GET /ingest/health: NATS, the raw stream and the device registry of this gateway."""
    ctx.gateway.guard.admit(client_ip(request.scope))
    body = await _ingest(ctx)
    return Answer(200 if body["status"] == "ok" else 503, body)


async def mqtt_health(ctx: HttpContext, request: Request) -> Answer:
    """GET /mqtt/health: the gateway-mqtt replicas' readiness."""
    ctx.gateway.guard.admit(client_ip(request.scope))
    instances = await _mqtt_instances(ctx)
    connected = sum(1 for i in instances if i["connected"])
    body = {
        "status": "ok" if connected == len(instances) else "degraded" if connected else "down",
        "enabled": bool(instances),
        "connected": connected > 0,
        "instances": [{k: i[k] for k in ("url", "up", "connected", "checks")} for i in instances],
    }
    return Answer(200 if connected else 503, body)


async def mqtt_stats(ctx: HttpContext, request: Request) -> Answer:
    """GET /mqtt/stats: gateway-mqtt counters summed over its replicas."""
    ctx.gateway.guard.admit(client_ip(request.scope))
    return Answer(200, mqtt_stats_body(await _mqtt_instances(ctx)))


async def resilience(ctx: HttpContext, request: Request) -> Answer:
    """GET /resilience/health: writers' circuit breakers and the DLQ depth."""
    ctx.gateway.guard.admit(client_ip(request.scope))
    breakers, dlq = await asyncio.gather(_breakers(ctx), _dlq(ctx))
    healthy = all(state == "CLOSED" for state in breakers.values()) and dlq["depth"] == 0
    return Answer(
        200,
        {"status": "ok" if healthy else "degraded", "circuit_breakers": breakers, "dlq": dlq},
    )


async def diagnostics(ctx: HttpContext, request: Request) -> Answer:
    """GET /diagnostics (X-API-Key, any role): every probe above and the settings."""
    granted = await http.authenticate(ctx.gateway, request)  # spends the IP budget too
    http.check(ctx.gateway, request, granted, Action.READ)
    postgres, ingest, instances, breakers, dlq = await asyncio.gather(
        _postgres_probe(ctx), _ingest(ctx), _mqtt_instances(ctx), _breakers(ctx), _dlq(ctx)
    )
    s = ctx.settings
    return Answer(
        200,
        {
            "service": "gateway-http",
            "uptime_seconds": round(time.monotonic() - ctx.started, 1),
            "ingest": ingest,
            "postgres": postgres,
            "mqtt": {
                "connected": any(i["connected"] for i in instances),
                "instances": [
                    {k: i[k] for k in ("url", "up", "connected", "checks")} for i in instances
                ],
                "stats": mqtt_stats_body(instances),
            },
            "resilience": {"circuit_breakers": breakers, "dlq": dlq},
            "settings": {
                "device_auth_mode": s.device_auth_mode,
                "sink_routes": s.sink_routes,
                "bus_prefix": s.bus_prefix,
                "rate_limit_enabled": s.rate_limit_enabled,
                "rate_limit_ip_per_second": s.rate_limit_ip_per_second,
                "rate_limit_source_points_per_second": s.rate_limit_source_points_per_second,
                "max_points_per_request": s.max_points_per_request,
            },
        },
    )


def mqtt_stats_body(instances: list[dict[str, Any]]) -> dict[str, Any]:
    """The counters of the replicas that answered, summed, and how many answered."""
    answered = [i["metrics"] for i in instances if i["metrics"] is not None]
    body: dict[str, Any] = {
        name: int(sum(m.get(sample, 0.0) for m in answered))
        for name, sample in MQTT_COUNTERS.items()
    }
    body["connected"] = any(i["connected"] for i in instances)
    body["instances"] = len(instances)
    body["instances_answering"] = len(answered)
    return body


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
