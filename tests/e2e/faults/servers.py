"""Private servers the fault scenarios stop, kill and restart — never the machine's shared ones.

Each class starts its server on a free loopback port with its state in a temporary directory:

- ``PrivateNats``: ``nats-server -js -sd <dir>``; ``restart()`` keeps the store directory.
- ``PrivatePostgres``: a cluster made by ``initdb`` (run as the ``postgres`` user when we are
  root: initdb refuses root), its own port and unix socket directory; ``stop()``/``start()`` are
  ``pg_ctl stop -m fast`` / ``pg_ctl start``.
- ``PrivateMosquitto``: ``mosquitto -c <config>``, the repository's ``deploy/mosquitto`` config
  rendered for its port and directory (authenticated clients, ACLs, the same queue limits as
  ``make run``); ``tests.mqtt`` makes users on it (``at=mosquitto.at``).

Every ``start`` waits (bounded) until the server answers; ``close()`` stops it and removes its
directory and always runs from the fixtures' ``finally``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tributary_operator.mqtt_credentials import REPO_CONFIG, prepare_broker_dir

NATS_SERVER = "/usr/sbin/nats-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
MOSQUITTO = "mosquitto"


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (bounded tries)."""
    import random

    for _ in range(200):
        port = random.randrange(30_000, 32_000)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port found")


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def wait_port_closed(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class _PrivateServer:
    """A server process of our own on a free port, its files in its own directory: ``stop()``
    (SIGTERM, a clean shutdown), ``restart()`` on the same port and files, ``close()`` (SIGKILL,
    directory removed). A subclass gives its command line; its output goes to ``dir/<log>``."""

    what = ""  # the server's name, in errors
    log = ""

    def __init__(self, dir_prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=dir_prefix))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = open(self.dir / self.log, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port, 20, self.what, self.proc)

    def stop(self) -> None:
        stop_process(self.proc)  # SIGTERM: mosquitto saves its persistence file first
        wait_port_closed(self.port, 10)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop (SIGTERM), stay down ``down_seconds``, start again on the same port and store."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        stop_process(self.proc, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateNats(_PrivateServer):
    """nats-server with JetStream on a free port, its store in its own directory."""

    what, log = "nats-server", "nats.log"

    def __init__(self) -> None:
        super().__init__("faults-nats-")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.dir / "store")]  # fmt: skip


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own (trust auth, loopback only)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.dir / "data"
        self.sockets = self.dir / "sock"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self.user = "postgres"
            owner = pwd.getpwnam(self.user)
            self.sockets.mkdir()
            for path in (self.dir, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        else:
            self.sockets.mkdir()

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        self.start()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c shared_buffers=32MB"
        )
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop", timeout=30)  # fmt: skip
            except Exception:  # already stopped, or gone: the directory goes anyway
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


PRIVATE_BROKERS: dict[int, Path] = {}
"""Port → state directory of every ``PrivateMosquitto`` of this process (for ``tests.mqtt``)."""


class PrivateMosquitto(_PrivateServer):
    """Mosquitto on a free port running the repository's config, its state (credentials,
    persistence of queued QoS 1 messages) in its own directory."""

    what, log = "mosquitto", "mosquitto.out"

    def __init__(self) -> None:
        super().__init__("faults-mqtt-")
        if os.geteuid() == 0:  # mosquitto drops root for user 'mosquitto'; it writes here
            try:
                owner = pwd.getpwnam("mosquitto")
                os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            except KeyError:
                pass
        prepare_broker_dir(self.dir, REPO_CONFIG.read_text(), self.port)
        PRIVATE_BROKERS[self.port] = self.dir

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def at(self) -> tuple[int, Path]:
        """``(port, directory)``: where ``tests.mqtt`` makes this broker's users."""
        return self.port, self.dir

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")]
