"""A local 3-node NATS cluster of real ``nats-server`` processes on loopback, for the scale-out
test: private client and route ports, store dirs in a temp dir, routes between every pair.

The same shape as deploy/k8s (3 nodes, JetStream, one cluster name); ``sync_interval`` is left
out because the nats-server 2.9 shipped with Debian refuses it (see deploy/README.md).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports below the ephemeral range (bounded tries)."""
    import random

    ports: list[int] = []
    for _ in range(500):
        port = random.randrange(14_000, 30_000)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports for the NATS cluster")


@dataclass
class NatsNode:
    name: str
    client_port: int
    route_port: int
    store_dir: Path
    config_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class NatsCluster:
    """Three nats-server processes forming cluster ``name`` with JetStream on each."""

    workdir: Path
    name: str = "tributary-test"
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Comma-separated URLs, as services read ``NATS_URL``."""
        return ",".join(n.url for n in self.nodes)

    def start(self) -> NatsCluster:
        ports = free_ports(2 * self.size)
        for i in range(self.size):
            name = f"n{i + 1}"
            node = NatsNode(
                name=name,
                client_port=ports[2 * i],
                route_port=ports[2 * i + 1],
                store_dir=self.workdir / name / "jetstream",
                config_file=self.workdir / name / "nats.conf",
                log_file=self.workdir / name / "nats.log",
            )
            node.store_dir.mkdir(parents=True)
            self.nodes.append(node)
        for node in self.nodes:
            routes = ", ".join(
                f'"nats-route://127.0.0.1:{other.route_port}"'
                for other in self.nodes
                if other is not node
            )
            node.config_file.write_text(
                f'server_name: "{node.name}"\n'
                f"listen: 127.0.0.1:{node.client_port}\n"
                "jetstream {\n"
                f'  store_dir: "{node.store_dir}"\n'
                "  max_memory_store: 64MB\n"
                "  max_file_store: 2GB\n"
                "}\n"
                "cluster {\n"
                f'  name: "{self.name}"\n'
                f"  listen: 127.0.0.1:{node.route_port}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            self._spawn(node)
        return self

    def _spawn(self, node: NatsNode) -> None:
        log = node.log_file.open("ab")
        node.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(node.config_file)], stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str) -> None:
        """SIGKILL one node: no shutdown, no flush (the harshest failure of a node)."""
        node = self.node(name)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=10)

    def restart(self, name: str) -> None:
        self._spawn(self.node(name))

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=5)



async def wait_for_jetstream(url: str, timeout: float = 30.0) -> None:
    """Until the cluster has a JetStream meta leader (account info answers), bounded."""
    import nats

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(url.split(","), connect_timeout=2, max_reconnect_attempts=1)
        except Exception as exc:  # a node not listening yet
            last = exc
        else:
            try:
                await nc.jetstream().account_info()
                return
            except Exception as exc:  # no meta leader elected yet
                last = exc
            finally:
                await nc.close()
        await _sleep(0.5)
    raise TimeoutError(f"JetStream cluster not ready in {timeout}s: {last}")


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
