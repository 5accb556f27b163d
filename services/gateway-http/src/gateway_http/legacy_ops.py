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
  ``*_circuit_open``/``*_breaker_open`` gauges, ``CLOSED``/``OPEN``/``UNKNOWN``) and the DLQ
  depth (the ``DP_DLQ`` stream, by subject); 200 ``ok`` or ``degraded`` (a breaker open or
  unknown, or dead letters waiting), 503 when JetStream does not answer.
- ``GET /diagnostics`` — ``X-API-Key`` (any role): everything above plus this gateway's
  settings that matter to an operator (device-auth mode, rate limits, sink routes) and uptime.

Replies are JSON objects; the unauthenticated ones carry no secret and no device/key data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tributary_access.apikeys import Action
from tributary_contracts import DP_DLQ
from tributary_runtime.ops import Reply, json_response

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
BREAKER_SUFFIXES = ("_circuit_open", "_breaker_open")


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


class LegacyOps:
    """The routes above; ``app.create_app`` wires it with the app's bus, auth and PostgreSQL."""

    def __init__(
        self,
        settings: Any,
        bus: Callable[[], Any],
        authorize: Callable[..., Awaitable[None]],
        postgres: Callable[[], Awaitable[Any]],
        registry_loaded: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._bus = bus
        self._authorize = authorize
        self._postgres = postgres
        self._registry_loaded = registry_loaded
        self._started = time.monotonic()
        self._timeout = settings.ops_probe_timeout_seconds

    def routes(self) -> list[Route]:
        return [
            Route("/health/postgres", self._endpoint(self.postgres_health), methods=["GET"]),
            Route("/ingest/health", self._endpoint(self.ingest_health), methods=["GET"]),
            Route("/mqtt/health", self._endpoint(self.mqtt_health), methods=["GET"]),
            Route("/mqtt/stats", self._endpoint(self.mqtt_stats), methods=["GET"]),
            Route("/resilience/health", self._endpoint(self.resilience), methods=["GET"]),
            # /diagnostics spends the IP budget through its API-key check
            Route("/diagnostics", self._endpoint(self.diagnostics, False), methods=["GET"]),
        ]

    def _endpoint(
        self,
        handler: Callable[[Request], Awaitable[tuple[int, dict[str, Any]]]],
        admit: bool = True,
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                bus = self._bus()
                if bus is not None and admit:
                    bus.guard.admit(request)  # per-IP budget: probes are requests like any
                status, body = await handler(request)
            except Reply as reply:
                detail = reply.body.get("error", reply.body.get("detail"))
                body = {
                    "detail": detail,
                    **{k: v for k, v in reply.body.items() if k not in ("error", "detail")},
                }
                return json_response(reply.status, body, reply.headers)
            return json_response(status, body, {"Cache-Control": "no-store"})

        return endpoint

    # -- probes ------------------------------------------------------------------------------
    async def _postgres_probe(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            pool = await asyncio.wait_for(self._postgres(), self._timeout)
            async with asyncio.timeout(self._timeout), pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:
            return {"status": "error", "connected": False, "error": _error(exc)}
        latency = round((time.perf_counter() - started) * 1000, 2)
        return {"status": "ok", "connected": True, "latency_ms": latency}

    async def _get(self, client: httpx.AsyncClient, url: str) -> httpx.Response | None:
        try:
            return await client.get(url)
        except httpx.HTTPError:
            return None

    async def _mqtt_instances(self) -> list[dict[str, Any]]:
        urls = [u.rstrip("/") for u in self._settings.mqtt_gateway_urls]
        async with httpx.AsyncClient(timeout=self._timeout) as client:

            async def one(url: str) -> dict[str, Any]:
                ready, metrics = await asyncio.gather(
                    self._get(client, url + "/ready"), self._get(client, url + "/metrics")
                )
                checks: dict[str, Any] = {}
                if ready is not None and ready.headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    checks = ready.json().get("checks", {})
                sums = (
                    metric_sums(metrics.text)
                    if metrics is not None and metrics.is_success
                    else None
                )
                return {
                    "url": url,
                    "up": ready is not None,
                    "connected": bool(ready is not None and ready.status_code == 200),
                    "checks": checks,
                    "metrics": sums,
                }

            return list(await asyncio.gather(*(one(u) for u in urls)))

    async def _breakers(self) -> dict[str, str]:
        writers = dict(self._settings.writer_urls)
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            replies = await asyncio.gather(
                *(self._get(client, url.rstrip("/") + "/metrics") for url in writers.values())
            )
        return {
            name: breaker_state(metric_sums(r.text) if r is not None and r.is_success else None)
            for name, r in zip(writers, replies, strict=True)
        }

    async def _dlq(self) -> dict[str, Any]:
        bus = self._bus()
        if bus is None:
            raise Reply(
                503,
                {"error": "the gateway has not connected to NATS yet"},
                {"Retry-After": str(self._settings.retry_after_seconds)},
            )
        stream = self._settings.namespace.stream(DP_DLQ)
        try:
            info = await asyncio.wait_for(
                bus.js.stream_info(stream, subjects_filter=">"), self._timeout
            )
        except Exception as exc:
            raise Reply(
                503,
                {"error": f"JetStream did not answer for {stream}: {_error(exc)}"},
                {"Retry-After": str(self._settings.retry_after_seconds)},
            ) from None
        prefix = f"{self._settings.namespace.prefix}." if self._settings.namespace.prefix else ""
        subjects = {
            name.removeprefix(prefix): count
            for name, count in sorted((info.state.subjects or {}).items())
        }
        return {"stream": stream, "depth": info.state.messages, "by_subject": subjects}

    async def _ingest(self) -> dict[str, Any]:
        bus = self._bus()
        checks = await bus.gateway.ready() if bus is not None else {"nats": False, "stream": False}
        checks["device_registry"] = self._registry_loaded()
        return {
            "status": "ok" if all(checks.values()) else "error",
            "checks": checks,
            "device_auth_mode": self._settings.device_auth_mode,
        }

    # -- handlers ------------------------------------------------------------------------------
    async def postgres_health(self, _: Request) -> tuple[int, dict[str, Any]]:
        """GET /health/postgres: SELECT 1 on POSTGRES_DSN."""
        body = {"database": "postgresql", **await self._postgres_probe()}
        return (200 if body["connected"] else 503), body

    async def ingest_health(self, _: Request) -> tuple[int, dict[str, Any]]:
        """GET /ingest/health: NATS, the raw stream and the device registry of this gateway."""
        body = await self._ingest()
        return (200 if body["status"] == "ok" else 503), body

    async def mqtt_health(self, _: Request) -> tuple[int, dict[str, Any]]:
        """GET /mqtt/health: the gateway-mqtt replicas' readiness."""
        instances = await self._mqtt_instances()
        connected = sum(1 for i in instances if i["connected"])
        body = {
            "status": "ok" if connected == len(instances) else "degraded" if connected else "down",
            "enabled": bool(instances),
            "connected": connected > 0,
            "instances": [
                {k: i[k] for k in ("url", "up", "connected", "checks")} for i in instances
            ],
        }
        return (200 if connected else 503), body

    async def mqtt_stats(self, _: Request) -> tuple[int, dict[str, Any]]:
        """GET /mqtt/stats: gateway-mqtt counters summed over its replicas."""
        instances = await self._mqtt_instances()
        return 200, mqtt_stats_body(instances)

    async def resilience(self, _: Request) -> tuple[int, dict[str, Any]]:
        """GET /resilience/health: writers' circuit breakers and the DLQ depth."""
        breakers, dlq = await asyncio.gather(self._breakers(), self._dlq())
        healthy = all(state == "CLOSED" for state in breakers.values()) and dlq["depth"] == 0
        return 200, {
            "status": "ok" if healthy else "degraded",
            "circuit_breakers": breakers,
            "dlq": dlq,
        }

    async def diagnostics(self, request: Request) -> tuple[int, dict[str, Any]]:
        """GET /diagnostics (X-API-Key, any role): every probe above and the settings."""
        bus = self._bus()
        if bus is None:
            raise Reply(
                503,
                {"error": "the gateway has not connected to NATS yet"},
                {"Retry-After": str(self._settings.retry_after_seconds)},
            )
        await self._authorize(request, bus, Action.READ)
        postgres, ingest, instances, breakers, dlq = await asyncio.gather(
            self._postgres_probe(),
            self._ingest(),
            self._mqtt_instances(),
            self._breakers(),
            self._dlq(),
        )
        s = self._settings
        return 200, {
            "service": "gateway-http",
            "uptime_seconds": round(time.monotonic() - self._started, 1),
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
        }


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
