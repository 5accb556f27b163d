"""The broker connection's supervisor: connect, subscribe, hand messages to the ``Pipeline``,
wait for loss, back off (with jitter), repeat; on shutdown stop reading, drain, DISCONNECT."""

from __future__ import annotations

import asyncio
import random

import structlog

from gateway_mqtt.metrics import CONNECTED, CONNECTS, ERRORS
from gateway_mqtt.mqtt import MqttConnectError, MqttConnection
from gateway_mqtt.pipeline import Pipeline
from gateway_mqtt.settings import GatewayMqttSettings

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
