"""Wiring: NATS + JetStream, the MQTT connection supervisor, the pipeline between them, and a
Starlette app serving ``/health``, ``/ready`` (broker and bus connected) and ``/metrics``.

Consumes QoS 1 messages on ``<domain>/<source_id>/<stream_id>/data`` and
``iot/sensors/<sensor_id>/readings`` (under ``MQTT_TOPIC_PREFIX``); produces ``PointBundle``s on
``dp.raw.<domain>.part.<p>`` (``Coalescer``) and ``RejectedInput``s on ``dp.rejected.mqtt``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from nats.aio.client import Client
from starlette.applications import Starlette

from gateway_mqtt.metrics import BUNDLE_POINTS, CONNECTED, CONNECTS, ERRORS
from gateway_mqtt.mqtt import MqttConnectError, MqttConnection
from gateway_mqtt.pipeline import Pipeline
from gateway_mqtt.settings import GatewayMqttSettings
from tributary_contracts import DEVICES_BUCKET, DP_RAW, Transport
from tributary_ingest.bus import Connect, coalescer, open_bus
from tributary_runtime.devices import SensorDirectory
from tributary_runtime.ops import ops_routes

SERVICE_NAME = "gateway-mqtt"
READY_TIMEOUT_SECONDS = 2.0
MQTT_CONNECT_TIMEOUT_SECONDS = 10.0

log = structlog.get_logger("gateway_mqtt")


class MqttSupervisor:
    """Keeps one broker connection up: connect, subscribe, wait for loss, back off, repeat."""

    def __init__(self, settings: GatewayMqttSettings, pipeline: Pipeline) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self.connection: MqttConnection | None = None
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self.connection is not None

    async def run(self) -> None:
        settings = self._settings
        backoff = settings.mqtt_reconnect_min_seconds
        host, port, _ = settings.broker
        while not self._stopping:
            conn = MqttConnection(settings, self._pipeline.handle)
            # Attached before connecting: a resumed session's redeliveries can arrive in the
            # same read as the CONNACK.
            self._pipeline.attach(conn)
            try:
                session_present = await conn.connect(MQTT_CONNECT_TIMEOUT_SECONDS)
                refused = await conn.subscribe(
                    settings.subscriptions(), settings.mqtt_qos, MQTT_CONNECT_TIMEOUT_SECONDS
                )
                if refused:
                    ERRORS.labels("subscribe", "refused").inc()
                    log.error("mqtt_subscribe_refused", filters=refused)
                self.connection = conn
                CONNECTED.set(1)
                CONNECTS.inc()
                log.info(
                    "mqtt_connected",
                    broker=f"{host}:{port}",
                    client_id=settings.client_id,
                    session_present=session_present,
                    filters=settings.subscriptions(),
                )
                backoff = settings.mqtt_reconnect_min_seconds
                reason = await conn.closed
                if not self._stopping:
                    log.warning("mqtt_disconnected", reason=reason)
            except (MqttConnectError, TimeoutError) as exc:
                ERRORS.labels("connect", type(exc).__name__).inc()
                log.warning("mqtt_connect_failed", broker=f"{host}:{port}", error=str(exc))
                conn.abort()
            finally:
                self.connection = None
                CONNECTED.set(0)
                self._pipeline.detach()
            if self._stopping:
                break
            # Full jitter around the exponential delay: replicas do not reconnect in lockstep.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, settings.mqtt_reconnect_max_seconds)

    async def stop(self, drain_timeout: float) -> None:
        """Stop reading, let what was received be published and acked, then DISCONNECT."""
        self._stopping = True
        conn = self.connection
        if conn is not None:
            conn.pause_reading()
            if not await self._pipeline.drain(drain_timeout):
                log.warning("shutdown_unacked", in_flight=self._pipeline.in_flight)
            await conn.disconnect()


def create_app(
    settings: GatewayMqttSettings,
    *,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> Starlette:
    """Build the gateway. ``nats_client`` (used, never closed) or ``connect`` (its client is
    closed on shutdown) replace the default ``connect_nats(settings)`` connection."""
    ns = settings.namespace
    raw_stream = ns.stream(DP_RAW)
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
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
        pipeline = Pipeline(settings, bundles, resolve_sensor=sensors.get)
        sensors.on_change = pipeline.forget_routes
        supervisor = MqttSupervisor(settings, pipeline)
        task = asyncio.create_task(supervisor.run())
        state.update(nc=nc, supervisor=supervisor)
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
            state.clear()
            await bundles.close()
            await sensors.stop()
            if nats_client is None and not nc.is_closed:
                await nc.drain()
            log.info("stopped")

    async def ready_check() -> dict[str, bool]:
        nc = state.get("nc")
        supervisor = state.get("supervisor")
        mqtt_ok = isinstance(supervisor, MqttSupervisor) and supervisor.connected
        if not isinstance(nc, Client) or not nc.is_connected:
            return {"mqtt": mqtt_ok, "nats": False, "stream": False}
        try:
            await asyncio.wait_for(nc.jetstream().stream_info(raw_stream), READY_TIMEOUT_SECONDS)
            stream_ok = True
        except Exception:
            stream_ok = False
        return {"mqtt": mqtt_ok, "nats": True, "stream": stream_ok}

    return Starlette(routes=ops_routes(ready_check), lifespan=lifespan)
