"""Run the whole fleet locally, without Docker: one process per service.

    .venv/bin/python deploy/local/fleet.py [--bus-prefix P] [--port-offset N] [--replicas S=N]

Ensures the JetStream objects, creates an admin API key on first run (kept in .tributary/),
starts every service with its output prefixed by its name, waits until each answers ``/health``,
prints the URLs and the key, restarts a service that dies after it was healthy, and stops
everything cleanly on Ctrl-C or SIGTERM. A service that cannot start (its package is missing or
does not import, it refuses its settings, or it exits before answering ``/health``) stops the
fleet with an error naming it. Settings reach the services through the environment (NATS_URL,
POSTGRES_DSN, SINK_ROUTES, …), exactly as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, CONSUMERS, ensure_jetstream
from tributary_contracts.ports import SERVICE_PORTS
from tributary_operator.mqtt_credentials import MqttCredentials, broker_dir
from tributary_operator.settings import OperatorSettings
from tributary_runtime.bus import connect_nats

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = ROOT / ".tributary"
COLOURS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m", "\033[37m"]
RESET = "\033[0m"


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int
    needs_env: str | None = None  # started only when this variable is set (its database)
    replica: int = 0  # index among the service's replicas; replica i listens on port + i*1000
    env: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return self.name if self.replica == 0 else f"{self.name}#{self.replica}"


REPLICA_PORT_STEP = 1000


def replica_env(name: str, index: int, count: int, prefix: str = "") -> dict[str, str]:
    """What differs between replicas of one service: the classifier's replica index (replica k
    of R owns the bus partitions p with p % R == k), the MQTT
    gateway's client id (two MQTT clients with one id disconnect each other; a stable id per
    replica lets a restarted replica resume its broker session). Replica 0 keeps the default."""
    if name == "classifier":
        return {"CLASSIFIER_REPLICAS": str(count), "CLASSIFIER_REPLICA": str(index)}
    if name == "gateway-mqtt" and index > 0:
        return {"MQTT_CLIENT_ID": f"tributary-gateway-mqtt{'-' + prefix if prefix else ''}-{index}"}
    return {}


def expand_replicas(
    services: list[Service], replicas: dict[str, int], prefix: str = ""
) -> list[Service]:
    """Each service ``replicas[name]`` times (default once), replica i on port + i*1000."""
    out = []
    for s in services:
        count = replicas.get(s.name, 1)
        for i in range(count):
            env = tuple(replica_env(s.name, i, count, prefix).items()) if count > 1 else ()
            port = s.port + i * REPLICA_PORT_STEP
            out.append(Service(s.name, s.module, port, s.needs_env, replica=i, env=env))
    return out


def ops_urls_env(services: list[Service], env: dict[str, str], offset: int) -> dict[str, str]:
    """Where gateway-http's legacy ops endpoints find the fleet's gateway-mqtt replicas and
    writers (``MQTT_GATEWAY_URLS``, ``WRITER_URLS``), unless the environment says already."""
    def url(s: Service) -> str:
        return f"http://127.0.0.1:{s.port + offset}"

    out = {}
    if "MQTT_GATEWAY_URLS" not in env:
        mqtt = [url(s) for s in services if s.name == "gateway-mqtt"]
        out["MQTT_GATEWAY_URLS"] = json.dumps(mqtt)
    if "WRITER_URLS" not in env:
        writers = {s.label: url(s) for s in services if s.name.startswith("writer-")}
        out["WRITER_URLS"] = json.dumps(writers)
    return out


def with_mqtt_logins(
    services: list[Service], env: dict[str, str], creds: MqttCredentials
) -> list[Service]:
    """When the repository's broker runs on ``creds``' directory, give each gateway-mqtt replica
    its own broker user, named like its client id (the broker makes a client's id its user
    name), reading its topic prefix. The login is kept for later runs of the same fleet (a
    namespaced fleet's until its sessions have expired). An
    anonymous broker (no repository config running) gets no credentials."""
    if creds.broker_pid() is None:
        return services
    prefix = env.get("BUS_PREFIX", "")
    topic_prefix = env.get("MQTT_TOPIC_PREFIX", prefix)
    default_id = "tributary-gateway-mqtt" + (f"-{prefix}" if prefix else "")
    remove_after = None  # a namespaced (test) fleet's users go once their sessions expired
    if prefix:
        expiry = float(env.get("MQTT_SESSION_EXPIRY_SECONDS", 7 * 24 * 3600))
        remove_after = time.time() + expiry + 3600
    out = []
    for s in services:
        if s.name == "gateway-mqtt":
            name = dict(s.env).get("MQTT_CLIENT_ID", default_id)
            password = creds.kept_login(name, "gateway", topic_prefix, remove_after)
            login = (("MQTT_CLIENT_ID", name), ("MQTT_USERNAME", name), ("MQTT_PASSWORD", password))
            s = Service(s.name, s.module, s.port, s.needs_env, s.replica, (*s.env, *login))
        out.append(s)
    return out


def parse_replicas(values: list[str]) -> dict[str, int]:
    """``["writer-postgres=2"]`` → ``{"writer-postgres": 2}``; one clear error otherwise."""
    known = {s.name for s in SERVICES}
    out: dict[str, int] = {}
    for value in values:
        name, _, count = value.partition("=")
        if name not in known or not count.isdigit() or not 1 <= int(count) <= 8:
            raise ValueError(
                f"--replicas expects SERVICE=N, a known service and N in 1..8; got {value!r}"
            )
        out[name] = int(count)
    return out


# Every service of the fleet, in start order (ports: tributary_contracts.ports, the one table).
SERVICES = (
    Service("writer-postgres", "writer_postgres", SERVICE_PORTS["writer-postgres"]),
    Service(
        "writer-sqlserver",
        "writer_sqlserver",
        SERVICE_PORTS["writer-sqlserver"],
        needs_env="MSSQL_DSN",
    ),
    Service("classifier", "classifier", SERVICE_PORTS["classifier"]),
    Service("gateway-http", "gateway_http", SERVICE_PORTS["gateway-http"]),
    Service("gateway-ws", "gateway_ws", SERVICE_PORTS["gateway-ws"]),
    Service("csv-importer", "csv_importer", SERVICE_PORTS["csv-importer"]),
    Service("gateway-mqtt", "gateway_mqtt", SERVICE_PORTS["gateway-mqtt"]),
    # A batch job: runs every ML_INTERVAL_SECONDS (60) and serves /health like the others.
    Service("ml-batch", "ml_batch", SERVICE_PORTS["ml-batch"]),
    # The read side: query API and web console, on PostgreSQL's read-only role.
    Service("console", "console", SERVICE_PORTS["console"]),
)


def reader_dsn(dsn: str) -> str:
    """``dsn`` as the read-only role ``tributary_reader`` (writer-postgres migration 0007), the
    console's POSTGRES_READ_DSN; a password in ``dsn`` is not carried over."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"tributary_reader@{host}"))


def import_problem(service: Service) -> str | None:
    """Why ``service`` cannot be started from this environment, or None. Finding
    ``<module>.__main__`` imports the service's package, so a broken install shows here."""
    try:
        spec = importlib.util.find_spec(f"{service.module}.__main__")
    except Exception as exc:  # the package itself failed to import
        return f"{service.name}: package {service.module} does not import: {exc!r}"
    if spec is None:
        return f"{service.name}: {service.module}.__main__ not found (is the service installed?)"
    return None


def exit_problem(label: str, code: int, was_healthy: bool) -> str | None:
    """Why a service that exited with ``code`` stops the fleet, or None to restart it: a service
    that never answered ``/health`` failed to start, and restarting would hide that."""
    if code == 2:
        return f"{label} refused its settings (exit 2)"
    if not was_healthy:
        return f"{label} exited with {code} before answering /health (see its output above)"
    return None


async def prepare_bus(settings: OperatorSettings) -> str:
    """Create streams, buckets and consumers; return the local admin key (made on first run)."""
    nc = await connect_nats(settings, "tributary-fleet", reconnect_attempts=5)
    try:
        js = nc.jetstream()
        ns = settings.namespace
        await ensure_jetstream(
            js, ns, consumers=tuple(CONSUMERS), replicas=settings.jetstream_replicas
        )
        store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
        key_file = STATE_DIR / f"admin-key{'-' + ns.prefix if ns.prefix else ''}"
        if key_file.exists():
            key = key_file.read_text().strip()
            record = await store.lookup(key)
            if record is not None and record.role == Role.ADMIN:
                return key
        key = await store.create(Role.ADMIN, name="local fleet admin")
        STATE_DIR.mkdir(exist_ok=True)
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        return key
    finally:
        await nc.close()


class Fleet:
    def __init__(self, services: list[Service], env: dict[str, str], port_offset: int) -> None:
        self.services = services
        self.env = env
        self.port_offset = port_offset
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.healthy: set[str] = set()  # labels that answered /health at least once
        self.failed = asyncio.Event()
        self.failure = ""

    def port(self, service: Service) -> int:
        return service.port + self.port_offset

    async def _pump(self, name: str, colour: str, stream: asyncio.StreamReader) -> None:
        prefix = f"{colour}{name:>16}{RESET} | " if sys.stdout.isatty() else f"{name:>16} | "
        while line := await stream.readline():
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    async def _run(self, service: Service, colour: str) -> None:
        """Keep one service running until the fleet stops (restart with backoff if it dies)."""
        backoff = 1.0
        while not self.stopping:
            env = {**self.env, **dict(service.env), "PORT": str(self.port(service))}
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                service.module,
                env=env,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            self.procs[service.label] = proc
            assert proc.stdout is not None
            started = time.monotonic()
            await self._pump(service.label, colour, proc.stdout)
            code = await proc.wait()
            if self.stopping:
                return
            problem = exit_problem(service.label, code, service.label in self.healthy)
            if problem is not None:
                self.failure = problem
                self.failed.set()
                return
            backoff = 1.0 if time.monotonic() - started > 30 else min(backoff * 2, 30)
            print(f"fleet: {service.label} exited with {code}; restarting in {backoff:.0f}s")
            await asyncio.sleep(backoff)

    async def wait_healthy(self, timeout: float = 60.0) -> list[str]:
        """Names of services that did not answer /health within ``timeout``."""
        deadline = time.monotonic() + timeout
        pending = list(self.services)
        while pending and time.monotonic() < deadline and not self.failed.is_set():
            still = []
            for service in pending:
                try:
                    url = f"http://127.0.0.1:{self.port(service)}/health"
                    await asyncio.to_thread(urllib.request.urlopen, url, timeout=1)
                    self.healthy.add(service.label)
                except OSError:
                    still.append(service)
            pending = still
            if pending:
                await asyncio.sleep(0.3)
        return [s.label for s in pending]

    async def stop(self) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                print(f"fleet: {name} did not stop in 15s; killing it")
                proc.kill()
                await proc.wait()


async def main_async(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.bus_prefix is not None:
        env["BUS_PREFIX"] = args.bus_prefix
    env.setdefault("LOG_FORMAT", "console")
    env.setdefault("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/tributary")
    env.setdefault("POSTGRES_READ_DSN", reader_dsn(env["POSTGRES_DSN"]))
    replicas = env.get("JETSTREAM_REPLICAS")
    settings = OperatorSettings(
        nats_url=env.get("NATS_URL", "nats://127.0.0.1:4222"),
        bus_prefix=env.get("BUS_PREFIX", ""),
        jetstream_replicas=int(replicas) if replicas else None,
    )
    key = await prepare_bus(settings)

    unknown = set(args.skip) - {s.name for s in SERVICES}
    if unknown:
        print(f"fleet: --skip names unknown services: {sorted(unknown)}", file=sys.stderr)
        return 2
    try:
        replicas = parse_replicas(args.replicas)
    except ValueError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    services = [s for s in SERVICES if s.name not in args.skip]
    problems = [p for s in services if (p := import_problem(s)) is not None]
    if problems:
        print("fleet: cannot start " + "; ".join(problems), file=sys.stderr)
        return 1
    for s in [s for s in services if s.needs_env and not env.get(s.needs_env)]:
        print(f"fleet: {s.name} not started: {s.needs_env} is not set")
        services.remove(s)
    services = expand_replicas(
        services,
        replicas,
        env.get("BUS_PREFIX", ""),
    )
    env.update(ops_urls_env(services, env, args.port_offset))
    mqtt_creds = MqttCredentials(broker_dir(env, ROOT))
    services = with_mqtt_logins(services, env, mqtt_creds)
    fleet = Fleet(services, env, args.port_offset)
    # The console's fleet page scrapes the services this runner started, at their ports.
    env.setdefault(
        "FLEET_SERVICES",
        ",".join(
            f"{s.label}=http://127.0.0.1:{fleet.port(s)}" for s in services if s.name != "console"
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners = [
        asyncio.create_task(fleet._run(s, COLOURS[i % len(COLOURS)]))
        for i, s in enumerate(services)
    ]
    late = await fleet.wait_healthy()
    if fleet.failed.is_set():
        print(f"fleet: cannot start {fleet.failure}; stopping", file=sys.stderr, flush=True)
        await fleet.stop()
        for task in runners:
            task.cancel()
        return 1
    gateway = next((s for s in services if s.label == "gateway-http"), None)
    lines = ["", "Tributary fleet " + ("ready" if not late else f"started; not healthy: {late}")]
    lines += [f"  {s.label:<16} http://127.0.0.1:{fleet.port(s)}/health" for s in services]
    lines.append(f"  PostgreSQL       {env['POSTGRES_DSN']}")
    console = next((s for s in services if s.label == "console"), None)
    if console:
        lines.append(
            f"  console          http://127.0.0.1:{fleet.port(console)}/console/ "
            "(log in with the admin key)"
        )
    lines.append(f"admin key: {key}")
    if gateway:
        lines.append(
            f"try: curl -X POST http://127.0.0.1:{fleet.port(gateway)}/ingest/data "
            f"-H 'X-API-Key: {key}' -H 'Content-Type: application/json' "
            "-d @deploy/local/example.json"
        )
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)
    await asyncio.wait(
        [asyncio.create_task(stop.wait()), asyncio.create_task(fleet.failed.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    if fleet.failed.is_set():
        print(f"fleet: {fleet.failure}; stopping", file=sys.stderr, flush=True)
    print("fleet: stopping", flush=True)
    await fleet.stop()
    for task in runners:
        task.cancel()
    print("fleet: stopped", flush=True)
    return 1 if fleet.failed.is_set() else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bus-prefix", default=None, help="namespace for subjects/streams/buckets")
    parser.add_argument("--port-offset", type=int, default=0, help="added to every service port")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="SERVICE",
        help="do not start this service (repeatable), e.g. to run it by hand",
    )
    parser.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="SERVICE=N",
        help="run N replicas of SERVICE (replica i: port + i*1000); writers share their durable, "
        "classifier replicas split the bus partitions",
    )
    try:
        sys.exit(asyncio.run(main_async(parser.parse_args())))
    except Exception as exc:  # e.g. NATS unreachable: one clear line, not a traceback
        print(f"fleet: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
