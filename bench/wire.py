"""Lean clients for the load generators: HTTP/1.1, WebSocket and MQTT 5 over raw asyncio
protocols, so that the devices (which in production are not on the fleet's host) take as little
of this machine's CPU as they can.

Each is the least the bench needs and no more: one request at a time per HTTP connection
(keep-alive, no pipelining; replies with ``Content-Length``), client WebSocket frames with the
all-zero mask (valid: RFC 6455 asks for a key, the server XORs with it, and zero costs no
XOR here), a QoS 1 MQTT 5 publisher (clean start, no keep-alive, PUBACKs handed to a callback).
Requests and frames are bytes the caller formats; replies are parsed only as far as the bench
reads them.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from typing import cast

from gateway_mqtt.mqtt import encode_string, encode_varint, read_varint

HOST = "127.0.0.1"


class ClosedError(ConnectionError):
    """The peer closed the connection (or it failed) while a reply was owed."""


class _Stream(asyncio.Protocol):
    """Bytes in a buffer; ``_parse`` of the subclass consumes what it can after each read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = exc or ClosedError("closed by the peer")
        self._fail(self.closed)

    def _parse(self) -> None:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        if self.closed is not None:
            raise ClosedError(str(self.closed))
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _fail_future(future: asyncio.Future[object] | None, exc: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(exc)


# ---------------------------------------------------------------------------------------- HTTP


class HttpConnection(_Stream):
    """One keep-alive HTTP/1.1 connection; ``request`` sends one request and returns the reply's
    status once its body (``Content-Length``) has arrived."""

    def __init__(self) -> None:
        super().__init__()
        self._reply: asyncio.Future[int] | None = None

    async def request(self, data: bytes) -> int:
        self._reply = asyncio.get_running_loop().create_future()
        self.write(data)
        return await self._reply

    def _parse(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self._reply is None:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        at = head.find(b"\ncontent-length:")
        if at >= 0:
            eol = head.find(b"\r", at)
            length = int(head[at + 16 : eol if eol >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        reply, self._reply = self._reply, None
        if not reply.done():
            reply.set_result(int(head[9:12]))

    def _fail(self, exc: BaseException) -> None:
        _fail_future(self._reply, exc)  # type: ignore[arg-type]


async def open_http(port: int) -> HttpConnection:
    _, conn = await asyncio.get_running_loop().create_connection(HttpConnection, HOST, port)
    return conn


# ----------------------------------------------------------------------------------- WebSocket


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final client frame (text by default) masked with the all-zero key."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class WsConnection(_Stream):
    """A client WebSocket session: ``on_message`` receives every text/binary message's payload
    (server frames are unmasked and, from the gateway, never fragmented); pings are answered."""

    def __init__(self, path: str, port: int) -> None:
        super().__init__()
        self.on_message: Callable[[bytes], None] = lambda _payload: None
        self.on_close: Callable[[BaseException], None] = lambda _exc: None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = base64.b64encode(os.urandom(16)).decode()
        self._handshake = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(self._handshake)

    def send(self, payload: bytes) -> None:
        self.write(ws_frame(payload))

    def _parse(self) -> None:
        buf = self.buf
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[9:12])
            del buf[: end + 4]
            if status != b"101":
                self.upgraded.set_exception(ClosedError(f"upgrade refused: {status.decode()}"))
                self.close()
                return
            self.upgraded.set_result(None)
        at = 0
        while len(buf) - at >= 2:
            opcode, length, start = buf[at] & 0x0F, buf[at + 1] & 0x7F, at + 2
            if length == 126:
                if len(buf) - at < 4:
                    break
                length, start = int.from_bytes(buf[at + 2 : at + 4], "big"), at + 4
            elif length == 127:
                if len(buf) - at < 10:
                    break
                length, start = int.from_bytes(buf[at + 2 : at + 10], "big"), at + 10
            if len(buf) < start + length:
                break
            payload = bytes(buf[start : start + length])
            at = start + length
            if opcode in (0x1, 0x2):
                self.on_message(payload)
            elif opcode == 0x9:
                self.write(ws_frame(payload, 0xA))
            elif opcode == 0x8:
                self.write(ws_frame(payload[:2], 0x8))
                self.close()
        del buf[:at]

    def _fail(self, exc: BaseException) -> None:
        _fail_future(self.upgraded, exc)  # type: ignore[arg-type]
        self.on_close(exc)


async def open_ws(port: int, path: str) -> WsConnection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: WsConnection(path, port), HOST, port)
    await conn.upgraded
    return conn


# ---------------------------------------------------------------------------------------- MQTT


class MqttPublisher(_Stream):
    """An MQTT 5 client that only publishes at QoS 1: ``publish`` returns the packet id, and
    ``on_puback(packet_id, reason_code)`` is called for each PUBACK."""

    def __init__(self) -> None:
        super().__init__()
        self.on_puback: Callable[[int, int], None] = lambda _mid, _rc: None
        self.on_close: Callable[[BaseException], None] = lambda _exc: None
        self._connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._mid = 0

    async def connect(self, client_id: str, username: str | None, password: str | None) -> None:
        flags = 0x02  # clean start
        payload = encode_string(client_id)
        if username is not None:
            flags |= 0x80
            payload += encode_string(username)
        if password is not None:
            flags |= 0x40
            payload += encode_string(password)
        # "MQTT", version 5, flags, keep-alive 0 (none), no properties
        body = encode_string("MQTT") + bytes((5, flags, 0, 0, 0)) + payload
        self.write(b"\x10" + encode_varint(len(body)) + body)
        reason = await self._connack
        if reason:
            raise ClosedError(f"CONNACK reason code 0x{reason:02x}")

    def publish(self, topic: bytes, payload: bytes) -> int:
        self._mid = self._mid % 65535 + 1
        body_len = 2 + len(topic) + 3 + len(payload)  # topic, packet id, properties length 0
        self.write(
            b"\x32"
            + encode_varint(body_len)
            + len(topic).to_bytes(2, "big")
            + topic
            + self._mid.to_bytes(2, "big")
            + b"\0"
            + payload
        )
        return self._mid

    def disconnect(self) -> None:
        if self.closed is None:
            self.write(b"\xe0\x00")
        self.close()

    def _parse(self) -> None:
        buf, at = self.buf, 0
        while len(buf) - at >= 2:
            kind = buf[at] >> 4
            length, pos = read_varint(buf, at + 1)
            if length < 0 or len(buf) < pos + length:
                break
            body = buf[pos : pos + length]
            at = pos + length
            if kind == 4:  # PUBACK: packet id [, reason code [, properties]]
                self.on_puback(int.from_bytes(body[:2], "big"), body[2] if length > 2 else 0)
            elif kind == 2 and not self._connack.done():  # CONNACK: flags, reason code, …
                self._connack.set_result(body[1])
            elif kind == 14:  # DISCONNECT from the broker
                self.close()
        del buf[:at]

    def _fail(self, exc: BaseException) -> None:
        _fail_future(self._connack, exc)  # type: ignore[arg-type]
        self.on_close(exc)


async def open_mqtt(
    port: int, client_id: str, username: str | None, password: str | None
) -> MqttPublisher:
    _, conn = await asyncio.get_running_loop().create_connection(MqttPublisher, HOST, port)
    await conn.connect(client_id, username, password)
    return conn
