"""The query API (``/api/v1/…``, ``/sensors/{id}/status``): query parameters in, JSON out.

Every endpoint needs a key of any role (``read_only`` and up); what it returns is limited to the
key's read scope (``scope``). Bad parameters → 422 naming the field, PostgreSQL or NATS down →
503 with ``Retry-After``. ``openapi.py`` documents each one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

from console import csv_jobs, queries
from console.context import Caller, Context
from console.fleet_status import fleet_status
from console.queries import BadQuery, StreamKey, TimeRange
from tributary_runtime.devices import MAX_SENSOR_ID, unregistered_source_id
from tributary_runtime.ops import Reply
from tributary_runtime.sensor_status import (
    IOT_DOMAIN,
    LATEST_SQL,
    OPEN_ALERT_SQL,
    status_body,
)

DEFAULT_RANGE = timedelta(hours=1)
MAX_LIST = 1000


# -- parameters ------------------------------------------------------------------------------
def text_param(params: Mapping[str, str], name: str, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise BadQuery(name, "is required")
        return None
    if len(value) > 256 or not value.isprintable():
        raise BadQuery(name, "must be 1–256 printable characters")
    return value


def stream_key(params: Mapping[str, str], required: bool = True) -> StreamKey | None:
    """``domain``, ``source_id``, ``stream_id``: all three, or (when not required) none."""
    values = [text_param(params, n) for n in ("domain", "source_id", "stream_id")]
    if all(v is None for v in values) and not required:
        return None
    for name, value in zip(("domain", "source_id", "stream_id"), values, strict=True):
        if value is None:
            raise BadQuery(name, "is required (a stream is domain + source_id + stream_id)")
    domain, source, stream = values
    assert domain is not None and source is not None and stream is not None
    return StreamKey(domain, source, stream)


def parse_time(value: str, field: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise BadQuery(
            field, f"{value[:40]!r} is not ISO 8601 (e.g. 2026-02-25T21:00:00Z)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def time_range(
    params: Mapping[str, str], default: timedelta = DEFAULT_RANGE, required: bool = True
) -> TimeRange | None:
    """``from`` (inclusive) and ``to`` (exclusive), ISO 8601; default: the last hour."""
    raw_from, raw_to = params.get("from") or None, params.get("to") or None
    if not required and raw_from is None and raw_to is None:
        return None
    end = parse_time(raw_to, "to") if raw_to else datetime.now(UTC)
    try:
        start = parse_time(raw_from, "from") if raw_from else end - default
    except OverflowError:
        raise BadQuery("to", "is too early to have a default from; give from") from None
    if start >= end:
        raise BadQuery("from", "must be before to")
    return TimeRange(start, end)


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(name, "must be an integer") from None
    if not low <= value <= high:
        raise BadQuery(name, f"must be between {low} and {high}")
    return value


def float_param(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(name, "must be a number of seconds") from None
    if not 0.001 <= value <= 366 * 86400:
        raise BadQuery(name, "must be between 0.001 and 31622400 seconds")
    return value


def classes(request: Request) -> list[str] | None:
    values: list[str] = []
    for raw in request.query_params.getlist("cls"):
        values.extend(v for v in raw.split(",") if v)
    return queries.classes_param(values)


# -- endpoints -------------------------------------------------------------------------------
async def points(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """Points of one stream over a time range: pages of raw points (``limit``, ``cursor``), or
    downsampled to ``every`` seconds or into at most ``buckets`` buckets."""
    params = request.query_params
    key = stream_key(params)
    assert key is not None
    ctx.check_read(request, caller, key.domain, key.source_id)
    span = time_range(params)
    assert span is not None
    cls = classes(request)
    every = float_param(params, "every")
    buckets = params.get("buckets")
    if buckets:
        every = queries.bucket_seconds(
            span, int_param(params, "buckets", 0, 1, ctx.settings.max_page_points)
        )
    base = {
        "domain": key.domain,
        "source_id": key.source_id,
        "stream_id": key.stream_id,
        "from": queries.jsonable({"t": span.start})["t"],
        "to": queries.jsonable({"t": span.end})["t"],
    }
    if every is not None:
        if span.seconds / every > ctx.settings.max_page_points:
            raise BadQuery(
                "every",
                f"cuts the range into more than {ctx.settings.max_page_points} buckets; "
                "use a larger bucket or a shorter range",
            )
        rows = await queries.downsampled(ctx.reader, key, span, cls, every)
        return {**base, "every_seconds": every, "buckets": rows}
    limit = int_param(params, "limit", 1000, 1, ctx.settings.max_page_points)
    rows, next_cursor = await queries.points(
        ctx.reader, key, span, cls, limit, params.get("cursor")
    )
    return {**base, "points": rows, "next": next_cursor}


async def streams(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """Streams with points in the last ``hours`` (default 24)."""
    hours = int_param(request.query_params, "hours", 24, 1, 24 * 366)
    limit = int_param(request.query_params, "limit", 200, 1, MAX_LIST)
    since = datetime.now(UTC) - timedelta(hours=hours)
    return {"streams": await queries.streams(ctx.reader, caller.scope, since, limit)}


async def alerts(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """Alerts: ``status`` open (default), closed or all; optionally of one stream, opened in a
    time range; newest first, paged."""
    params = request.query_params
    status = params.get("status", "open")
    if status not in ("open", "closed", "all"):
        raise BadQuery("status", "must be open, closed or all")
    key = stream_key(params, required=False)
    if key is not None:
        ctx.check_read(request, caller, key.domain, key.source_id)
    span = time_range(params, required=False)
    limit = int_param(params, "limit", 100, 1, MAX_LIST)
    rows, next_cursor = await queries.alerts(
        ctx.reader,
        caller.scope,
        status=None if status == "all" else status,
        key=key,
        span=span,
        limit=limit,
        cursor=params.get("cursor"),
    )
    return {"alerts": rows, "next": next_cursor}


async def predictions(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """ml-batch predictions, newest first (of one stream when it is named), paged."""
    params = request.query_params
    key = stream_key(params, required=False)
    if key is not None:
        ctx.check_read(request, caller, key.domain, key.source_id)
    limit = int_param(params, "limit", 50, 1, MAX_LIST)
    rows, next_cursor = await queries.predictions(
        ctx.reader, caller.scope, key, limit, params.get("cursor")
    )
    return {"predictions": rows, "next": next_cursor}


async def rejects(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """Input the gateways refused, newest first, paged."""
    params = request.query_params
    domain, source = text_param(params, "domain"), text_param(params, "source_id")
    if domain is not None and source is not None:
        ctx.check_read(request, caller, domain, source)
    limit = int_param(params, "limit", 100, 1, MAX_LIST)
    rows, next_cursor = await queries.rejects(
        ctx.reader,
        caller.scope,
        domain=domain,
        source_id=source,
        transport=text_param(params, "transport"),
        limit=limit,
        cursor=params.get("cursor"),
    )
    return {"rejects": rows, "next": next_cursor}


async def jobs(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """CSV import jobs, newest first, with their progress."""
    limit = int_param(request.query_params, "limit", 50, 1, MAX_LIST)
    bus = ctx.connected()
    return {"jobs": await csv_jobs.list_jobs(bus.jobs_kv, caller.scope, limit)}


async def job(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """One CSV import job with its errors."""
    found = await csv_jobs.get_job(
        ctx.connected().jobs_kv, caller.scope, request.path_params["job_id"]
    )
    if found is None:
        raise Reply(404, {"error": f"no job {request.path_params['job_id'][:64]!r}"})
    return found


async def configs(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """Stored stream configs (of ``domain`` when given) that apply to what the key reads."""
    domain = text_param(request.query_params, "domain")
    stored = await ctx.connected().configs.list(domain)
    out = []
    for item in stored:
        if not caller.scope.allows_config(item.scope.domain, item.scope.source_id):
            continue
        out.append(
            {
                "domain": item.scope.domain,
                "source_id": item.scope.source_id,
                "stream_id": item.scope.stream_id,
                "version": item.version,
                "config": item.config.model_dump(mode="json") if item.config else None,
                "problem": item.problem,
                "summary": item.summary(),
            }
        )
    return {"configs": out}


async def fleet(ctx: Context, request: Request, caller: Caller) -> dict[str, Any]:
    """Services, consumer lag, streams, DLQ depth and open breakers."""
    bus = ctx.connected()
    return await fleet_status(ctx.sampler, bus.js, ctx.ns)


async def sensor_status(
    ctx: Context, request: Request, caller: Caller
) -> tuple[int, dict[str, Any]]:
    """``GET /sensors/{sensor_id}/status``: the legacy reply (``{"detail": …}`` errors)."""
    raw = request.path_params["sensor_id"]
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SENSOR_ID:
        return 422, {
            "detail": [
                {
                    "loc": ["path", "sensor_id"],
                    "msg": f"sensor_id {raw[:32]!r} is not a non-negative integer",
                    "type": "int_parsing",
                }
            ]
        }
    sensor_id = int(raw)
    try:
        sensor = await ctx.connected().devices.sensor(sensor_id)
    except Reply:
        raise
    except Exception as exc:
        raise Reply(
            503,
            {"detail": f"the device registry did not answer ({type(exc).__name__})"},
            {"Retry-After": "2"},
        ) from None
    sources = [unregistered_source_id(sensor_id)]
    if sensor is not None:
        sources.insert(0, sensor.device_uuid)
    sources = [s for s in sources if caller.scope.allows(IOT_DOMAIN, s)]
    if not sources:
        ctx.check_read(request, caller, IOT_DOMAIN, sensor.device_uuid if sensor else "")
    latest = await ctx.reader.fetch(LATEST_SQL, IOT_DOMAIN, sources, str(sensor_id))
    alert = await ctx.reader.fetch(OPEN_ALERT_SQL, IOT_DOMAIN, sources, str(sensor_id))
    if sensor is None and not latest and not alert:
        return 404, {"detail": f"sensor {sensor_id} is not registered and has no readings"}
    return 200, status_body(
        sensor_id, sensor, latest[0] if latest else None, alert[0] if alert else None
    )
