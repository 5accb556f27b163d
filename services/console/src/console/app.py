"""Wiring: the query API (``api``), the web console (``pages``), ``/openapi.json``,
``/health``, ``/ready``, ``/metrics``.

Reads PostgreSQL as the read-only role (``queries.Reader``), the ``csv-jobs``,
``stream-configs``, ``iot-devices`` and ``api-keys`` buckets, JetStream consumer/stream info and
the other services' ops endpoints (``fleet_status``). Writes only stream configs (the editor,
admin keys) and audit events (``audit.console.*``).

Every request spends a token of its client IP's rate budget (429) and shows a key (401): the
``X-API-Key`` header, or for the pages the login cookie set by ``POST /console/login``
(HttpOnly, SameSite=Strict; POSTs from another origin are refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import structlog
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console import api, csv_jobs, pages, queries
from console.chart import render_chart
from console.context import KEY_COOKIE, Bus, Caller, Context, CookieKey
from console.metrics import ERRORS, REQUESTS
from console.openapi import document
from console.queries import BadQuery, ReadUnavailable
from console.settings import ConsoleSettings
from tributary_access.access import RequestGuard
from tributary_access.apikeys import Action, ApiKeyStore, Role
from tributary_access.audit import AuditLog
from tributary_access.guard import HeaderLimits, client_ip
from tributary_consumer_kit.page import asyncapi_routes
from tributary_contracts import (
    API_KEYS_BUCKET,
    CSV_JOBS_BUCKET,
    DEVICES_BUCKET,
    STREAM_CONFIGS_BUCKET,
    AuditAction,
    ensure_jetstream,
)
from tributary_runtime.bus import connect_nats
from tributary_runtime.devices import DeviceRegistry
from tributary_runtime.ops import Reply, ops_routes
from tributary_runtime.stream_configs import (
    ConfigProblem,
    StreamConfigBucket,
    StreamScope,
    VersionConflict,
    parse_config,
)

SERVICE_NAME = "console"
log = structlog.get_logger("console")

SESSION_HOURS = 12
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

ApiHandler = Callable[[Context, Request, Caller], Awaitable[Any]]


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def create_app(settings: ConsoleSettings, *, nats_client: Client | None = None) -> Starlette:
    """Build the console. ``nats_client`` (used, never closed) replaces its own connection."""
    ctx = Context(settings)
    ns = ctx.ns

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nc = nats_client or await connect_nats(settings, SERVICE_NAME)
        js = nc.jetstream()
        await ensure_jetstream(js, ns)
        keys = ApiKeyStore(
            await js.key_value(ns.bucket(API_KEYS_BUCKET)),
            cache_seconds=settings.api_key_cache_seconds,
        )
        audit = AuditLog(js, ns, SERVICE_NAME, timeout=settings.publish_timeout_seconds)
        ctx.bus = Bus(
            nc,
            js,
            keys,
            StreamConfigBucket(await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))),
            await js.key_value(ns.bucket(CSV_JOBS_BUCKET)),
            DeviceRegistry(await js.key_value(ns.bucket(DEVICES_BUCKET))),
            audit,
            RequestGuard(keys, ctx.limiter, audit),
        )
        ctx.sampler.start()
        log.info("started", port=settings.port, services=list(ctx.sampler.samples))
        try:
            yield
        finally:
            await ctx.sampler.stop()
            ctx.bus = None
            await audit.close()
            await ctx.reader.close()
            if nats_client is None:
                await nc.close()

    async def ready_check() -> dict[str, bool]:
        nats_ok = ctx.bus is not None and ctx.bus.nc.is_connected
        return {"nats": nats_ok, "postgres": await ctx.reader.ready()}

    # -- the API -----------------------------------------------------------------------------
    def api_route(path: str, name: str, handler: ApiHandler) -> Route:
        async def endpoint(request: Request) -> Response:
            headers: dict[str, str] | None = None
            try:
                caller = await ctx.caller(request)
                result = await handler(ctx, request, caller)
                status, body = result if isinstance(result, tuple) else (200, result)
            except Reply as reply:
                status, body, headers = reply.status, reply.body, reply.headers
            except BadQuery as exc:
                status, body = 422, {"error": str(exc), "field": exc.field}
            except ReadUnavailable as exc:
                status, body = (
                    503,
                    {"error": f"PostgreSQL did not answer ({exc}); retry later", "retry_after": 2},
                )
                headers = {"Retry-After": "2"}
                log.warning("postgres_unavailable", error=str(exc))
            except Exception as exc:
                ERRORS.labels(name, type(exc).__name__[:40]).inc()
                log.exception("request_failed", endpoint=name, error=repr(exc))
                status, body = 500, {"error": "internal error; it was logged"}
            REQUESTS.labels(name, str(status)).inc()
            return json_reply(status, body, headers)

        return Route(path, endpoint, methods=["GET"], name=name)

    async def openapi(_: Request) -> Response:
        return json_reply(200, document())

    # -- the pages ---------------------------------------------------------------------------
    def who(caller: Caller) -> str:
        record = caller.granted.record
        return f"{record.name or record.key_id} ({record.role.value})"

    def page(name: str, render: Callable[[Request, Caller], Awaitable[Response | str]]) -> Any:
        async def endpoint(request: Request) -> Response:
            caller: Caller | None = None
            try:
                caller = await ctx.caller(request)
                if request.method == "POST":
                    check_origin(request)
                result = await render(request, caller)
                response = result if isinstance(result, Response) else HTMLResponse(result)
            except Reply as reply:
                if reply.status == 401:
                    target = urlencode({"next": str(request.url.path)})
                    response = RedirectResponse(f"/console/login?{target}", 303)
                    if request.cookies.get(KEY_COOKIE):
                        response.delete_cookie(KEY_COOKIE, path="/")
                else:
                    message = str(reply.body.get("error") or reply.body)
                    response = HTMLResponse(
                        pages.error_page(reply.status, message, who(caller) if caller else ""),
                        reply.status,
                        reply.headers,
                    )
            except ReadUnavailable as exc:
                response = HTMLResponse(
                    pages.error_page(
                        503,
                        f"PostgreSQL did not answer ({exc}); retry later",
                        who(caller) if caller else "",
                    ),
                    503,
                    {"Retry-After": "2"},
                )
            except Exception as exc:
                ERRORS.labels(name, type(exc).__name__[:40]).inc()
                log.exception("page_failed", page=name, error=repr(exc))
                response = HTMLResponse(pages.error_page(500, "internal error; it was logged"), 500)
            REQUESTS.labels(name, str(response.status_code)).inc()
            response.headers.update(SECURITY_HEADERS)
            response.headers["Cache-Control"] = "no-store"
            return response

        return endpoint

    def check_origin(request: Request) -> None:
        """A cookie-authenticated POST must come from our own pages (SameSite=Strict already
        keeps the cookie off cross-site requests; this also covers old browsers)."""
        origin = request.headers.get("origin")
        if origin and origin != "null":
            if urlsplit(origin).netloc != request.headers.get("host", ""):
                raise Reply(403, {"error": "cross-origin form posts are refused"})

    async def fleet_page(request: Request, caller: Caller) -> str:
        status = await api.fleet(ctx, request, caller)
        return pages.fleet_page(status, who(caller))

    async def explorer(request: Request, caller: Caller) -> str:
        params = request.query_params
        form = {k: params.get(k, "") for k in ("domain", "source_id", "stream_id", "from", "to")}
        form["cls"] = ",".join(request.query_params.getlist("cls"))
        recent = await queries.streams(
            ctx.reader, caller.scope, datetime.now(UTC) - timedelta(hours=24), 50
        )
        view: dict[str, Any] = {
            "chart_svg": None,
            "summary": "",
            "latest": [],
            "alerts": [],
            "predictions": [],
        }
        error = ""
        try:
            key = api.stream_key(params, required=False)
            if key is not None:
                ctx.check_read(request, caller, key.domain, key.source_id)
                span = api.time_range(params)
                assert span is not None
                cls = api.classes(request)
                # Raw points when they fit the chart (an index range scan that stops there),
                # else time buckets; no separate count over the range.
                rows, more = await queries.points(
                    ctx.reader, key, span, cls, settings.chart_buckets, None
                )
                downsampled = more is not None
                if downsampled:
                    every = queries.bucket_seconds(span, settings.chart_buckets)
                    rows = await queries.downsampled(ctx.reader, key, span, cls, every)
                    total = sum(int(r["count"]) for r in rows)
                    summary = f"{total:,} points, shown as {len(rows)} buckets of {every:g} s"
                else:
                    summary = f"{len(rows):,} points"
                alerts, _ = await queries.alerts(
                    ctx.reader,
                    caller.scope,
                    status=None,
                    key=key,
                    span=span,
                    limit=100,
                    cursor=None,
                )
                predictions, _ = await queries.predictions(ctx.reader, caller.scope, key, 5, None)
                latest, _ = await queries.points(
                    ctx.reader, key, span, cls, 20, None, newest_first=True
                )
                view = {
                    "chart_svg": render_chart(
                        rows, alerts, span.start, span.end, downsampled=downsampled
                    ),
                    "summary": f"{key.domain}/{key.source_id}/{key.stream_id} from "
                    f"{span.start.astimezone(UTC):%Y-%m-%d %H:%M:%S} to "
                    f"{span.end.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC: {summary}",
                    "latest": latest,
                    "alerts": alerts,
                    "predictions": predictions,
                }
        except BadQuery as exc:
            error = str(exc)
        return pages.explorer_page(who=who(caller), form=form, recent=recent, error=error, **view)

    async def alerts_page(request: Request, caller: Caller) -> str:
        open_alerts, _ = await queries.alerts(
            ctx.reader, caller.scope, status="open", key=None, span=None, limit=200, cursor=None
        )
        history, next_cursor = await queries.alerts(
            ctx.reader,
            caller.scope,
            status=None,
            key=None,
            span=None,
            limit=50,
            cursor=request.query_params.get("cursor") or None,
        )
        return pages.alerts_page(open_alerts, history, next_cursor, who(caller))

    async def jobs_page(request: Request, caller: Caller) -> str:
        jobs = await csv_jobs.list_jobs(ctx.connected().jobs_kv, caller.scope, 50)
        return pages.jobs_page(jobs, who(caller))

    async def configs_page(request: Request, caller: Caller) -> str:
        listed = await api.configs(ctx, request, caller)
        return pages.configs_page(
            listed["configs"], who(caller), caller.granted.record.role is Role.ADMIN
        )

    def scope_of(values: Any) -> StreamScope:
        try:
            return StreamScope.parse(
                values.get("domain"), values.get("source_id"), values.get("stream_id")
            )
        except ConfigProblem as exc:
            raise Reply(422, {"error": str(exc)}) from None

    async def editor(request: Request, caller: Caller) -> Response | str:
        is_admin = caller.granted.record.role is Role.ADMIN
        if request.method == "POST":
            ctx.check_admin(request, caller, Action.MANAGE_CONFIGS)
            form = await request.form()
            scope = scope_of(form)
            return await save_config(request, caller, scope, form)
        scope = scope_of(request.query_params)
        if not caller.scope.allows_config(scope.domain, scope.source_id):
            ctx.check_read(request, caller, scope.domain, scope.source_id)
        stored = await ctx.connected().configs.get(scope)
        if stored is not None and stored.config is not None:
            text = orjson.dumps(
                stored.config.model_dump(mode="json", exclude={"version"}, exclude_none=True),
                option=orjson.OPT_INDENT_2,
            ).decode()
        else:
            text = '{\n  "value_constraints": {}\n}'
        saved = request.query_params.get("saved")
        return pages.editor_page(
            who=who(caller),
            scope=scope_fields(scope),
            document=text,
            version=stored.version if stored else None,
            is_admin=is_admin,
            saved=f"saved as version {saved}" if saved else "",
            error=f"the stored config is invalid: {stored.problem}"
            if stored is not None and stored.config is None
            else "",
        )

    def scope_fields(scope: StreamScope) -> dict[str, str]:
        return {"domain": scope.domain, "source_id": scope.source_id, "stream_id": scope.stream_id}

    async def save_config(
        request: Request, caller: Caller, scope: StreamScope, form: Any
    ) -> Response | str:
        text = str(form.get("config") or "")
        raw_version = str(form.get("version") or "0")
        expected = int(raw_version) if raw_version.isdigit() else None

        def again(problems: list[dict[str, str]], error: str = "", status: int = 422) -> Response:
            html = pages.editor_page(
                who=who(caller),
                scope=scope_fields(scope),
                document=text,
                version=expected,
                is_admin=True,
                problems=problems,
                error=error,
            )
            return HTMLResponse(html, status)

        try:
            config = parse_config(orjson.loads(text))
        except orjson.JSONDecodeError as exc:
            return again([], f"not valid JSON: {exc}")
        except ConfigProblem as exc:
            return again(exc.to_reply()["problems"], "the config was not saved")
        bus = ctx.connected()
        try:
            stored = await bus.configs.put(scope, config, expected)
        except VersionConflict:
            current = await bus.configs.get(scope)
            return again(
                [],
                f"{scope} changed meanwhile (now version "
                f"{current.version if current else 'none'}); reload the page and edit again",
                409,
            )
        await bus.audit.record(
            bus.audit.event(
                AuditAction.CONFIG_CHANGED,
                key_id=caller.granted.key_id,
                role=caller.role,
                client_ip=client_ip(request.scope),
                target=str(scope),
                reason=f"console edit of {scope}",
                details={"version": stored.version},
            )
        )
        query = urlencode({**scope_fields(scope), "saved": stored.version})
        return RedirectResponse(f"/console/configs/edit?{query}", 303)

    async def login(request: Request) -> Response:
        next_url = request.query_params.get("next", "/console/")
        if request.method == "GET":
            return page_response(pages.login_page(next_url=next_url))
        form = await request.form()
        next_url = str(form.get("next") or "/console/")
        if not next_url.startswith("/console"):
            next_url = "/console/"
        key = str(form.get("key") or "").strip()
        try:
            await ctx.login(request, key)
        except Reply as reply:
            return page_response(
                pages.login_page(str(reply.body.get("error")), next_url), reply.status
            )
        response = RedirectResponse(next_url, 303)
        response.set_cookie(
            KEY_COOKIE,
            key,
            max_age=SESSION_HOURS * 3600,
            path="/",
            httponly=True,
            samesite="strict",
            secure=settings.secure_cookies,
        )
        return response

    async def logout(_: Request) -> Response:
        response = RedirectResponse("/console/login", 303)
        response.delete_cookie(KEY_COOKIE, path="/")
        return response

    def page_response(html: str, status: int = 200) -> Response:
        return HTMLResponse(html, status, {**SECURITY_HEADERS, "Cache-Control": "no-store"})

    async def root(_: Request) -> Response:
        return RedirectResponse("/console/", 307)

    routes = [
        api_route("/api/v1/points", "points", api.points),
        api_route("/api/v1/streams", "streams", api.streams),
        api_route("/api/v1/alerts", "alerts", api.alerts),
        api_route("/api/v1/predictions", "predictions", api.predictions),
        api_route("/api/v1/rejects", "rejects", api.rejects),
        api_route("/api/v1/csv-jobs", "csv_jobs", api.jobs),
        api_route("/api/v1/csv-jobs/{job_id}", "csv_job", api.job),
        api_route("/api/v1/configs", "configs", api.configs),
        api_route("/api/v1/fleet", "fleet", api.fleet),
        api_route("/sensors/{sensor_id}/status", "sensor_status", api.sensor_status),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/", root, methods=["GET"]),
        Route("/console", root, methods=["GET"]),
        Route("/console/login", login, methods=["GET", "POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/", page("fleet", fleet_page), methods=["GET"]),
        Route("/console/streams", page("explorer", explorer), methods=["GET"]),
        Route("/console/alerts", page("alerts", alerts_page), methods=["GET"]),
        Route("/console/jobs", page("jobs", jobs_page), methods=["GET"]),
        Route("/console/configs", page("configs", configs_page), methods=["GET"]),
        Route("/console/configs/edit", page("editor", editor), methods=["GET", "POST"]),
        Mount("/console/static", StaticFiles(packages=[("console", "static")]), name="static"),
        *asyncapi_routes(),  # the bus contract: /asyncapi (page), /asyncapi.json, /asyncapi.yaml
        *ops_routes(ready_check),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(CookieKey)
    app.add_middleware(
        HeaderLimits, max_bytes=settings.max_header_bytes, max_count=settings.max_header_count
    )
    return app
