"""This machine, for tests and benches: a free loopback port, a process's CPU time and memory."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A loopback port free right now (the kernel's pick: an ephemeral one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (/proc/PID/stat); 0.0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_mib(pid: int) -> dict[str, float]:
    """The ``Vm*`` lines of /proc/PID/status in MiB (VmRSS now, VmHWM the peak RSS, …);
    empty when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("Vm")}
