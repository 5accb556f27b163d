"""Start ``deploy/local/fleet.py`` as a process for a test or a benchmark, and stop it again."""

from __future__ import annotations

import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.mqtt import local_broker
from tributary_contracts.ports import SERVICE_PORTS

ROOT = Path(__file__).resolve().parents[2]
REPLICA_PORT_STEP = 1000  # deploy/local/fleet.py: replica i of a service listens on port + i*1000


def free_port_offset() -> int:
    """An offset that puts every service port on a free port (bounded tries).

    Ports stay below 32768, where Linux starts handing out ephemeral ports to outgoing
    connections (one of those once took a port between this check and the service's bind)."""
    for _ in range(50):
        offset = random.randrange(2_000, 23_000, 100)
        ports = [p + offset + i * REPLICA_PORT_STEP for p in SERVICE_PORTS.values() for i in (0, 1)]
        if all(_port_free(p) for p in ports):
            return offset
    raise RuntimeError("no free port range found")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class FleetProcess:
    bus_prefix: str
    postgres_dsn: str
    nats_url: str
    skip: tuple[str, ...] = ()
    replicas: dict[str, int] = field(default_factory=dict)  # service → count (fleet --replicas)
    extra_env: dict[str, str] = field(default_factory=dict)
    port_offset: int = field(default_factory=free_port_offset)
    admin_key: str = ""
    lines: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None
    _queue: queue.Queue[str] = field(default_factory=queue.Queue)

    def url(self, service: str, replica: int = 0) -> str:
        port = SERVICE_PORTS[service] + self.port_offset + replica * REPLICA_PORT_STEP
        return f"http://127.0.0.1:{port}"

    def service_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "NATS_URL": self.nats_url,
            "POSTGRES_DSN": self.postgres_dsn,
            "BUS_PREFIX": self.bus_prefix,
            "LOG_FORMAT": "json",
            "MQTT_URL": f"mqtt://127.0.0.1:{local_broker()[0]}",  # fleet.py adds the login
            **self.extra_env,
        }

    def start(self, timeout: float = 90.0) -> FleetProcess:
        self._spawn()
        ready = self._read_until(time.monotonic() + timeout, need_ready=True)
        if not (ready and self.admin_key):
            self.stop()
            raise RuntimeError("fleet did not become ready:\n" + "".join(self.lines[-60:]))
        return self

    def _spawn(self) -> None:
        cmd = [
            sys.executable,
            str(ROOT / "deploy/local/fleet.py"),
            "--bus-prefix",
            self.bus_prefix,
            "--port-offset",
            str(self.port_offset),
        ]
        for name in self.skip:
            cmd += ["--skip", name]
        for name, count in self.replicas.items():
            cmd += ["--replicas", f"{name}={count}"]
        self._proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.service_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read_until(self, deadline: float, need_ready: bool) -> bool:
        """Follow fleet.py's output until it printed the admin key (and, with ``need_ready``,
        "Tributary fleet ready"), exited, or ``deadline`` passed; whether it said ready."""
        assert self._proc is not None
        ready = False
        while time.monotonic() < deadline and not (self.admin_key and (ready or not need_ready)):
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._proc.poll() is not None:
                    break
                continue
            ready = ready or line.startswith("Tributary fleet ready")
            if line.startswith("admin key: "):
                self.admin_key = line.removeprefix("admin key: ").strip()
        return ready

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)
            self._queue.put(line)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return self._proc.returncode if self._proc else None
        self._proc.send_signal(signal.SIGINT)
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait(timeout=10)

    def child_pids(self) -> dict[str, int]:
        """Service name → pid of the fleet's children (for memory figures)."""
        assert self._proc is not None
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self._proc.pid and b"-m" in cmdline:
                module = cmdline[cmdline.index(b"-m") + 1].decode()
                found[module.replace("_", "-")] = int(entry.name)
        return found
