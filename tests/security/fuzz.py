"""Fuzzing gateway-http against its own OpenAPI document (schemathesis) and gateway-ws's
protocol with random frames (hypothesis), each on a gateway served by uvicorn on 127.0.0.1 and
the real local NATS. Checks: no 5xx, no crash (``/health`` still answers, no close 1011), and no
accepted point lost (every point key a 202/ack accepted is on ``DP_RAW``).

Used by ``test_fuzz.py`` (bounded, a few seconds) and by ``run_fuzz.py`` (longer runs).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import httpx
import orjson
import schemathesis
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from gateway_http.app import create_app as create_http
from gateway_http.settings import GatewayHttpSettings
from gateway_ws.app import STREAM_PATH, serve_options
from gateway_ws.app import create_app as create_ws
from gateway_ws.protocol import normalize_batch
from gateway_ws.settings import GatewayWsSettings
from tests.host import free_port
from tests.streams import raw_batches
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace
from tributary_ingest.points import id_text, normalize_point
from tributary_runtime.serve import Server, build_server

Key = tuple[str, str, str, Any]  # (domain, source_id, stream_id, ts or a per-request marker)


class QuietServer(Server):
    def install_signal_handlers(self) -> None:
        pass


@asynccontextmanager
async def serving(app: Any, app_settings: Any, **options: Any) -> Any:
    server = build_server(app, app_settings, server_class=QuietServer, **options)
    task = asyncio.create_task(server.serve())
    for _ in range(400):  # bounded: at most ~20 s
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if not server.started:
        raise RuntimeError("server did not start")
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def admin_key(js: Any, ns: Namespace) -> str:
    store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
    return await store.create(Role.ADMIN, "fuzz")


async def stored_keys(js: Any, ns: Namespace, domain: str | None = None) -> set[Key]:
    """Point keys on ``DP_RAW`` (of ``domain`` only, when given)."""
    keys: set[Key] = set()
    for raw in await raw_batches(js, ns):
        batch = raw.batch
        if domain is None or batch.domain == domain:
            keys |= {(batch.domain, batch.source_id, p.stream_id, p.ts) for p in batch.points}
    return keys


@dataclass
class Report:
    """What a fuzz run saw: requests/frames by status, points accepted, problems found."""

    statuses: dict[str, int] = field(default_factory=dict)
    accepted_points: int = 0
    expected: set[Key] = field(default_factory=set)  # keys of accepted points, ts-less marked
    explicit: set[Key] = field(default_factory=set)  # keys of accepted points with timestamps
    failures: list[str] = field(default_factory=list)
    stored: int = 0
    seconds: float = 0.0

    def count(self, label: str) -> None:
        self.statuses[label] = self.statuses.get(label, 0) + 1

    def lost(self, stored: set[Key]) -> list[Key]:
        """Accepted keys missing on the bus (ts-less points: by count, their ts is server time)."""
        self.stored = len(stored)
        missing = sorted(self.explicit - stored, key=repr)
        if len(stored) < len(self.expected):
            missing.append(("*", "*", f"{len(self.expected) - len(stored)} ts-less points", None))
        return missing

    def summary(self) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{sum(self.statuses.values())} requests/frames in {self.seconds:.1f} s ({codes}); "
            f"{self.accepted_points} points accepted, {len(self.expected)} distinct keys, "
            f"{self.stored} keys on DP_RAW; failures: {len(self.failures)}"
        )


def accepted_keys(
    domain: str, source_id: str, raw_points: list[Any], accepted: list[Any], marker: Any
) -> tuple[set[Key], set[Key]]:
    """(all, explicit-timestamp) keys of the accepted points; ts-less ones get ``marker``."""
    keys: set[Key] = set()
    explicit: set[Key] = set()
    for raw, point in zip(raw_points, accepted, strict=True):
        if isinstance(raw, dict) and raw.get("timestamp") is not None:
            key = (domain, source_id, point.stream_id, point.ts)
            explicit.add(key)
        else:
            key = (domain, source_id, point.stream_id, marker)
        keys.add(key)
    return keys, explicit


# -- HTTP ----------------------------------------------------------------------------------


def fuzz_http_cases(base_url: str, key: str, max_examples: int, report: Report) -> None:
    """Every operation of the OpenAPI document, ``max_examples`` generated cases each (blocking:
    run it in a thread while the server serves in the event loop)."""
    document = orjson.loads(resources.files("gateway_http").joinpath("openapi.json").read_bytes())
    schema = schemathesis.openapi.from_dict(document)
    counter = iter(range(10**9))
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, headers={"X-API-Key": key}, timeout=30)
            report.count(f"{case.method} {case.path} {response.status_code}")
            try:
                case.validate_response(response, checks=(not_a_server_error,))
            except Exception as exc:
                report.failures.append(f"{case.method} {case.formatted_path}: {exc}"[:500])
                raise
            if case.path == "/ingest/data" and response.status_code == 202:
                record_ingest(case.body, response.json(), report, next(counter))

        try:
            run()
        except Exception:  # recorded in report.failures; go on with the other operations
            pass


def record_ingest(body: Any, reply: dict[str, Any], report: Report, index: int) -> None:
    rejected = {r["index"] for r in reply["rejected"]}
    raw = [p for i, p in enumerate(body["data_points"]) if i not in rejected]
    now = datetime.now(UTC)
    points = [normalize_point(p, i, now) for i, p in enumerate(raw)]
    domain, source = body["domain"], id_text(body["source_id"])
    keys, explicit = accepted_keys(domain, source, raw, points, ("http", index))
    report.accepted_points += reply["accepted"]
    report.expected |= keys
    report.explicit |= explicit


async def fuzz_http(servers: Any, bus_prefix: str, nc: Any, max_examples: int) -> Report:
    ns = Namespace(bus_prefix)
    js = nc.jetstream()
    port = free_port()
    http_settings = GatewayHttpSettings(
        nats_url=servers.nats_url,
        bus_prefix=bus_prefix,
        port=port,
        provisioning_secret="fuzz-provisioning-secret",  # else POST /devices/provision is 503
    )
    app = create_http(http_settings, nats_client=nc)
    report = Report()
    started = time.monotonic()
    async with serving(app, http_settings):
        key = await admin_key(js, ns)
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(fuzz_http_cases, base, key, max_examples, report)
        async with httpx.AsyncClient(base_url=base) as client:
            if (await client.get("/health")).status_code != 200:
                report.failures.append("/health does not answer after the run")
        report.seconds = time.monotonic() - started
        lost = report.lost(await stored_keys(js, ns))
        if lost:
            report.failures.append(f"accepted points not on DP_RAW: {lost[:5]}")
    return report


# -- WebSocket -----------------------------------------------------------------------------

WS_DOMAIN = "wsfuzz"  # the sessions' domain (the HTTP run may share the namespace)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
POINT = st.fixed_dictionaries(
    {"stream_id": st.one_of(st.text(max_size=10), st.integers(0, 2**63), st.none()),
     "value": st.one_of(st.floats(), st.integers(-(2**63), 2**63), st.text(max_size=5),
                        st.none())},
    optional={"timestamp": st.one_of(st.integers(-10, 5_000_000_000), st.floats(),
                                     st.text(max_size=25), st.none()),
              "sequence": st.one_of(st.integers(-(2**63), 2**64 - 1), st.none(),
                                    st.text(max_size=3)),
              "metadata": JSON, "stream_type": JSON},
)
VALID_POINT = st.fixed_dictionaries(
    {"stream_id": st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8),
     "value": st.floats(allow_nan=False, allow_infinity=False)},
    optional={"timestamp": st.integers(1_000_000_000, 4_000_000_000),
              "sequence": st.integers(0, 2**40)},
)
FRAME = st.one_of(
    st.fixed_dictionaries({"type": st.just("data"),
                           "batch": st.lists(VALID_POINT, min_size=1, max_size=5)}),
    st.fixed_dictionaries({"type": st.just("data"),
                           "batch": st.lists(POINT | JSON, max_size=8)}),
    st.fixed_dictionaries({"type": st.sampled_from(["data", "connect", "ping", "pong", ""])},
                          optional={"batch": JSON, "id": JSON, "api_key": JSON,
                                    "source_id": JSON, "domain": JSON}),
    JSON,
).map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS).decode()) | st.binary(
    max_size=64) | st.text(max_size=64)


async def fuzz_ws_session(url: str, key: str, source: str, frames: list[str | bytes],
                          report: Report) -> None:
    """One session: connect, send the frames, read one reply per frame (or the close)."""
    async with websockets.connect(url) as ws:
        await ws.send(orjson.dumps({"type": "connect", "source_id": source,
                                    "domain": WS_DOMAIN, "api_key": key}).decode())
        assert orjson.loads(await ws.recv())["type"] == "connected"
        for frame in frames:
            await ws.send(frame)
        for index, frame in enumerate(frames):
            try:
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                report.count(f"close {code}")
                if code == 1011:
                    report.failures.append(f"session closed with 1011 after {frame!r:.200}")
                return
            report.count(f"{reply['type']} {reply.get('code', '')}".strip())
            if reply["type"] == "ack":
                batch = orjson.loads(frame)["batch"]
                normalized = normalize_batch(batch, datetime.now(UTC))
                if len(normalized.accepted) != reply["accepted"]:
                    report.failures.append(f"ack of {reply['accepted']} for {frame!r:.200}")
                raw = [p for i, p in enumerate(batch)
                       if i not in {r.index for r in normalized.rejected}]
                keys, explicit = accepted_keys(WS_DOMAIN, source, raw, normalized.accepted,
                                               (source, index))
                report.accepted_points += reply["accepted"]
                report.expected |= keys
                report.explicit |= explicit


async def fuzz_ws(
    servers: Any, bus_prefix: str, nc: Any, max_examples: int, max_frames: int = 12
) -> Report:
    ns = Namespace(bus_prefix)
    js = nc.jetstream()
    ws_settings = GatewayWsSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix,
                                    port=free_port())
    app = create_ws(ws_settings, nats_client=nc)
    report = Report()
    started = time.monotonic()
    url = f"ws://127.0.0.1:{ws_settings.port}{STREAM_PATH}"
    async with serving(app, ws_settings, **serve_options(app, ws_settings)):
        key = await admin_key(js, ns)
        sessions = iter(range(10**9))
        loop = asyncio.get_running_loop()

        @settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(frames=st.lists(FRAME, min_size=1, max_size=max_frames))
        def run(frames: list[str | bytes]) -> None:
            source = f"fuzz-{next(sessions)}"
            asyncio.run_coroutine_threadsafe(
                fuzz_ws_session(url, key, source, frames, report), loop
            ).result(60)

        try:
            await asyncio.to_thread(run)
        except Exception as exc:
            report.failures.append(f"{type(exc).__name__}: {exc}"[:500])
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{ws_settings.port}/health")
            if health.status_code != 200:
                report.failures.append("/health does not answer after the run")
        report.seconds = time.monotonic() - started
        lost = report.lost(await stored_keys(js, ns, WS_DOMAIN))
        if lost:
            report.failures.append(f"acked points not on DP_RAW: {lost[:5]}")
    return report
