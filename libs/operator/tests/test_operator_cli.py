"""``tributary status``, ``tail`` and ``dlq``: against the real local NATS (each test in its own
bus prefix) and real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.host import free_port
from tributary_contracts import (
    DLQ_SUBJECT,
    DP_CLASSIFIED,
    DP_DLQ,
    DP_RAW,
    MSG_ID_HEADER,
    AlertEvent,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    PointBatch,
    PointBundle,
    dead_letter_headers,
    ensure_consumer,
)
from tributary_operator import dlq_cli, status_cli, tail_cli
from tributary_operator.cli import build_parser
from tributary_runtime.fleet_status import ConsumerStatus, ServiceStatus, Status, StreamStatus
from tributary_runtime.settings import ServiceSettings

TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def raw_batch(source: str = "host-1", n: int = 2) -> PointBatch:
    return PointBatch.model_validate(
        {
            "domain": "infrastructure",
            "source_id": source,
            "transport": "http",
            "received_at": TS,
            "points": [{"stream_id": f"s{i}", "value": 40.0 + i, "ts": TS} for i in range(n)],
        }
    )


def classified_batch(cls: str = "critical") -> ClassifiedBatch:
    return ClassifiedBatch.model_validate(
        {
            "domain": "infrastructure",
            "source_id": "host-1",
            "transport": "http",
            "received_at": TS,
            "classified_at": TS,
            "cls": cls,
            "points": [
                {"stream_id": "cpu", "value": 99.5, "ts": TS, "reason": "above 95", "rule": "x"},
                {"stream_id": "cpu", "value": 97.0, "ts": TS, "reason": "above 95", "rule": "x"},
            ],
        }
    )


def alert_event() -> AlertEvent:
    return AlertEvent.model_validate(
        {
            "event": "opened",
            "alert_id": "a1",
            "domain": "infrastructure",
            "source_id": "host-1",
            "stream_id": "cpu",
            "severity": "critical",
            "rule": "alert_max",
            "reason": "99.5 above alert_max 95",
            "first_value": 97.0,
            "first_at": TS,
            "last_value": 99.5,
            "last_at": TS,
            "peak_value": 99.5,
            "violation_count": 3,
            "opened_at": TS,
            "emitted_at": TS,
        }
    )


def settings_for(servers: Any, bus_prefix: str) -> ServiceSettings:
    return ServiceSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix)


@pytest.fixture
async def counting_service() -> AsyncIterator[str]:
    """A real HTTP server with /health, /ready and a /metrics whose counters grow by 50 points
    received and 40 published per scrape (what a busy gateway looks like to `status`)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    scrapes = {"n": 0}

    async def health(_: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def metrics(_: Any) -> PlainTextResponse:
        scrapes["n"] += 1
        n = scrapes["n"]
        return PlainTextResponse(
            "# TYPE demo_points_received counter\n"
            f"demo_points_received_total {50 * n}\n"
            "# TYPE demo_points_published counter\n"
            f'demo_points_published_total{{cls="normal"}} {30 * n}\n'
            f'demo_points_published_total{{cls="critical"}} {10 * n}\n'
            "# TYPE demo_errors counter\n"
            'demo_errors_total{stage="publish",error_type="Timeout"} 0\n'
        )

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", health),
            Route("/metrics", metrics),
        ]
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(100):  # bounded wait for the bind
        if server.started:
            break
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, timeout=10)


# -- status ------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_status_reports_services_rates_lag_dlq_and_streams(
    servers: Any, bus_prefix: str, jetstream: Any, counting_service: str
) -> None:
    ns = Namespace(bus_prefix)
    await ensure_consumer(jetstream, ns, "writer-postgres")
    for i in range(7):
        await jetstream.publish(
            ns.classified_subject("infrastructure", "normal", f"h{i}"),
            classified_batch("normal").model_dump_json().encode(),
        )
    body = raw_batch().model_dump_json().encode()
    headers = dead_letter_headers(
        "classifier", "max_deliver", "boom", ns.raw_subject("infrastructure", "host-1"), 10, body
    )
    await jetstream.publish(ns.dlq_subject("classifier"), body, headers=headers)
    down = f"http://127.0.0.1:{free_port()}"
    args = build_parser().parse_args(
        [
            "status",
            "--json",
            "--interval",
            "0.5",
            "--service",
            f"gateway-http={counting_service}",
            "--service",
            f"gateway-ws={down}",
        ]
    )
    out = io.StringIO()

    code = await status_cli.run(args, settings_for(servers, bus_prefix), out=out)

    report = json.loads(out.getvalue())
    services = {s["name"]: s for s in report["services"]}
    assert code == 1  # one service is down
    assert set(services) == {"gateway-http", "gateway-ws"}
    up, gone = services["gateway-http"], services["gateway-ws"]
    assert (up["up"], up["ready"], gone["up"]) == (True, True, False)
    # One scrape step (+50 in, +40 out) over at least the 0.5 s interval.
    assert 0 < up["in_per_s"] <= 100 and 0 < up["out_per_s"] <= 80
    assert up["errors_per_s"] == 0
    assert up["out_per_s"] == pytest.approx(up["in_per_s"] * 0.8)
    assert gone["in_per_s"] is None and gone["error"]
    consumers = {c["durable"]: c for c in report["consumers"]}
    assert consumers["writer-postgres"]["exists"] is True
    assert consumers["writer-postgres"]["num_pending"] == 7
    assert consumers["writer-sqlserver"]["exists"] is False  # declared, not deployed
    streams = {s["name"]: s for s in report["streams"]}
    assert streams[ns.stream(DP_CLASSIFIED)]["messages"] == 7
    assert streams[ns.stream(DP_DLQ)]["subjects"] == {ns.dlq_subject("classifier"): 1}
    assert report["dlq_depth"] == 1


def test_status_table_names_every_section_and_colours_only_on_request() -> None:
    status = Status(
        services=[ServiceStatus("classifier", "http://x", up=False, error="boom")],
        consumers=[ConsumerStatus("classifier", "DP_RAW", True, 12_345, 3, 0)],
        streams=[StreamStatus("DP_DLQ", True, 4, 2048, 0, 3, "n2")],
    )

    plain = status_cli.render(status, colour=False)
    coloured = status_cli.render(status, colour=True)

    assert "\033[" not in plain
    assert "classifier  down" in plain
    assert "12,345" in plain and "DLQ depth: 4" in plain and "2.0 KiB" in plain
    assert status_cli.RED + "down" in coloured  # a down service is red


def test_status_refuses_a_bad_service_option() -> None:
    args = build_parser().parse_args(["status", "--service", "gateway-http=localhost:8001"])

    with pytest.raises(ValueError, match="NAME=http://host:port"):
        status_cli.service_urls(args)


# -- tail --------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_tail_prints_live_classified_points_and_alerts(
    servers: Any, bus_prefix: str, jetstream: Any, nats_client: Any
) -> None:
    ns = Namespace(bus_prefix)
    out = io.StringIO()
    task = asyncio.create_task(tail_cli.tail(nats_client, bus_prefix, "dp.>", 5, 10.0, False, out))
    await asyncio.sleep(0.3)  # the subscription is live before anything is published
    await jetstream.publish(
        ns.classified_subject("infrastructure", "critical", "host-1"),
        classified_batch().model_dump_json().encode(),
    )
    await jetstream.publish(
        ns.alert_subject("infrastructure", "critical", "host-1"),
        alert_event().model_dump_json().encode(),
    )
    other = classified_batch().model_copy(update={"source_id": "host-2"})
    bundle = ClassifiedBundle(
        domain="infrastructure", cls="critical", partition=3, batches=[other]
    )
    await jetstream.publish(
        ns.classified_partition_subject("infrastructure", "critical", 3),
        bundle.model_dump_json().encode(),
    )

    lines, messages = await asyncio.wait_for(task, timeout=15)

    printed = out.getvalue().splitlines()
    assert (lines, messages) == (5, 3)
    assert printed == [
        "2026-03-01T12:00:00Z  infrastructure/host-1/cpu  99.5  critical  above 95",
        "2026-03-01T12:00:00Z  infrastructure/host-1/cpu  97  critical  above 95",
        "2026-03-01T12:00:00Z  infrastructure/host-1/cpu  opened critical  value 99.5 "
        "(peak 99.5, 3 violations)  99.5 above alert_max 95",
        "2026-03-01T12:00:00Z  infrastructure/host-2/cpu  99.5  critical  above 95",
        "2026-03-01T12:00:00Z  infrastructure/host-2/cpu  97  critical  above 95",
    ]


@pytest.mark.integration
async def test_tail_stops_after_seconds_when_nothing_flows(
    bus_prefix: str, nats_client: Any
) -> None:
    out = io.StringIO()
    started = asyncio.get_running_loop().time()

    lines, messages = await tail_cli.tail(
        nats_client, bus_prefix, "dp.alert.>", 10, 0.5, False, out
    )

    assert (lines, messages, out.getvalue()) == (0, 0, "")
    assert asyncio.get_running_loop().time() - started < 3


@pytest.mark.parametrize(
    ("subject_filter", "problem"),
    [
        ("classified.>", "must start with 'dp.'"),
        ("dp.>.x", "'>' may only be the whole last token"),
        ("dp..x", "empty token"),
        ("dp.raw*", "'*' must be a whole token"),
    ],
)
def test_tail_refuses_a_bad_filter(subject_filter: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("*", r"\*").replace(".", r"\.")):
        tail_cli.check_filter(subject_filter)


# -- dlq ---------------------------------------------------------------------------------------
async def _dead_letter(js: Any, ns: Namespace, consumer: str, subject: str, body: bytes) -> int:
    headers = dead_letter_headers(consumer, "max_deliver", "database down", subject, 10, body)
    ack = await js.publish(ns.dlq_subject(consumer), body, headers=headers)
    return int(ack.seq)


@pytest.mark.integration
async def test_dlq_list_and_replay_only_what_is_safe(
    servers: Any, bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    settings = settings_for(servers, bus_prefix)
    good = raw_batch("host-9").model_dump_json().encode()
    raw_subject = ns.raw_subject("infrastructure", "host-9")
    seq_good = await _dead_letter(jetstream, ns, "classifier", raw_subject, good)
    seq_invalid = await _dead_letter(jetstream, ns, "classifier", raw_subject, b'{"domain": 1}')
    seq_moved = await _dead_letter(
        jetstream, ns, "classifier", ns.raw_subject("infrastructure", "other"), good
    )
    seq_rejected = await _dead_letter(
        jetstream, ns, "writer-postgres", ns.rejected_subject("http"), good
    )
    bundle = PointBundle(domain="infrastructure", partition=2, batches=[raw_batch("host-7")])
    bundle_subject = ns.raw_partition_subject("infrastructure", 2)
    seq_bundle = await _dead_letter(
        jetstream, ns, "classifier", bundle_subject, bundle.model_dump_json().encode()
    )

    out = io.StringIO()
    listed = await dlq_cli.run_list(
        build_parser().parse_args(["dlq", "list", "--json"]), settings, out=out
    )
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert listed == 0
    assert [r["seq"] for r in rows] == [seq_bundle, seq_rejected, seq_moved, seq_invalid, seq_good]
    assert rows[-1]["consumer"] == "classifier" and rows[-1]["reason"] == "database down"
    assert rows[-1]["subject"] == "dp.raw.infrastructure.host-9"

    out = io.StringIO()
    code = await dlq_cli.run_replay(
        build_parser().parse_args(["dlq", "replay", "--all", "--delete"]), settings, out=out
    )
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines())

    assert code == 1  # three were refused
    assert lines[str(seq_good)].startswith(f"replayed to {raw_subject} as {ns.stream(DP_RAW)}")
    assert lines[str(seq_good)].endswith("deleted from the DLQ")
    assert lines[str(seq_bundle)].startswith(f"replayed to {bundle_subject} as {ns.stream(DP_RAW)}")
    assert "not a valid message for dp.raw.infrastructure.host-9: domain" in lines[str(seq_invalid)]
    assert "payload belongs on" in lines[str(seq_moved)]
    assert "not a data subject" in lines[str(seq_rejected)]
    # The replayed message is the original payload on the original subject, with a new id.
    replayed = await jetstream.get_last_msg(ns.stream(DP_RAW), raw_subject)
    assert replayed.data == good
    assert replayed.headers[MSG_ID_HEADER].startswith("replay-")
    assert replayed.headers[dlq_cli.REPLAYED_FROM] == f"{ns.stream(DP_DLQ)}:{seq_good}"
    # Deleted from the DLQ; the refused ones stay.
    remaining = await dlq_cli.scan(jetstream, ns, None, 10)
    assert sorted(r.seq for r in remaining) == [seq_invalid, seq_moved, seq_rejected]
    assert all(r.headers[DLQ_SUBJECT] for r in remaining)


@pytest.mark.integration
async def test_dlq_replay_twice_is_stored_once(
    servers: Any, bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    settings = settings_for(servers, bus_prefix)
    body = classified_batch("warning").model_dump_json().encode()
    subject = ns.classified_subject("infrastructure", "warning", "host-1")
    seq = await _dead_letter(jetstream, ns, "writer-postgres", subject, body)
    args = build_parser().parse_args(["dlq", "replay", str(seq)])

    first, second = io.StringIO(), io.StringIO()
    assert await dlq_cli.run_replay(args, settings, out=first) == 0
    assert await dlq_cli.run_replay(args, settings, out=second) == 0

    assert "duplicate" not in first.getvalue()
    assert "duplicate of an earlier replay" in second.getvalue()
    info = await jetstream.stream_info(ns.stream(DP_CLASSIFIED))
    assert info.state.messages == 1


@pytest.mark.integration
async def test_dlq_replay_of_a_missing_sequence_says_so(
    servers: Any, bus_prefix: str, jetstream: Any
) -> None:
    out = io.StringIO()
    code = await dlq_cli.run_replay(
        build_parser().parse_args(["dlq", "replay", "999"]),
        settings_for(servers, bus_prefix),
        out=out,
    )

    assert code == 1
    assert out.getvalue() == "999: not replayed: no such dead letter\n"
