"""The gateway's MQTT client: an ``asyncio.Protocol`` that speaks just what the receive path needs.

A persistent session (clean start off; MQTT 5: session expiry and receive maximum = the
gateway's in-flight bound, so the broker never sends more unacknowledged QoS 1 messages than the
pipeline holds), credentials, TLS for ``mqtts://``, SUBSCRIBE with the broker's per-filter reason
codes (shared subscriptions are just ``$share/…`` filters), incoming PUBLISH at QoS 0/1 handed to
``on_message`` as an ``MqttMessage``, PUBACK only when the pipeline calls ``ack`` (after the bus
PubAck), keep-alive pings with a timeout, pausing reads for backpressure, DISCONNECT. The gateway
subscribes at QoS ≤ 1, so the broker never sends QoS 2. Reconnecting with backoff is the
caller's (``app.MqttIngest``): one ``MqttConnection`` per connection attempt.

Written for the receive path's cost: packets are parsed straight from the read buffer, many per
read, and the PUBACKs of one loop iteration leave in one write.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import cast

import structlog

from gateway_mqtt.settings import GatewayMqttSettings

log = structlog.get_logger("gateway_mqtt.mqtt")

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
SESSION_EXPIRY_INTERVAL, RECEIVE_MAXIMUM = 0x11, 0x21  # MQTT 5 property identifiers


class MqttConnectError(Exception):
    """The broker could not be reached or refused the connection."""


class MqttMessage:
    """One received PUBLISH (the attributes the pipeline reads, named as paho names them)."""

    __slots__ = ("_topic", "dup", "mid", "payload", "qos", "retain")

    def __init__(
        self, topic: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool
    ) -> None:
        self._topic = topic
        self.payload = payload
        self.qos = qos
        self.mid = mid
        self.dup = dup
        self.retain = retain

    @property
    def topic(self) -> str:
        return self._topic.decode("utf-8", "replace")


MessageHandler = Callable[[MqttMessage], None]


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def encode_string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def read_varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """(value, position after it) of the variable byte integer at ``at``; (-1, at) if cut off."""
    value, shift, pos = 0, 0, at
    while pos < len(data) and shift <= 21:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    if shift > 21:
        raise ValueError("malformed variable byte integer")
    return -1, at


class MqttConnection(asyncio.Protocol):
    """A connected (or connecting) client; create a new one per connection attempt."""

    def __init__(self, settings: GatewayMqttSettings, on_message: MessageHandler) -> None:
        self._settings = settings
        self._on_message = on_message
        self._v5 = settings.mqtt_protocol == "5"
        self._loop = asyncio.get_running_loop()
        self._connected: asyncio.Future[bool] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._subscribed: dict[int, asyncio.Future[list[int]]] = {}
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._paused = False
        self._out: list[bytes] = []
        self._mid = 0
        self._last_out = self._last_in = time.monotonic()
        self._ping_sent = 0.0
        self._keepalive_task: asyncio.Task[None] | None = None

    # -- connecting ---------------------------------------------------------------------
    def _connect_packet(self) -> bytes:
        settings = self._settings
        flags = 0  # clean start / clean session off: the broker keeps our session
        payload = encode_string(settings.client_id)
        if settings.mqtt_username is not None:
            flags |= 0x80
            payload += encode_string(settings.mqtt_username)
            if settings.mqtt_password is not None:
                flags |= 0x40
                payload += encode_string(settings.mqtt_password.get_secret_value())
        head = encode_string("MQTT") + bytes((5 if self._v5 else 4, flags))
        head += settings.mqtt_keepalive_seconds.to_bytes(2, "big")
        if self._v5:
            # The broker sends at most this many unacknowledged QoS 1 messages: our in-flight
            # bound is enforced where the data is, not by buffering here.
            properties = (
                bytes((SESSION_EXPIRY_INTERVAL,))
                + settings.mqtt_session_expiry_seconds.to_bytes(4, "big")
                + bytes((RECEIVE_MAXIMUM,))
                + settings.max_in_flight.to_bytes(2, "big")
            )
            head += encode_varint(len(properties)) + properties
        return _packet(CONNECT << 4, head + payload)

    async def connect(self, timeout: float) -> bool:
        """Connect; True if the broker still had our session. ``MqttConnectError`` if not."""
        host, port, tls = self._settings.broker
        context = ssl.create_default_context(cafile=self._settings.mqtt_tls_ca) if tls else None
        try:
            async with asyncio.timeout(timeout):
                await self._loop.create_connection(
                    lambda: self, host, port, ssl=context, server_hostname=host if tls else None
                )
                self._send(self._connect_packet())
                return await asyncio.shield(self._connected)
        except MqttConnectError:
            self.abort()
            raise
        except (OSError, ssl.SSLError, ValueError, TimeoutError) as exc:
            self.abort()
            raise MqttConnectError(f"{type(exc).__name__}: {exc}") from None

    async def subscribe(self, filters: list[str], qos: int, timeout: float) -> list[str]:
        """Subscribe to every filter; the filters the broker refused (empty if none)."""
        if self.closed.done() or self._transport is None:
            raise MqttConnectError("subscribe failed: not connected")
        mid = self._next_mid()
        body = mid.to_bytes(2, "big") + (b"\x00" if self._v5 else b"")  # no properties
        for f in filters:
            body += encode_string(f) + bytes((qos,))  # MQTT 5: options = the maximum QoS only
        future = self._subscribed[mid] = self._loop.create_future()
        self._send(_packet(SUBSCRIBE << 4 | 0x2, body))
        codes = await asyncio.wait_for(future, timeout)
        return [f for f, code in zip(filters, codes, strict=False) if code >= 0x80]

    def _next_mid(self) -> int:
        self._mid = self._mid % 65535 + 1
        return self._mid

    # -- acknowledging and flow control -------------------------------------------------
    def ack(self, mid: int) -> None:
        """Send the PUBACK of QoS 1 message ``mid`` (with the others of this loop iteration)."""
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(b"\x40\x02" + mid.to_bytes(2, "big"))

    def _send(self, packet: bytes) -> None:
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(packet)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))
            self._last_out = time.monotonic()

    def pause_reading(self) -> None:
        """Stop reading from the broker (backpressure beyond what the broker enforces)."""
        if not self._paused:
            self._paused = True
            if self._transport is not None and not self._transport.is_closing():
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self.closed.done():
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()
            self._loop.call_soon(self._parse)  # packets may already sit in the buffer

    # -- the protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._paused:
            self._transport.pause_reading()
        if self._settings.mqtt_keepalive_seconds:
            self._keepalive_task = self._loop.create_task(self._keepalive())

    def data_received(self, data: bytes) -> None:
        self._last_in = time.monotonic()
        self._buf += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(f"connection lost: {exc}" if exc else "connection closed")

    def _parse(self) -> None:
        buf, at = self._buf, 0
        try:
            while len(buf) - at >= 2 and not self._paused:
                first = buf[at]
                length, start = read_varint(buf, at + 1)
                if length < 0 or len(buf) < start + length:
                    break
                at = start + length
                kind = first >> 4
                if kind == PUBLISH:
                    self._publish(first, bytes(buf[start:at]))
                else:
                    self._control(kind, bytes(buf[start:at]))
        except (ValueError, IndexError) as exc:
            self._fail(f"malformed packet from the broker: {exc}")
        finally:
            del buf[:at]

    def _publish(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 0x3
        end = 2 + int.from_bytes(body[:2], "big")
        topic, mid = body[2:end], 0
        if qos:
            mid = int.from_bytes(body[end : end + 2], "big")
            end += 2
        if self._v5:
            size, end = read_varint(body, end)
            end += size
        message = MqttMessage(topic, body[end:], qos, mid, bool(first & 0x8), bool(first & 0x1))
        self._on_message(message)

    def _control(self, kind: int, body: bytes) -> None:
        if kind == CONNACK:
            if self._connected.done():
                return
            session_present, code = bool(body[0] & 0x1), body[1]
            if code >= (0x80 if self._v5 else 0x01):
                self._connected.set_exception(MqttConnectError(f"broker refused: 0x{code:02x}"))
            else:
                self._connected.set_result(session_present)
        elif kind == SUBACK:
            mid, at = int.from_bytes(body[:2], "big"), 2
            if self._v5:
                size, at = read_varint(body, at)
                at += size
            future = self._subscribed.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(list(body[at:]))
        elif kind == PINGRESP:
            self._ping_sent = 0.0
        elif kind == DISCONNECT:
            self._fail(f"disconnected by the broker: 0x{body[0] if body else 0:02x}")

    async def _keepalive(self) -> None:
        """PINGREQ when nothing was sent or received for a keep-alive interval; the connection
        is dropped when no PINGRESP came back within another interval."""
        interval = self._settings.mqtt_keepalive_seconds
        while not self.closed.done():
            await asyncio.sleep(1)
            now = time.monotonic()
            if self._ping_sent and now - self._ping_sent >= interval:
                self._fail("keepalive timeout")
                return
            if not self._ping_sent and (
                now - self._last_out >= interval or now - self._last_in >= interval
            ):
                self._ping_sent = now
                self._send(bytes((PINGREQ << 4, 0)))

    def _fail(self, why: str) -> None:
        self._close(why)
        if self._transport is not None:
            self._transport.abort()

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
        if self._keepalive_task is not None and self._keepalive_task is not asyncio.current_task():
            self._keepalive_task.cancel()

    # -- closing ------------------------------------------------------------------------
    async def disconnect(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT (the session stays on the broker) and wait for the socket to close."""
        if self.closed.done() or self._transport is None:
            return
        self._flush()  # the PUBACKs owed go before the DISCONNECT
        self._transport.write(bytes((DISCONNECT << 4, 0)))
        self._transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (like a crash: the broker keeps the session)."""
        if self._transport is not None:
            self._transport.abort()
        self._close("aborted")
