"""``ensure_jetstream(replicas=…)``: bootstrap sets the replica count; a service start (None)
never changes an existing stream's count. R3 on a real cluster: tests/e2e/test_e2e_cluster.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tributary_contracts import Namespace, ensure_jetstream
from tributary_contracts.jetstream import BUCKETS, STREAMS


class RecordingJetStream:
    """Stands in for the server: streams exist with ``existing_replicas``; calls are recorded."""

    def __init__(self, existing_replicas: int | None) -> None:
        self.existing_replicas = existing_replicas
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def stream_info(self, name: str) -> Any:
        if self.existing_replicas is None:
            raise LookupError("stream not found")
        return SimpleNamespace(config=SimpleNamespace(num_replicas=self.existing_replicas))

    async def add_stream(self, config: Any = None, **params: Any) -> None:
        self.calls.append(("add_stream", params))

    async def update_stream(self, config: Any = None, **params: Any) -> None:
        self.calls.append(("update_stream", params))

    async def key_value(self, bucket: str) -> Any:
        raise LookupError("bucket not found")

    async def create_key_value(self, config: Any = None, **params: Any) -> None:
        self.calls.append(("create_key_value", params))

    async def consumer_info(self, stream: str, consumer: str) -> Any:
        raise LookupError("consumer not found")

    async def add_consumer(self, stream: str, config: Any = None, **params: Any) -> None:
        self.calls.append(("add_consumer", params))


def replicas_by_call(js: RecordingJetStream) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for name, params in js.calls:
        out.setdefault(name, set()).add(params.get("num_replicas", params.get("replicas")))
    return out


@pytest.mark.parametrize(
    ("existing", "requested", "expected"),
    [
        (None, None, {"add_stream": {1}, "create_key_value": {1}}),
        (None, 3, {"add_stream": {3}, "create_key_value": {3}}),
        (3, None, {"update_stream": {3}, "create_key_value": {1}}),  # a service start keeps R3
        (1, 3, {"update_stream": {3}, "create_key_value": {3}}),  # bootstrap raises it
    ],
)
async def test_replicas_on_create_and_update(
    existing: int | None, requested: int | None, expected: dict[str, set[int]]
) -> None:
    js = RecordingJetStream(existing)

    await ensure_jetstream(js, Namespace("t"), replicas=requested)

    assert replicas_by_call(js) == expected
    assert len(js.calls) == len(STREAMS) + len(BUCKETS)


async def test_replicas_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        await ensure_jetstream(RecordingJetStream(None), Namespace("t"), replicas=0)
