"""The fleet against this machine's physical limits, in one run (issues 10, 16). A measure, not
a test.

    make bench
    .venv/bin/python bench/run.py --duration 10 --profiles devices,batched \
        --device-sources 2000 --device-rate 5000 --drain-messages 100000 \
        --rate 2000 --batch 100 --sources 4 --out /tmp/tributary-bench

Starts the fleet once as processes (``tests/e2e/fleet_process.FleetProcess``) in a fresh bus
namespace and a fresh database, measures the physical limits (``limits.py``), then runs two
profiles in the same run, so that they compare under the same machine load:

- ``devices``: ``--device-sources`` sources sending 1 point per HTTP request / WebSocket message
  / MQTT message (HTTP over ``--device-connections`` keep-alive connections, one WebSocket
  session per source); per transport a ``devices-fixed`` phase at ``--device-rate`` points/s and
  a ``devices-saturation`` phase; then ``devices-drain``: the classifier is paused (SIGSTOP),
  ``--drain-messages`` single-reading MQTT messages are acknowledged, the classifier resumes
  (SIGCONT) and the time until every point is a row and the consumer lag is 0 is measured.
- ``batched``: ``--sources`` sources sending ``--batch`` points per request/message; per
  transport ``batched-fixed`` at ``--rate`` points/s and ``batched-saturation`` (CSV: one job).

Each phase lasts ``--duration`` seconds (the drain: until its messages are sent). After each
phase it waits until every acknowledged point is a row. Reported per phase: acked and end-to-end
points/s (first send → last row), ack latency p50/p95/p99, CPU per service (/proc
utime+stime), consumer lag (JetStream num_pending + num_ack_pending of the classifier's partition
consumers and writer-postgres) sampled every second and after the drain. At the
end it checks that every acknowledged point is in PostgreSQL exactly once (count(*) and
count(DISTINCT key) per transport and phase) and says so loudly if not (exit status 3).
Writes result.json, result.md and timeline.png to ``--out``; removes its namespace and database.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from limits import jetstream_limits, pg_limits, web_limits  # noqa: E402
from loads import PhaseLoad, PhaseRecord, run_csv, run_http, run_mqtt, run_ws  # noqa: E402
from report import chart, markdown  # noqa: E402

from tests.e2e.conftest import _drop_database  # noqa: E402
from tests.e2e.fleet_process import FleetProcess  # noqa: E402
from tests.host import cpu_seconds, vm_mib  # noqa: E402
from tests.streams import drop_namespace_at  # noqa: E402
from tributary_contracts import DEFAULT_PARTITIONS  # noqa: E402

TRANSPORTS = ("http", "ws", "mqtt", "csv")
PROFILES = ("devices", "batched")
DEVICE_TRANSPORTS = ("http", "ws", "mqtt")
SHARED_SERVERS = ("nats-server", "postgres", "mosquitto")
MAX_SAMPLES = 3600


# --------------------------------------------------------------------------- /proc and metrics


def server_pids() -> dict[str, list[int]]:
    """pids of the shared local servers by name (PostgreSQL: every process at this moment)."""
    found: dict[str, list[int]] = {name: [] for name in SHARED_SERVERS}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm in found:
                found[comm].append(int(entry.name))
    return found


PG_BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
)
POSTGRES_PIDS = f"""
    SELECT pid FROM pg_stat_activity
    WHERE (datname = current_database() AND pid <> pg_backend_pid())
       OR backend_type IN ({", ".join(f"'{b}'" for b in PG_BACKGROUND)})
"""
BENCH = "bench (load generators)"
SHARED = ("nats-server (shared)", "mosquitto (shared)")
BASELINE_SECONDS = 1.0
POSTGRES = "postgres (this database + background)"

CpuSnapshot = dict[str, dict[int, float]]  # process label → pid → CPU seconds so far


def cpu_snapshot(fleet_pids: dict[str, int], postgres_pids: list[int]) -> CpuSnapshot:
    """CPU seconds of every fleet service, of the bench process and of the servers: PostgreSQL
    only with the processes that work for this run (its database's backends but the bench's
    own, the server's background writers), the shared nats-server and Mosquitto whole."""
    snap = {name: {pid: cpu_seconds(pid)} for name, pid in fleet_pids.items()}
    snap[BENCH] = {os.getpid(): cpu_seconds(os.getpid())}
    servers = server_pids()
    snap[POSTGRES] = {p: cpu_seconds(p) for p in postgres_pids}
    for label in SHARED:
        snap[label] = {p: cpu_seconds(p) for p in servers[label.removesuffix(" (shared)")]}
    return snap


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds each process label used between two snapshots (a process that appeared in
    between counts whole; one that ended in between is lost, /proc keeps nothing of it)."""
    return {
        name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
        for name, pids in after.items()
    }


def metric(url: str, name: str) -> float:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(v for v in values if v == v)  # NaN: a progress entry, not an ack
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --------------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = f"b{uuid.uuid4().hex[:10]}"
        self.spool = tempfile.mkdtemp(prefix="tributary-bench-csv-")
        self.fleet = FleetProcess(
            self.prefix,
            f"{args.postgres_base}/bench_{self.prefix}",
            args.nats_url,
            # The bench's MQTT session need not outlive it on the shared local broker.
            extra_env={
                "MQTT_SESSION_EXPIRY_SECONDS": "60",
                "LOG_LEVEL": "WARNING",
                "SPOOL_DIR": self.spool,
                # Room for the bench's window: the broker then never queues for the gateway
                # (Mosquitto drops beyond max_queued_messages, 1000 by default).
                "MAX_IN_FLIGHT": str(max(2000, args.mqtt_window)),
                # A bench measures capacity, not the rate-limit policy.
                "RATE_LIMIT_ENABLED": "false",
                # Every WebSocket session of the devices profile uses the one admin key.
                "MAX_SESSIONS_PER_KEY": str(max(200, args.device_sources)),
            },
        )
        self.t0 = 0.0
        self.samples: list[dict[str, Any]] = []
        self.phase_label = "idle"
        self.sent: dict[str, int] = {}  # "transport-phase" → points acknowledged
        self.not_available: list[str] = []

    # ------------------------------------------------------------------------------ sampling

    async def lag(self) -> dict[str, int]:
        """Unprocessed messages of the classifier (all its partition consumers) and the writer."""
        from tributary_contracts import CONSUMERS, Namespace, classifier_partition_consumer

        ns = Namespace(self.prefix)
        partitions = int(os.environ.get("BUS_PARTITIONS", DEFAULT_PARTITIONS))
        consumers = {
            "classifier": [classifier_partition_consumer(p) for p in range(partitions)],
            "writer-postgres": [CONSUMERS["writer-postgres"]],
        }
        out = {}
        for name, defs in consumers.items():
            total = 0
            for d in defs:
                try:
                    info = await self.js.consumer_info(d.stream_name(ns), d.durable)
                    total += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
                except Exception:
                    total = -1
                    break
            out[name] = total
        return out

    async def wait_lag_zero(self, deadline: float) -> float:
        """Poll until every consumer's lag is 0 (or ``deadline``); when it was."""
        while time.monotonic() < deadline:
            if all(v == 0 for v in (await self.lag()).values()):
                break
            await asyncio.sleep(0.2)
        return time.monotonic()

    async def raw_seq(self) -> int:
        from tributary_contracts import Namespace
        from tributary_contracts.jetstream import DP_RAW

        info = await self.js.stream_info(Namespace(self.prefix).stream(DP_RAW))
        return int(info.state.last_seq)

    async def sampler(self, stop: asyncio.Event) -> None:
        writer_url = self.fleet.url("writer-postgres")
        last_written, last_t = None, None
        for _ in range(MAX_SAMPLES):
            t = time.monotonic() - self.t0
            written = await asyncio.to_thread(
                metric, writer_url, "writer_postgres_points_written_total"
            )
            rate = (
                (written - last_written) / (t - last_t)
                if last_written is not None and last_t is not None and written == written
                else 0.0
            )
            if rate != rate:  # the previous scrape failed (NaN): no rate for this second
                rate = 0.0
            if written == written:
                last_written, last_t = written, t
            self.samples.append(
                {
                    "t": round(t, 2),
                    "phase": self.phase_label,
                    "rows_per_s": round(rate),
                    "lag": await self.lag(),
                }
            )
            try:
                async with asyncio.timeout(1.0):
                    await stop.wait()
                return
            except TimeoutError:
                pass

    # --------------------------------------------------------------------------------- rows

    async def postgres_pids(self) -> list[int]:
        return [int(r["pid"]) for r in await self.db.fetch(POSTGRES_PIDS)]

    async def count_rows(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM data_points"))

    async def wait_rows(self, target: int, timeout: float = 0.0) -> tuple[int, float]:
        """Poll until ``target`` rows are visible (or the drain timeout); (rows, when)."""
        deadline = time.monotonic() + (timeout or self.args.drain_timeout)
        rows = await self.count_rows()
        while rows < target and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            rows = await self.count_rows()
        return rows, time.monotonic()

    # ------------------------------------------------------------------------------- phases

    def load(self, profile: str, transport: str, phase: str, duration: float) -> PhaseLoad:
        """What ``phase`` (fixed, saturation, drain) of ``profile`` offers on ``transport``."""
        a = self.args
        if profile == "devices":
            return PhaseLoad(
                transport,
                f"{profile}-{phase}",
                duration,
                a.device_rate,
                1,
                a.device_sources,
                a.streams,
                ws_window=a.device_ws_window,
                mqtt_window=a.mqtt_window,
                connections=a.device_connections,
                max_points=a.drain_messages if phase == "drain" else 0,
            )
        return PhaseLoad(
            transport,
            f"{profile}-{phase}",
            duration,
            a.rate,
            1 if transport == "mqtt" else a.batch,
            a.sources,
            a.streams,
            ws_window=a.ws_window,
            mqtt_window=a.mqtt_window,
        )

    async def run_phase(self, load: PhaseLoad) -> dict[str, Any]:
        """One phase; a drain phase pauses the classifier while sending and measures from its
        resumption until every point is a row and every consumer's lag is 0."""
        a = self.args
        transport, phase = load.transport, load.phase
        drain = phase.endswith("drain")
        record = PhaseRecord()
        rows_before = await self.count_rows()
        seq_before = await self.raw_seq()
        self.phase_label = f"{transport}-{phase}"
        pids = self.fleet.child_pids()
        paused = (
            [pid for name, pid in pids.items() if name.startswith("classifier")] if drain else []
        )
        postgres_pids = await self.postgres_pids()
        # What the shared servers use while this run's fleet is idle (other users of the
        # machine's nats-server and Mosquitto), to subtract from the phase's figures.
        idle_before = cpu_snapshot(pids, postgres_pids)
        await asyncio.sleep(BASELINE_SECONDS)
        idle = cpu_delta(idle_before, cpu_snapshot(pids, postgres_pids))
        baseline = {name: idle[name] / BASELINE_SECONDS for name in SHARED}
        cpu_before: CpuSnapshot = {}

        def clock_started() -> None:  # the sessions' set-up is not the points' cost
            cpu_before.update(cpu_snapshot(pids, postgres_pids))

        record.on_start = clock_started
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        try:
            if transport == "csv":
                await run_csv(
                    load, self.port("csv-importer"), self.fleet.admin_key, a.csv_rows, record
                )
            elif transport == "http":
                await run_http(load, self.port("gateway-http"), self.fleet.admin_key, record)
            elif transport == "ws":
                await run_ws(load, self.port("gateway-ws"), self.fleet.admin_key, record)
            else:
                await run_mqtt(
                    load, self.prefix, self.fleet.url("gateway-mqtt") + "/metrics", record
                )
        finally:
            for pid in paused:
                os.kill(pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        send_seconds = record.send_done - record.started
        cpu_sent = cpu_delta(cpu_before, cpu_snapshot(pids, await self.postgres_pids()))
        seq_after = await self.raw_seq()
        backlog = await self.lag()
        timeout = max(a.drain_timeout, 240.0) if drain else a.drain_timeout
        rows, last_row_at = await self.wait_rows(rows_before + record.points, timeout)
        lag_zero_at = await self.wait_lag_zero(time.monotonic() + (30 if drain else 0))
        cpu_stored = cpu_delta(cpu_before, cpu_snapshot(pids, await self.postgres_pids()))
        stored_seconds = max(last_row_at, lag_zero_at) - record.started
        lag_after = await self.lag()
        self.phase_label = "drain"
        self.sent[f"{transport}-{phase}"] = record.points
        latencies = [lat for _, lat, _ in record.acks]
        in_phase = [s for s in self.samples if s["phase"] == f"{transport}-{phase}"]
        drained = {}
        if drain:
            seconds = max(last_row_at, lag_zero_at) - resumed_at
            drained = {
                "drain_backlog": backlog,
                "drain_seconds": round(seconds, 2),
                "drain_points_per_s": round((rows - rows_before) / seconds),
            }
        return {
            "transport": transport,
            "phase": phase,
            **drained,
            "t_start": round(record.started - self.t0, 2),
            "t_end": round(record.send_done - self.t0, 2),
            "offered_points_per_s": load.rate if load.open_loop else float("nan"),
            "points_acked": record.points,
            "acks": len(record.acks),
            "errors": record.errors,
            "send_seconds": round(send_seconds, 2),
            "acked_points_per_s": round(record.points / send_seconds),
            "acks_per_s": round(len(record.acks) / send_seconds),
            "rows_stored": rows - rows_before,
            "e2e_seconds": round(last_row_at - record.started, 2),
            "e2e_points_per_s": round((rows - rows_before) / (last_row_at - record.started)),
            "dp_raw_msgs_per_s": round((seq_after - seq_before) / send_seconds),
            "ack_ms": {
                f"p{q}": round(percentile(latencies, q / 100) * 1000, 2) for q in (50, 95, 99)
            },
            "ack_meaning": {
                "http": "202 reply (after the JetStream PubAck)",
                "ws": "ack message (after the JetStream PubAck)",
                "mqtt": "broker PUBACK to the producer (the gateway acks the broker later)",
                "csv": "one job: upload → status completed (every PubAck in); one sample",
            }[transport],
            "cpu_percent": {
                name: round(100 * cpu / send_seconds, 1) for name, cpu in cpu_sent.items()
            },
            "cpu_us_per_point": {
                name: round(1e6 * cpu / record.points, 1) if record.points else float("nan")
                for name, cpu in cpu_stored.items()
            },
            "cpu_window_seconds": round(stored_seconds, 2),
            "shared_idle_percent": {name: round(100 * cpu, 1) for name, cpu in baseline.items()},
            "cpu_us_per_point_less_idle": {
                name: round(
                    1e6 * (cpu_stored[name] - baseline[name] * stored_seconds) / record.points, 1
                )
                if record.points
                else float("nan")
                for name in SHARED
            },
            "lag_max": max(
                (max(s["lag"].values()) for s in in_phase), default=max(lag_after.values())
            ),
            "lag_after": max(lag_after.values()),
            "ack_timeline": record.acks,
        }

    def port(self, service: str) -> int:
        return int(self.fleet.url(service).rsplit(":", 1)[1])

    # ------------------------------------------------------------------------- verification

    async def verify(self) -> dict[str, Any]:
        rows = await self.db.fetch(
            """
            SELECT regexp_replace(source_id, '^bench-(.*)-[0-9]+$', '\\1') AS grp,
                   count(*) AS rows,
                   count(DISTINCT (domain, source_id, stream_id, time)) AS keys,
                   count(DISTINCT transport) AS transports
            FROM data_points GROUP BY 1
            """
        )
        found = {r["grp"]: r for r in rows}
        groups: dict[str, Any] = {}
        for grp in sorted(set(found) | set(self.sent)):
            r = found.get(grp)
            sent = self.sent.get(grp, 0)
            n, keys = (int(r["rows"]), int(r["keys"])) if r else (0, 0)
            groups[grp] = {
                "sent": sent,
                "rows": n,
                "distinct_keys": keys,
                "lost": max(0, sent - keys),
                "extra": max(0, n - sent),
                "ok": n == sent == keys,
            }
        duplicates = metric(
            self.fleet.url("writer-postgres"), "writer_postgres_points_duplicate_total"
        )
        return {
            "ok": all(g["ok"] for g in groups.values()),
            "groups": groups,
            "writer_duplicates_absorbed": duplicates,
        }

    # ---------------------------------------------------------------------------------- run

    async def run(self) -> dict[str, Any]:
        import nats

        a = self.args
        # Ctrl-C or SIGTERM cancel the run; its finally stops the fleet and drops the namespace
        # and database (a KeyboardInterrupt raised in the loop would skip that).
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        loadavg_start = os.getloadavg()
        stop = asyncio.Event()
        sampler: asyncio.Task[None] | None = None
        self.nc = self.db = None
        phases: list[dict[str, Any]] = []
        limits: dict[str, float] = {}
        try:
            await asyncio.to_thread(self.fleet.start)
            self.t0 = time.monotonic()
            self.nc = await nats.connect(a.nats_url)
            self.js = self.nc.jetstream()
            self.db = await asyncpg.connect(self.fleet.postgres_dsn)
            sampler = asyncio.create_task(self.sampler(stop))
            # Warm up (connections, consumers, the writer's pool), then measure.
            self.phase_label = "warmup"
            # verified at the end, not reported
            await self.run_phase(self.load("batched", "http", "warmup", 2.0))
            self.phase_label = "limits"
            limits |= await pg_limits(self.fleet.postgres_dsn, a.limit_rows, 5000, a.limit_seconds)
            limits |= await jetstream_limits(
                a.nats_url, self.prefix, a.limit_rows, 512, a.limit_seconds
            )
            limits |= await web_limits(
                (a.sources, a.batch, a.streams),
                (a.device_connections, a.device_sources, a.device_ws_window),
                a.limit_seconds,
            )
            for profile in a.profiles:
                transports = (
                    [t for t in a.transports if t in DEVICE_TRANSPORTS]
                    if profile == "devices"
                    else a.transports
                )
                for transport in transports:
                    # A CSV job has no offered rate: it is imported as fast as it can be.
                    wanted = ("saturation",) if transport == "csv" else ("fixed", "saturation")
                    for phase in wanted:
                        print(f"bench: {profile} {transport} {phase} …", flush=True)
                        load = self.load(profile, transport, phase, a.duration)
                        phases.append(await self.run_phase(load))
                if profile == "devices" and a.drain_messages and "mqtt" in a.transports:
                    print(f"bench: devices drain of {a.drain_messages:,} messages …", flush=True)
                    load = self.load(profile, "mqtt", "drain", 600.0)
                    phases.append(await self.run_phase(load))
            verification = await self.verify()
            memory = {
                name: round(vm_mib(pid).get("VmHWM", float("nan")), 1)
                for name, pid in self.fleet.child_pids().items()
            }
        finally:
            stop.set()
            if sampler is not None:
                async with asyncio.timeout(10):
                    await sampler
            if self.db is not None:
                await self.db.close()
            if self.nc is not None:
                await self.nc.close()
            self.fleet.stop()
            await drop_namespace_at(a.nats_url, self.prefix)
            await _drop_database(f"{a.postgres_base}/postgres", self.fleet.postgres_dsn)
            shutil.rmtree(self.spool, ignore_errors=True)
            # deploy/local/fleet.py keeps each namespace's admin key; this namespace is gone.
            (ROOT / ".tributary" / f"admin-key-{self.prefix}").unlink(missing_ok=True)
        return self.assemble(started_at, loadavg_start, limits, phases, verification, memory)

    def assemble(
        self,
        started_at: str,
        loadavg_start: tuple[float, float, float],
        limits: dict[str, float],
        phases: list[dict[str, Any]],
        verification: dict[str, Any],
        memory: dict[str, float],
    ) -> dict[str, Any]:
        a = self.args
        acks_timeline = []
        for p in phases:
            buckets: dict[int, list[tuple[float, int]]] = {}
            for t, lat, pts in p.pop("ack_timeline"):
                buckets.setdefault(int(t - self.t0), []).append((lat, pts))
            for second, entries in sorted(buckets.items()):
                lats = [lat for lat, _ in entries]
                acks_timeline.append(
                    {
                        "t": second + 0.5,
                        "points": sum(n for _, n in entries),
                        "p50_ms": round(percentile(lats, 0.5) * 1000, 2),
                        "p99_ms": round(percentile(lats, 0.99) * 1000, 2),
                    }
                )
        return {
            "started_at": started_at,
            "machine": machine(a, loadavg_start),
            "options": {k: v for k, v in vars(a).items() if k not in ("postgres_base",)},
            "options_line": (
                f"--duration {a.duration:g} --profiles {','.join(a.profiles)} "
                f"--device-sources {a.device_sources} --device-rate {a.device_rate:g} "
                f"--device-connections {a.device_connections} "
                f"--device-ws-window {a.device_ws_window} --drain-messages {a.drain_messages} "
                f"--rate {a.rate:g} --batch {a.batch} "
                f"--sources {a.sources} --streams {a.streams} --transports "
                f"{','.join(a.transports)} --ws-window {a.ws_window} "
                f"--mqtt-window {a.mqtt_window} --csv-rows {a.csv_rows} "
                f"--limit-seconds {a.limit_seconds:g}"
            ),
            "not_available": self.not_available,
            "limits": limits,
            "phases": phases,
            "ratios": ratios(phases, limits),
            "verification": verification,
            "peak_rss_mib": memory,
            "timeline": {"samples": self.samples, "acks": acks_timeline},
        }


EMPTY_APP_SINGLE = {
    "http": (
        "requests/s",
        "starlette_empty_post_1pt_req_per_s",
        "starlette_empty_post_1pt_server_us",
    ),
    "ws": (
        "messages/s acked",
        "starlette_ws_answer_1pt_msgs_per_s",
        "starlette_ws_answer_1pt_server_us",
    ),
}
"""Per transport, what a devices phase is set against in ``limits.web_limits``: (figure, the
empty app's rate, its server's CPU µs per answer), one reading per request/message."""


def ratios(phases: list[dict[str, Any]], limits: dict[str, float]) -> list[dict[str, Any]]:
    out = []

    def add(figure: str, value: float, limit: str) -> None:
        if limits.get(limit):
            out.append(
                {
                    "figure": figure,
                    "value": value,
                    "limit": limit,
                    "limit_value": limits[limit],
                    "ratio": value / limits[limit],
                }
            )

    for p in phases:
        if not p["phase"].endswith("saturation"):
            continue
        t = f"{p['transport']} {p['phase'].removesuffix('-saturation')}"
        add(f"{t} e2e points/s to rows", p["e2e_points_per_s"], "pg_keyed_copy_rows_per_s")
        add(f"{t} e2e points/s to rows", p["e2e_points_per_s"], "pg_copy_rows_per_s")
        add(f"{t} DP_RAW msgs/s published", p["dp_raw_msgs_per_s"], "js_publish_async_msgs_per_s")
        add(
            f"{t} DP_RAW msgs/s (classifier pulls these)",
            p["dp_raw_msgs_per_s"],
            "js_fetch_ack_msgs_per_s",
        )
        single = EMPTY_APP_SINGLE.get(p["transport"])
        if single and p["phase"].startswith("devices"):
            label, rate, server_us = single
            add(f"{t} {label}", p["acks_per_s"], rate)
            gateway = f"gateway-{p['transport']}"
            add(f"{t} {gateway} CPU µs per reading", p["cpu_us_per_point"][gateway], server_us)
        elif p["transport"] == "http":
            add(f"{t} requests/s", p["acks_per_s"], "starlette_empty_post_req_per_s")
        if p["transport"] == "mqtt":
            add(f"{t} messages/s acked", p["acks_per_s"], "js_publish_async_msgs_per_s")
    return out


def machine(args: argparse.Namespace, loadavg_start: tuple[float, float, float]) -> dict[str, Any]:
    def run(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    meminfo = Path("/proc/meminfo").read_text().split()
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgres": run(["psql", args.postgres_base, "-Atc", "SHOW server_version"]).join(
            ["PostgreSQL ", ""]
        ),
        "nats_server": run(["nats-server", "--version"]).removeprefix("nats-server: "),
        "mosquitto": run(["mosquitto", "-h"]),
        "loadavg_start": [round(x, 2) for x in loadavg_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "commit": run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def csv_available() -> bool:
    try:
        return importlib.util.find_spec("csv_importer.__main__") is not None
    except ModuleNotFoundError:
        return False


def main() -> None:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a run is stuck
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument(
        "--profiles",
        default="devices,batched",
        help=f"comma-separated, of {','.join(PROFILES)}",
    )
    parser.add_argument(
        "--device-sources", type=int, default=2000, help="devices profile: source ids"
    )
    parser.add_argument(
        "--device-rate",
        type=float,
        default=5000.0,
        help="devices profile: offered points/s in total in the fixed phase",
    )
    parser.add_argument(
        "--device-connections",
        type=int,
        default=200,
        help="devices profile: HTTP keep-alive connections the sources share",
    )
    parser.add_argument(
        "--device-ws-window",
        type=int,
        default=2,
        help="devices profile: unacked messages per WebSocket session at saturation",
    )
    parser.add_argument(
        "--drain-messages",
        type=int,
        default=100_000,
        help="devices profile: backlog of single-reading MQTT messages the drain phase clears "
        "(0: no drain phase)",
    )
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="offered points/s in total in the fixed phase"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="points per HTTP request / WebSocket message (MQTT: 1)",
    )
    parser.add_argument(
        "--sources",
        type=int,
        default=4,
        help="HTTP connections / WebSocket sessions / MQTT source ids",
    )
    parser.add_argument("--streams", type=int, default=10, help="stream ids per source")
    parser.add_argument(
        "--csv-rows", type=int, default=10_000, help="rows of the CSV job (points = rows × streams)"
    )
    parser.add_argument(
        "--transports",
        default="http,ws,mqtt,csv",
        help=f"comma-separated, of {','.join(TRANSPORTS)}",
    )
    parser.add_argument(
        "--ws-window",
        type=int,
        default=100,
        help="unacked messages per WebSocket session at saturation",
    )
    parser.add_argument(
        "--mqtt-window",
        type=int,
        default=10_000,
        help="MQTT messages not yet acked by the gateway (its MAX_IN_FLIGHT is set to this)",
    )
    parser.add_argument(
        "--limit-seconds",
        type=float,
        default=3.0,
        help="longest time of each physical-limit measurement",
    )
    parser.add_argument(
        "--limit-rows",
        type=int,
        default=100_000,
        help="rows / messages of each physical-limit measurement",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the last rows after a phase",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: /tmp/tributary-bench-<time>)",
    )
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument(
        "--postgres-base",
        default="postgresql://postgres@127.0.0.1:5432",
        help="server DSN without database; a fresh database is used",
    )
    args = parser.parse_args()
    args.profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if set(args.profiles) - set(PROFILES):
        parser.error(f"unknown profiles {args.profiles}; expected some of {PROFILES}")
    wanted = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = set(wanted) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transports {sorted(unknown)}; expected some of {TRANSPORTS}")
    not_available = []
    if "csv" in wanted and not csv_available():
        not_available.append("csv (csv-importer has no src/csv_importer/__main__.py)")
        wanted.remove("csv")
    args.transports = wanted
    out: Path = args.out or Path(f"/tmp/tributary-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    bench.not_available = not_available
    try:
        # uvloop: the load generators in this process cost the fleet's machine less CPU.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(bench.run())
    except asyncio.CancelledError:
        print("bench: interrupted; fleet stopped, namespace and database removed", file=sys.stderr)
        sys.exit(130)
    result["options"]["out"] = str(out)
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    table = markdown(result)
    (out / "result.md").write_text(table)
    chart(result, out / "timeline.png")
    print(table)
    print(f"bench: wrote {out}/result.json, result.md, timeline.png")
    if not result["verification"]["ok"]:
        bad = {k: g for k, g in result["verification"]["groups"].items() if not g["ok"]}
        print(f"bench: verification failed for {bad}", file=sys.stderr)
        print(
            "bench: !!! DATA LOST OR DOUBLED: the acknowledged points are not each exactly one "
            "row; the throughput figures above are not valid !!!",
            file=sys.stderr,
        )
        sys.exit(3)


if __name__ == "__main__":
    main()
