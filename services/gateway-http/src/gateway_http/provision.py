"""``POST /devices/provision``: HMAC-SHA256 device provisioning (seed 003: "startup provisioning
uses HMAC-SHA256 with a shared secret"; the seed fixes nothing more, so the scheme is ours).

A device sends ``{"serial", "timestamp", "nonce", "signature"}``:

- ``serial``: 1–64 characters ``[A-Za-z0-9_-]``, dot-separated groups allowed (``SN-1``, ``a.b``);
- ``timestamp``: Unix seconds, a JSON integer;
- ``nonce``: 16–64 characters ``[A-Za-z0-9_-]``, fresh for every request;
- ``signature``: lower- or upper-case hex HMAC-SHA256, under the shared secret
  ``PROVISIONING_SECRET``, of the UTF-8 message ``f"{serial}\\n{timestamp}\\n{nonce}"``
  (``sign(secret, serial, timestamp, nonce)`` below; ``python -m gateway_http.provision``).

Checks, in order: the client IP's rate budget (429), provisioning configured (503), body (422
naming the field), signature (401, constant-time comparison), timestamp within
``PROVISIONING_WINDOW_SECONDS`` of the gateway clock (401), nonce never seen (409; nonces are
written create-only to the ``provision-nonces`` bucket, TTL 1 h, so two replicas cannot both
accept one). Only a request passing all of them uses up its nonce.

Then the device of ``serial`` (index ``serial.<serial>`` → device uuid in ``iot-devices``):

- unknown → a device (new uuid, no sensors, enabled) is registered and its key returned **once**:
  201 ``{"device_uuid", "serial", "created": true, "enabled": true, "device_key": "dev_…"}``;
- known → confirmed, the key is **not** re-issued (it is stored only as a hash; a caller holding
  the shared secret must not be able to take over a running device's identity): 200 with
  ``"created": false, "device_key": null``. A device that lost its key is re-keyed by an operator
  (``tributary devices``), not by provisioning.

``DeviceRegistry.put_device`` creates the index entry create-only after the device record, so two
replicas provisioning one serial at once register one device (the loser removes its record and
confirms the winner's), and devices added with ``tributary devices add|import`` (serial in the
index's alphabet) are confirmed too. Devices stored before the index existed are not indexed:
provisioning their serial registers a second device. Success and refusals (401/409/503) are
audit events ``device_provisioned`` / ``provision_failed``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
import uuid
from typing import Any

import orjson
from nats.js.errors import KeyWrongLastSequenceError
from prometheus_client import Counter
from starlette.requests import Request

from gateway_http.context import HttpContext
from tributary_access.guard import client_ip
from tributary_contracts import AuditAction
from tributary_ingest.http import Answer
from tributary_ingest.points import MalformedJson, parse_json
from tributary_runtime.devices import (
    MAX_SERIAL,
    SERIAL_PATTERN,
    DeviceRecord,
    DeviceRegistry,
    device_key,
    hash_device_key,
    make_device_key,
)
from tributary_runtime.ops import Reply

PATH = "/devices/provision"
NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SIGNATURE_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_TIMESTAMP = 2**40
FIELDS = ("serial", "timestamp", "nonce", "signature")
NOT_CONFIGURED = (
    "provisioning is not configured on this gateway: set PROVISIONING_SECRET "
    "(or PROVISIONING_SECRET_FILE)"
)

PROVISION_REQUESTS = Counter(
    "gateway_http_provision_requests",
    "POST /devices/provision replies by outcome (created, confirmed, invalid_body, "
    "bad_signature, stale_timestamp, replayed_nonce, not_configured, …) and HTTP status.",
    ["outcome", "status"],
)


# -- the signature (devices use this) --------------------------------------------------------
def message(serial: str, timestamp: int, nonce: str) -> bytes:
    """The signed bytes: ``serial``, ``timestamp`` (decimal), ``nonce``, joined by ``\\n``."""
    return f"{serial}\n{timestamp}\n{nonce}".encode()


def sign(secret: str, serial: str, timestamp: int, nonce: str) -> str:
    """Hex HMAC-SHA256 of ``message(serial, timestamp, nonce)`` under ``secret``."""
    return hmac.new(secret.encode(), message(serial, timestamp, nonce), hashlib.sha256).hexdigest()


def provisioning_body(
    secret: str, serial: str, timestamp: int | None = None, nonce: str | None = None
) -> dict[str, Any]:
    """A complete request body (now, a random nonce unless given)."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_urlsafe(18)
    return {
        "serial": serial,
        "timestamp": ts,
        "nonce": nonce,
        "signature": sign(secret, serial, ts, nonce),
    }


# -- the endpoint -----------------------------------------------------------------------------
class Problem(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def parse_body(body: bytes) -> tuple[str, int, str, str]:
    """``(serial, timestamp, nonce, signature)`` of a request body, or ``Problem``."""
    try:
        doc = parse_json(body) if body else None
    except MalformedJson as exc:
        raise Problem("body", str(exc)) from None
    if not isinstance(doc, dict):
        raise Problem("body", "expected a JSON object with " + ", ".join(FIELDS))
    for name in FIELDS:
        if name not in doc:
            raise Problem(name, f"{name} is missing")
    extra = sorted(set(doc) - set(FIELDS))
    if extra:
        raise Problem(extra[0], f"{extra[0]} is not a field of a provisioning request")
    serial, timestamp, nonce, signature = (doc[name] for name in FIELDS)
    if not isinstance(serial, str) or len(serial) > MAX_SERIAL or not SERIAL_PATTERN.match(serial):
        raise Problem(
            "serial",
            f"serial must be 1-{MAX_SERIAL} characters [A-Za-z0-9_-] (dot-separated groups "
            "allowed)",
        )
    if (
        isinstance(timestamp, bool)
        or not isinstance(timestamp, int)
        or not (0 <= timestamp < MAX_TIMESTAMP)
    ):
        raise Problem("timestamp", "timestamp must be an integer number of Unix seconds")
    if not isinstance(nonce, str) or not NONCE_PATTERN.match(nonce):
        raise Problem("nonce", "nonce must be 16-64 characters [A-Za-z0-9_-]")
    if not isinstance(signature, str) or not SIGNATURE_PATTERN.match(signature):
        raise Problem("signature", "signature must be 64 hex characters (HMAC-SHA256)")
    return serial, timestamp, nonce, signature.lower()


def count(_: Request, answer: Answer) -> None:
    """Counts the reply by its outcome (which leaves the body) and status; no caching."""
    body = answer.body or {}
    PROVISION_REQUESTS.labels(body.pop("outcome", "refused"), str(answer.status)).inc()
    answer.headers = {**(answer.headers or {}), "Cache-Control": "no-store"}


def _refuse(
    ctx: HttpContext, request: Request, status: int, outcome: str, reason: str, serial: str | None
) -> Reply:
    audit = ctx.gateway.audit
    audit.record_soon(
        audit.event(
            AuditAction.PROVISION_FAILED,
            outcome="failure",
            client_ip=client_ip(request.scope),
            target=f"device serial {serial}" if serial else PATH,
            reason=reason,
            details={"refusal": outcome},
        )
    )
    return Reply(status, {"error": reason, "outcome": outcome})


async def provision(ctx: HttpContext, request: Request) -> Answer:
    """POST /devices/provision (module docstring); the body carries its ``outcome`` for
    ``count``."""
    ctx.gateway.guard.admit(client_ip(request.scope))
    settings = ctx.settings
    secret = settings.provisioning_secret
    if secret is None or not secret.get_secret_value():
        raise _refuse(ctx, request, 503, "not_configured", NOT_CONFIGURED, None)
    try:
        serial, timestamp, nonce, signature = parse_body(await ctx.read_body(request))
    except Problem as exc:
        raise Reply(
            422, {"error": exc.message, "field": exc.field, "outcome": "invalid_body"}
        ) from None
    expected = sign(secret.get_secret_value(), serial, timestamp, nonce)
    if not hmac.compare_digest(expected, signature):
        raise _refuse(
            ctx,
            request,
            401,
            "bad_signature",
            "signature is not the HMAC-SHA256 of serial, timestamp and nonce under the "
            "provisioning secret",
            serial,
        )
    window = settings.provisioning_window_seconds
    skew = timestamp - int(time.time())
    if abs(skew) > window:
        when = "in the future" if skew > 0 else "old"
        raise _refuse(
            ctx,
            request,
            401,
            "stale_timestamp",
            f"timestamp is {abs(skew)} s {when}; at most {window} s from the gateway clock "
            "is accepted",
            serial,
        )
    try:
        await ctx.nonces.create(f"nonce.{nonce}", serial.encode())
    except KeyWrongLastSequenceError:
        raise _refuse(
            ctx,
            request,
            409,
            "replayed_nonce",
            "nonce was already used; sign a new request with a fresh nonce",
            serial,
        ) from None
    except Exception as exc:
        raise _bus_down(ctx, exc, "the nonce bucket did not answer") from None
    try:
        status, body = await _register(ctx, serial)
    except Reply:
        raise
    except Exception as exc:
        raise _bus_down(ctx, exc, "the device registry did not answer") from None
    created = status == 201
    audit = ctx.gateway.audit
    await audit.record(
        audit.event(
            AuditAction.DEVICE_PROVISIONED,
            client_ip=client_ip(request.scope),
            target=f"device {body['device_uuid']}",
            reason=f"serial {serial} " + ("registered, key issued" if created else "confirmed"),
            details={"serial": serial, "created": created},
        )
    )
    return Answer(status, body | {"outcome": "created" if created else "confirmed"})


def _bus_down(ctx: HttpContext, exc: Exception, what: str) -> Reply:
    reply = ctx.gateway.fault("provision", exc, f"{what}; nothing was changed, retry later")
    reply.body["outcome"] = "unavailable"
    return reply


async def _register(ctx: HttpContext, serial: str) -> tuple[int, dict[str, Any]]:
    registry = ctx.registry
    existing = await _device_of(registry, serial)
    if existing is not None:
        return 200, _reply(existing, None)
    key = make_device_key()
    record = DeviceRecord(
        device_uuid=str(uuid.uuid4()), serial=serial, key_sha256=hash_device_key(key)
    )
    await registry.put_device(record)  # also claims serial.<serial>, create-only
    owner = await registry.device_uuid_by_serial(serial)
    if owner != record.device_uuid:  # another replica registered this serial just now
        await ctx.devices.delete(device_key(record.device_uuid))
        existing = await _device_of(registry, serial)
        if existing is None:
            raise RuntimeError(f"serial {serial} is indexed to a missing device {owner}")
        return 200, _reply(existing, None)
    return 201, _reply(record, key)


async def _device_of(registry: DeviceRegistry, serial: str) -> DeviceRecord | None:
    device_uuid = await registry.device_uuid_by_serial(serial)
    return None if device_uuid is None else await registry.read_device(device_uuid)


def _reply(record: DeviceRecord, key: str | None) -> dict[str, Any]:
    return {
        "device_uuid": record.device_uuid,
        "serial": record.serial,
        "created": key is not None,
        "enabled": record.enabled,
        "device_key": key,
    }


# -- the signing CLI --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m gateway_http.provision --serial SN-1``: print a signed request body."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway_http.provision",
        description="Print a signed POST /devices/provision body (secret from "
        "PROVISIONING_SECRET or PROVISIONING_SECRET_FILE).",
    )
    parser.add_argument("--serial", required=True, help="the device's serial number")
    parser.add_argument("--timestamp", type=int, help="Unix seconds (default: now)")
    parser.add_argument("--nonce", help="nonce (default: a random one)")
    args = parser.parse_args(argv)
    secret = os.environ.get("PROVISIONING_SECRET")
    path = os.environ.get("PROVISIONING_SECRET_FILE")
    if not secret and path:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().strip()
    if not secret:
        print("set PROVISIONING_SECRET or PROVISIONING_SECRET_FILE", file=sys.stderr)
        return 2
    body = provisioning_body(secret, args.serial, args.timestamp, args.nonce)
    try:
        parse_body(orjson.dumps(body))
    except Problem as exc:
        print(f"{exc.field}: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
