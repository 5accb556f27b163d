"""Wiring: NATS + JetStream, the MQTT connection supervisor (``supervisor``), the pipeline
between them (``pipeline``), and a Starlette app serving ``/health``, ``/ready`` (broker and bus
connected) and ``/metrics``.

Consumes QoS 1 messages on ``<domain>/<source_id>/<stream_id>/data`` and
``iot/sensors/<sensor_id>/readings`` (under ``MQTT_TOPIC_PREFIX``); produces ``PointBundle``s on
``dp.raw.<domain>.part.<p>`` (``Coalescer``) and ``RejectedInput``s on ``dp.rejected.mqtt``.
The broker authenticates producers, so this gateway has no API keys nor replies: it uses the
gateway base's bus layer (``tributary_ingest.bus``) without its access checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from nats.aio.client import Client
from starlette.applications import Starlette

from gateway_mqtt.metrics import BUNDLE_POINTS, ERRORS
from gateway_mqtt.pipeline import Pipeline
from gateway_mqtt.settings import GatewayMqttSettings
from gateway_mqtt.supervisor import MqttSupervisor
from tributary_contracts import DEVICES_BUCKET, DP_RAW, Transport
from tributary_ingest.bus import Connect, bus_ready, coalescer, open_bus
from tributary_ingest.ledger import RawLedger
from tributary_runtime.devices import SensorDirectory
from tributary_runtime.ops import ops_routes

SERVICE_NAME = "gateway-mqtt"

log = structlog.get_logger("gateway_mqtt")


def create_app(
    settings: GatewayMqttSettings,
    *,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> Starlette:
    """Build the gateway. ``nats_client`` (used, never closed) or ``connect`` (its client is
    closed on shutdown) replace the default ``connect_nats(settings)`` connection.

    ``app.state.supervisor`` is the running ``MqttSupervisor`` (None outside the lifespan)."""
    ns = settings.namespace
    raw_stream = ns.stream(DP_RAW)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nc = await open_bus(settings, SERVICE_NAME, nats_client=nats_client, connect=connect)
        js = nc.jetstream()
        # Legacy topic iot/sensors/<id>/readings: the device registry, mirrored in memory.
        sensors = SensorDirectory(await js.key_value(ns.bucket(DEVICES_BUCKET)))
        await sensors.start(settings.startup_timeout_seconds)
        bundles = coalescer(
            js,
            nc,
            settings,
            Transport.MQTT,
            settings.bundle_linger_ms / 1000,
            publish_timeout=settings.publish_timeout_seconds,
            excerpt_bytes=settings.rejected_excerpt_bytes,
            observe_bundle_points=BUNDLE_POINTS.observe,
        )
        ledger = RawLedger(
            js,
            ns,
            Transport.MQTT,
            settings.ledger_selector,
            timeout=settings.publish_timeout_seconds,
            max_payload_bytes=settings.raw_ledger_payload_bytes,
            on_failure=lambda exc: ERRORS.labels("ledger", type(exc).__name__[:40]).inc(),
        )
        pipeline = Pipeline(settings, bundles, resolve_sensor=sensors.get, ledger=ledger)
        sensors.on_change = pipeline.forget_routes
        supervisor = MqttSupervisor(settings, pipeline)
        task = asyncio.create_task(supervisor.run())
        app.state.nc, app.state.supervisor = nc, supervisor
        log.info("started", port=settings.port, mqtt_url=settings.mqtt_url, stream=raw_stream)
        try:
            yield
        finally:
            await supervisor.stop(settings.shutdown_timeout_seconds)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            app.state.nc = app.state.supervisor = None
            await bundles.close()
            await sensors.stop()
            if nats_client is None and not nc.is_closed:
                await nc.drain()
            log.info("stopped")

    async def ready_check() -> dict[str, bool]:
        nc: Client | None = app.state.nc
        supervisor: MqttSupervisor | None = app.state.supervisor
        mqtt_ok = supervisor is not None and supervisor.connected
        bus = (
            {"nats": False, "stream": False}
            if nc is None
            else await bus_ready(nc, nc.jetstream(), raw_stream)
        )
        return {"mqtt": mqtt_ok} | bus

    app = Starlette(routes=ops_routes(ready_check), lifespan=lifespan)
    app.state.nc = app.state.supervisor = None
    return app
