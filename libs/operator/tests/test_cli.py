"""The ``tributary`` command as a process: its output and its one-line errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest


@pytest.mark.integration
async def test_cli_prints_the_new_key_as_its_last_line(
    servers: object, bus_prefix: str, jetstream: object  # jetstream: the namespace is removed after
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tributary_operator.cli", "keys", "create", "--role", "admin"],
        env={"NATS_URL": servers.nats_url, "BUS_PREFIX": bus_prefix, "PATH": ""},  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("trb_") and len(key) > 40


def test_cli_says_clearly_when_nats_is_unreachable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tributary_operator.cli", "bootstrap"],
        env={"NATS_URL": "nats://127.0.0.1:1", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in result.stderr
