"""``stream.protocol_error``: the gateway base's refusals (``Access``'s 429/413, the base's 503)
as the protocol's error replies, without a socket or a bus."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway_ws.protocol import ErrorCode, error_reply
from gateway_ws.settings import GatewayWsSettings
from gateway_ws.stream import protocol_error
from tributary_access.access import Access
from tributary_access.ratelimit import IngestLimiter
from tributary_ingest.gateway import unavailable_reply
from tributary_runtime.ops import Reply

NOW = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def access(**limits: Any) -> Access:
    # The key store and audit log are not reached by admit / admit_points.
    return Access(None, IngestLimiter(GatewayWsSettings(**limits)), None)  # type: ignore[arg-type]


def refusal(call: Any) -> Reply:
    with pytest.raises(Reply) as raised:
        call()
    return raised.value


def test_a_frame_over_the_ip_budget_is_rate_limited_with_retry_after() -> None:
    checks = access(rate_limit_ip_per_second=1, rate_limit_ip_burst=1)
    checks.admit("10.0.0.1", "frames")

    error = protocol_error(refusal(lambda: checks.admit("10.0.0.1", "frames")))

    assert error.code is ErrorCode.RATE_LIMITED and not error.fatal
    assert error.retry_after is not None and error.retry_after >= 1
    assert "frames" in error.reason


def test_more_points_than_a_burst_are_a_bad_batch() -> None:
    checks = access(rate_limit_source_burst=10, rate_limit_source_points_per_second=10)

    reply = refusal(lambda: checks.admit_points("infra", "s1", [NOW] * 11, NOW))
    error = protocol_error(reply)

    assert reply.status == 413
    assert error.code is ErrorCode.BAD_BATCH and error.retry_after is None


def test_a_refusal_at_connection_time_is_fatal() -> None:
    checks = access(rate_limit_ip_per_second=1, rate_limit_ip_burst=1)
    checks.admit("10.0.0.2")

    error = protocol_error(refusal(lambda: checks.admit("10.0.0.2")), fatal=True)

    assert error.code is ErrorCode.RATE_LIMITED and error.fatal


@pytest.mark.parametrize(
    ("status", "code"), [(401, ErrorCode.UNAUTHORIZED), (403, ErrorCode.FORBIDDEN)]
)
def test_key_refusals_keep_their_reason_and_close(status: int, code: ErrorCode) -> None:
    error = protocol_error(Reply(status, {"error": "API key is revoked"}), fatal=True)

    assert error_reply(error) == {
        "type": "error",
        "code": code.value,
        "reason": "API key is revoked",
    }
    assert error.fatal


def test_the_bases_503_is_bus_unavailable_with_its_retry_after() -> None:
    error = protocol_error(unavailable_reply(7), fatal=True)

    assert error.code is ErrorCode.BUS_UNAVAILABLE and error.retry_after == 7 and error.fatal
