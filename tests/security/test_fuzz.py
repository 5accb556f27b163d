"""Bounded fuzz runs (a few seconds each); ``tests/security/run_fuzz.py`` runs longer ones."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.fuzz import fuzz_http, fuzz_ws

pytestmark = pytest.mark.integration


async def test_gateway_http_survives_its_openapi_schema_fuzzed(
    servers: Any, bus_prefix: str, nats_client: Any, jetstream: Any
) -> None:
    report = await fuzz_http(servers, bus_prefix, nats_client, max_examples=8)
    print(report.summary())
    assert report.failures == []
    assert report.accepted_points > 0  # the run reached the publish path


async def test_gateway_ws_survives_random_frames(
    servers: Any, bus_prefix: str, nats_client: Any, jetstream: Any
) -> None:
    report = await fuzz_ws(servers, bus_prefix, nats_client, max_examples=12, max_frames=8)
    print(report.summary())
    assert report.failures == []
    assert sum(v for k, v in report.statuses.items() if k.startswith("error")) > 0
    assert report.accepted_points > 0  # the run reached the publish path
