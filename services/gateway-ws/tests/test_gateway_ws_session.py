"""Unit tests of the session state machine: an in-memory channel, and a publisher whose PubAck
futures the test resolves itself (so ordering, the window and failures are deterministic)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import orjson
import pytest

from gateway_ws.protocol import Connect, ErrorCode, ProtocolError
from gateway_ws.session import ChannelClosed, Session, SessionLimits
from tributary_ingest.batches import PublishOutcome
from tributary_runtime.publish import PublishError


class MemoryChannel:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.reads = 0
        self.gone = False

    async def receive(self) -> str | bytes | None:
        frame = await self.inbox.get()
        self.reads += 1
        return frame

    async def send(self, text: str) -> None:
        if self.gone:
            raise ChannelClosed
        self.sent.append(orjson.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def put(self, message: Any) -> None:
        if message is not None and not isinstance(message, str):
            message = orjson.dumps(message).decode()
        self.inbox.put_nowait(message)  # None: the peer disconnected


class HeldPublisher:
    """Every submit returns one future per data message, resolved by the test (``ok``)."""

    def __init__(self) -> None:
        self.futures: list[Any] = []
        self.fail_submit = False

    def submit(
        self, domain: str, source_id: str, received_at: datetime, points: Any, rejections: Any = ()
    ) -> asyncio.Future[PublishOutcome]:
        future: asyncio.Future[PublishOutcome] = asyncio.get_running_loop().create_future()
        if self.fail_submit:  # what the coalescer answers once it is closed
            future.set_exception(PublishError("closed", "the gateway is shutting down"))
            return future
        self.futures.append(Held(future))
        return future


class Held:
    """One submission's future as the test resolves it."""

    def __init__(self, future: asyncio.Future[PublishOutcome]) -> None:
        self.future = future

    def set_result(self, _: None) -> None:
        self.future.set_result(PublishOutcome(1, 0, True))

    def set_exception(self, exc: BaseException) -> None:
        self.future.set_exception(PublishError("timeout", repr(exc)))

    def done(self) -> bool:
        return self.future.done()


class OneSourceRegistry:
    def __init__(self) -> None:
        self.claimed: list[Session] = []
        self.released: list[Session] = []

    def claim(self, session: Session, key_id: str) -> Session | ProtocolError | None:
        self.claimed.append(session)
        return None

    def release(self, session: Session) -> None:
        self.released.append(session)


class MemoryResume:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}

    async def last_sequence(self, domain: str, source_id: str) -> int | None:
        return self.values.get((domain, source_id))

    def tracker(self, domain: str, source_id: str, session_id: str) -> Any:
        store = self

        class Tracker:
            def advance(self, sequence: int) -> None:
                store.values[(domain, source_id)] = sequence

            async def close(self, timeout: float) -> None:
                return None

        return Tracker()


async def allow(connect: Connect) -> str | ProtocolError:
    if connect.api_key == "good":
        return "key-1"
    return ProtocolError(ErrorCode.UNAUTHORIZED, "unknown api_key")


CONNECT = {"type": "connect", "source_id": "s", "domain": "infrastructure", "api_key": "good"}


def data(seq: int) -> dict[str, Any]:
    return {"type": "data", "batch": [{"stream_id": "x", "value": 1, "sequence": seq}]}


async def until(condition: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def make(**limits: Any) -> tuple[Session, MemoryChannel, HeldPublisher, MemoryResume]:
    channel, publisher, resume = MemoryChannel(), HeldPublisher(), MemoryResume()
    session = Session(
        channel,
        SessionLimits(**limits),
        authorize=allow,
        publisher=publisher,
        registry=OneSourceRegistry(),
        resume=resume,
    )
    return session, channel, publisher, resume


async def test_acks_go_back_in_order_even_when_pubacks_arrive_out_of_order() -> None:
    session, channel, publisher, _ = make()
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    for seq in (1, 2, 3):
        channel.put(data(seq))
    await until(lambda: len(publisher.futures) == 3)

    publisher.futures[2].set_result(None)
    publisher.futures[1].set_result(None)
    await asyncio.sleep(0.01)
    only_connected = [m["type"] for m in channel.sent]
    publisher.futures[0].set_result(None)
    await until(lambda: len(channel.sent) == 4)
    channel.put(None)
    await asyncio.wait_for(task, 2)

    assert only_connected == ["connected"]
    assert [m.get("sequence_up_to") for m in channel.sent[1:]] == [1, 2, 3]


async def test_the_reader_stops_at_the_window_and_resumes_when_an_ack_is_sent() -> None:
    session, channel, publisher, _ = make(max_unacked=3)
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    for seq in range(10):
        channel.put(data(seq))
    await until(lambda: len(publisher.futures) == 3)
    await asyncio.sleep(0.02)
    reads_while_full = channel.reads

    publisher.futures[0].set_result(None)
    await until(lambda: len(publisher.futures) == 4)
    await asyncio.sleep(0.02)
    reads_after_one_ack = channel.reads
    for _ in range(50):  # bounded: resolve the rest as they come
        for future in publisher.futures:
            if not future.done():
                future.set_result(None)
        if len(channel.sent) == 11:
            break
        await asyncio.sleep(0.01)
    channel.put(None)
    await asyncio.wait_for(task, 2)

    assert reads_while_full == 4  # connect (its reply sent) + 3 data owed: the 4th waits unread
    assert reads_after_one_ack == reads_while_full + 1
    assert session.max_in_flight_seen == 3
    assert [m["sequence_up_to"] for m in channel.sent[1:]] == list(range(10))


async def test_a_pub_ack_failure_sends_bus_unavailable_acks_nothing_later_and_closes_1013() -> None:
    session, channel, publisher, resume = make()
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    for seq in (1, 2, 3):
        channel.put(data(seq))
    await until(lambda: len(publisher.futures) == 3)
    publisher.futures[0].set_result(None)
    publisher.futures[1].set_exception(TimeoutError())
    publisher.futures[2].set_result(None)
    await asyncio.wait_for(task, 2)

    assert [m["type"] for m in channel.sent] == ["connected", "ack", "error"]
    assert channel.sent[2]["code"] == "bus_unavailable"
    assert channel.closed is not None and channel.closed[0] == 1013
    assert resume.values == {("infrastructure", "s"): 1}  # never beyond the failure


async def test_a_failed_submit_is_fatal_too() -> None:
    session, channel, publisher, _ = make()
    publisher.fail_submit = True
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    channel.put(data(1))
    await asyncio.wait_for(task, 2)

    assert channel.sent[-1]["code"] == "bus_unavailable"
    assert channel.closed is not None and channel.closed[0] == 1013


async def test_stop_acks_what_becomes_durable_then_closes_1001() -> None:
    session, channel, publisher, resume = make()
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    channel.put(data(1))
    channel.put(data(2))
    await until(lambda: len(publisher.futures) == 2)

    session.stop(1001, "going away")
    channel.put(data(3))  # arrives after the stop: never read, never acked
    await asyncio.sleep(0.01)
    for future in publisher.futures:
        future.set_result(None)
    await asyncio.wait_for(task, 2)

    assert [m.get("sequence_up_to") for m in channel.sent[1:]] == [1, 2]
    assert channel.closed == (1001, "going away")
    assert len(publisher.futures) == 2
    assert resume.values == {("infrastructure", "s"): 2}


async def test_a_vanished_peer_still_records_what_became_durable() -> None:
    session, channel, publisher, resume = make()
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    channel.put(data(5))
    await until(lambda: len(publisher.futures) == 1)
    channel.gone = True
    channel.put(None)
    publisher.futures[0].set_result(None)
    await asyncio.wait_for(task, 2)

    assert resume.values == {("infrastructure", "s"): 5}
    assert channel.closed is None


async def test_resume_reports_the_recorded_sequence() -> None:
    session, channel, _, resume = make()
    resume.values[("infrastructure", "s")] = 41
    task = asyncio.create_task(session.run())
    channel.put({**CONNECT, "resume": True})
    await until(lambda: len(channel.sent) == 1)
    channel.put(None)
    await asyncio.wait_for(task, 2)

    assert channel.sent[0] == {"type": "connected", "session_id": session.id, "last_sequence": 41}


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"connect_timeout": 0.05}, (1008, "no connect within 0.05 s")),
        ({"idle_timeout": 0.05}, (1000, "idle timeout")),
    ],
)
async def test_timeouts_close_the_session(
    limits: dict[str, float], expected: tuple[int, str]
) -> None:
    session, channel, _, _ = make(**limits)
    task = asyncio.create_task(session.run())
    if "idle_timeout" in limits:
        channel.put(CONNECT)

    await asyncio.wait_for(task, 2)

    assert channel.closed == expected


async def test_idle_timeout_waits_while_acks_are_owed() -> None:
    session, channel, publisher, _ = make(idle_timeout=0.05)
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    channel.put(data(1))
    await until(lambda: len(publisher.futures) == 1)
    await asyncio.sleep(0.2)  # several idle periods with an ack owed
    still_running = not task.done()
    publisher.futures[0].set_result(None)
    await asyncio.wait_for(task, 2)

    assert still_running
    assert channel.sent[-1]["type"] == "ack" and channel.closed == (1000, "idle timeout")


async def test_a_session_that_keeps_sending_outlives_its_idle_timeout() -> None:
    """The idle timeout counts from the last frame: pings every 20 ms for 0.3 s keep a
    session with a 0.1 s idle timeout open; 0.1 s of silence after them ends it."""
    loop = asyncio.get_running_loop()
    session, channel, _, _ = make(idle_timeout=0.1)
    task = asyncio.create_task(session.run())
    channel.put(CONNECT)
    for n in range(15):
        channel.put({"type": "ping", "id": n})
        last_sent = loop.time()  # the session reads the ping after this
        await asyncio.sleep(0.02)
    open_after_pings = not task.done()
    await asyncio.wait_for(task, 2)
    silence = loop.time() - last_sent

    assert open_after_pings
    assert [m["type"] for m in channel.sent].count("pong") == 15
    assert channel.closed == (1000, "idle timeout") and 0.1 <= silence < 1.0


async def test_a_bad_key_is_an_error_then_close_1008_and_nothing_is_read_after() -> None:
    session, channel, _, _ = make()
    task = asyncio.create_task(session.run())
    channel.put({**CONNECT, "api_key": "bad"})
    channel.put(data(1))
    await asyncio.wait_for(task, 2)

    assert channel.sent == [{"type": "error", "code": "unauthorized", "reason": "unknown api_key"}]
    assert channel.closed == (1008, "unknown api_key")
    assert channel.reads == 1
