"""One paho-mqtt client driven by the asyncio event loop (no network thread).

paho-mqtt 2.x is used directly rather than through aiomqtt because the gateway needs what
aiomqtt does not expose: manual QoS 1 acknowledgements (``manual_ack=True`` + ``ack(mid, 1)``),
pausing reads for backpressure, and a receive path without a per-message queue hop. The socket
integration follows paho's external-loop hooks (``on_socket_open``/``register_write``…), as
aiomqtt does.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway_mqtt.settings import GatewayMqttSettings

log = structlog.get_logger("gateway_mqtt.mqtt")

READS_PER_WAKEUP = 256
"""Packets read per readable event before yielding to the loop (paho reads one per call)."""

MessageHandler = Callable[[Any], None]  # receives paho.MQTTMessage


class MqttConnectError(Exception):
    """The broker could not be reached or refused the connection."""


class MqttConnection:
    """A connected (or connecting) client; create a new one per connection attempt."""

    def __init__(self, settings: GatewayMqttSettings, on_message: MessageHandler) -> None:
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._connected: asyncio.Future[bool] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._subscribed: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._fileno = -1
        self._reading = False
        self._paused = False
        self._misc: asyncio.Task[None] | None = None
        v5 = settings.mqtt_protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        if settings.mqtt_username is not None:
            password = settings.mqtt_password
            client.username_pw_set(
                settings.mqtt_username, password.get_secret_value() if password else None
            )
        self._tls = settings.broker[2]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = lambda _c, _u, message: on_message(message)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client

    # -- connecting ---------------------------------------------------------------------
    def _blocking_connect(self) -> None:
        """Runs in an executor thread: DNS, TCP (and TLS) connect, CONNECT packet queued."""
        settings = self._settings
        host, port, tls = settings.broker
        if tls:
            context = ssl.create_default_context(cafile=settings.mqtt_tls_ca)
            self.client.tls_set_context(context)
        properties = None
        if settings.mqtt_protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.mqtt_session_expiry_seconds
            # The broker sends at most this many unacknowledged QoS 1 messages: our in-flight
            # bound is enforced where the data is, not by buffering here.
            properties.ReceiveMaximum = settings.max_in_flight
        self.client.connect(
            host,
            port,
            keepalive=settings.mqtt_keepalive_seconds,
            clean_start=False,
            properties=properties,
        )

    async def connect(self, timeout: float) -> bool:
        """Connect; True if the broker still had our session. ``MqttConnectError`` if not."""
        try:
            await self._loop.run_in_executor(None, self._blocking_connect)
            return await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except MqttConnectError:
            self.abort()
            raise
        except (OSError, ssl.SSLError, ValueError, TimeoutError) as exc:
            self.abort()
            raise MqttConnectError(f"{type(exc).__name__}: {exc}") from None

    def _on_connect(
        self, _c: Any, _u: Any, flags: paho.ConnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        if self._connected.done():
            return
        if reason.is_failure:
            self._connected.set_exception(MqttConnectError(f"broker refused: {reason}"))
        else:
            self._connected.set_result(bool(flags.session_present))

    async def subscribe(self, filters: list[str], qos: int, timeout: float) -> list[str]:
        """Subscribe to every filter; the filters the broker refused (empty if none)."""
        if self._settings.mqtt_protocol == "5":
            topics: list[Any] = [(f, SubscribeOptions(qos=qos)) for f in filters]
        else:
            topics = [(f, qos) for f in filters]
        rc, mid = self.client.subscribe(topics)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttConnectError(f"subscribe failed: {paho.error_string(rc)}")
        future = self._subscribed[mid] = self._loop.create_future()
        codes = await asyncio.wait_for(future, timeout)
        return [f for f, code in zip(filters, codes, strict=False) if code.is_failure]

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        future = self._subscribed.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(codes)

    # -- acknowledging and flow control -------------------------------------------------
    def ack(self, mid: int) -> None:
        """Send the PUBACK of QoS 1 message ``mid`` (queued; written when the socket allows)."""
        self.client.ack(mid, 1)

    def pause_reading(self) -> None:
        """Stop reading from the broker (backpressure beyond what the broker enforces)."""
        self._paused = True
        if self._reading:
            self._loop.remove_reader(self._fileno)
            self._reading = False

    def resume_reading(self) -> None:
        self._paused = False
        if not self._reading and self._fileno >= 0 and not self.closed.done():
            self._loop.add_reader(self._fileno, self._read)
            self._reading = True
            self._loop.call_soon(self._read)  # bytes may already sit in paho's buffers

    # -- socket plumbing (paho's external-loop hooks) -----------------------------------
    def _read(self) -> None:
        client = self.client
        try:
            for _ in range(READS_PER_WAKEUP):
                if client._sock is None or self._paused:
                    return
                # loop_read() handles one packet per call; _packet_read() until the socket
                # would block saves an event-loop round trip per message.
                rc = client._packet_read()
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return
                if rc > 0:
                    client._loop_rc_handle(rc)
                    return
        except Exception as exc:  # a broken socket: paho raises OSError subclasses
            self._close(f"read failed: {type(exc).__name__}: {exc}")

    def _on_socket_open(self, _c: Any, _u: Any, sock: Any) -> None:
        # Called from the executor thread that runs connect().
        def register() -> None:
            self._fileno = sock.fileno()
            if not self._paused:
                self._loop.add_reader(self._fileno, self._read)
                self._reading = True
            self._misc = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(register)

    def _on_socket_close(self, _c: Any, _u: Any, sock: Any) -> None:
        fileno = sock.fileno()
        if fileno >= 0:
            self._loop.remove_reader(fileno)
            self._loop.remove_writer(fileno)
        self._reading = False
        self._fileno = -1
        if self._misc is not None:
            self._misc.cancel()

    def _on_register_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:
                self._close(f"write failed: {type(exc).__name__}: {exc}")

        fileno = sock.fileno()
        if self._in_loop_thread():
            self._loop.add_writer(fileno, write)
        else:
            self._loop.call_soon_threadsafe(self._loop.add_writer, fileno, write)

    def _on_unregister_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self._loop.remove_writer(sock.fileno())

    def _in_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def _misc_loop(self) -> None:
        # Keepalive pings and ping timeouts.
        while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self._close(str(reason))

    def _close(self, why: str) -> None:
        if not self._connected.done():
            self._connected.set_exception(MqttConnectError(why))
            self._connected.exception()  # retrieved: connect() may already have given up
        if not self.closed.done():
            self.closed.set_result(why)
        for future in self._subscribed.values():
            if not future.done():
                future.set_exception(MqttConnectError(why))
        self._subscribed.clear()

    # -- closing ------------------------------------------------------------------------
    async def disconnect(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT (the session stays on the broker) and wait for the socket to close."""
        if self.closed.done():
            return
        self.client.disconnect()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (like a crash: the broker keeps the session)."""
        self.client._sock_close()
        self._close("aborted")
