"""The writers of ``dp.classified.>`` (writer-postgres, writer-sqlserver): fetch → one
transaction → settle, by the fleet's delivery rules (``tributary_runtime.delivery``).

``consume`` is the pull loop of every writer (paused while its breaker is open);
``stop_consuming``, ``retry_transient`` and ``writer_app`` are the rest of a writer's process
plumbing. ``ClassifiedWriterBase.handle(messages)`` handles one fetch; a writer subclasses it
and supplies only what differs: how a batch becomes rows (``_rows``), how rows are written
(``_write``), how the rows of a permanent error are isolated (``_isolate``, normally the shared
in-order bisection ``_bisect`` plus a log line), how a database error is classified and
described, its metrics module, logger and DLQ consumer name. A ``CircuitBreaker``
(``tributary_runtime.breaker``), when given, is told every write's outcome and pauses
``consume`` while it is open.

- a message is a ``ClassifiedBundle`` (``dp.classified.<domain>.<cls>.part.<p>``: the batches
  of many sources) or, on a former per-source subject, one ``ClassifiedBatch``; one that is not
  valid is dead-lettered (``invalid_message``);
- a domain ``SINK_ROUTES`` gives another writer → ack without writing;
- every other message of the fetch is written in ONE transaction and acked after the commit
  (a bundle once every batch of it is stored or dead-lettered);
- transient error → every message is retried (``Settler.retry``: nak with backoff, or
  ``max_deliver`` dead letter);
- permanent error → ``_isolate`` marks each refused row; refused rows are dead-lettered with the
  database's reason (``bad_rows``, grouped per batch and reason, as a valid message of the
  subject it came on, a ClassifiedBundle of that one batch or a ClassifiedBatch, so it can be
  replayed), the others are stored, then every message is acked.

The metrics module must define the counters of ``WriterMetrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import nats.errors
from nats.js import JetStreamContext
from prometheus_client import Counter
from pydantic import Field, ValidationError, field_validator
from starlette.applications import Starlette

from tributary_contracts import (
    CONSUMERS,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    SinkRoutes,
    batch_msg_id,
    is_partition_subject,
)
from tributary_runtime.breaker import CircuitBreaker
from tributary_runtime.delivery import (
    DeadLetterPublish,
    DeliveryMetrics,
    Message,
    Settler,
    deliveries,
)
from tributary_runtime.ops import ReadyCheck, ops_routes
from tributary_runtime.settings import ServiceSettings

T = TypeVar("T")
RowT = TypeVar("RowT")
ResultT = TypeVar("ResultT")
"""What a writer's ``_write`` returns for one transaction (a row count, per-table counts…)."""


class WriterSettings(ServiceSettings):
    """The settings every writer of ``dp.classified.>`` reads (routing, fetch, redelivery,
    circuit breaker)."""

    sink_routes: str = Field(
        default="*=postgres",
        description="Which writer owns which domain (e.g. iot=sqlserver,*=postgres).",
    )
    fetch_batch_size: int = Field(
        default=64, ge=1, le=10_000,
        description="Most messages (batches of points) pulled and written together "
        "(one COPY or one transaction).",
    )
    fetch_timeout_seconds: float = Field(
        default=0.5, gt=0, le=30,
        description="Longest wait for a fetch's first message (a fetch takes what is there).",
    )
    nak_backoff_seconds: float = Field(
        default=1.0, ge=0,
        description="Redelivery delay after a transient error; doubles with each delivery.",
    )
    nak_backoff_max_seconds: float = Field(
        default=60.0, ge=0, description="Upper bound of the redelivery delay."
    )
    breaker_failure_threshold: int = Field(
        default=3, ge=1, le=1000,
        description="Consecutive transient write failures that open the circuit breaker.",
    )
    breaker_probe_max_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="Longest interval between two probes of the database while the breaker "
        "is open.",
    )

    @field_validator("sink_routes")
    @classmethod
    def _routes_parse(cls, value: str) -> str:
        SinkRoutes.parse(value)  # raises ValueError naming the bad entry
        return value

    @property
    def routes(self) -> SinkRoutes:
        return SinkRoutes.parse(self.sink_routes)


class WriterMetrics(DeliveryMetrics, Protocol):
    """The counters a writer's metrics module defines (the module itself satisfies this)."""

    MESSAGES_RECEIVED: Counter
    MESSAGES_SKIPPED: Counter


async def check_consumer(js: JetStreamContext, namespace: Namespace, durable: str) -> None:
    """Raise when the durable ``durable`` does not filter what ``CONSUMERS`` says it should.

    nats-server 2.9 silently ignores what it does not know: verify what was created.
    """
    definition = CONSUMERS[durable]
    info = await js.consumer_info(definition.stream_name(namespace), durable)
    expected = definition.filter_subject(namespace)
    if info.config.filter_subject != expected:
        raise RuntimeError(
            f"consumer {durable} filters {info.config.filter_subject!r}, "
            f"expected {expected!r}; delete it to let the writer recreate it"
        )


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stopping`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


async def consume(
    js: JetStreamContext, settings: WriterSettings, durable: str, stream_base: str,
    handle: Callable[[Sequence[Any]], Awaitable[None]], stopping: asyncio.Event, *,
    breaker: CircuitBreaker | None, metrics: DeliveryMetrics, log: Any,
    describe: Callable[[BaseException], str],
) -> None:
    """Fetch from the durable ``durable`` (on the stream ``stream_base``) into ``handle`` until
    ``stopping``; while ``breaker`` is open, fetch nothing.

    nats-py's ``pull_subscribe_bind`` + ``fetch``, not FastStream's ``PullSub(batch=True)``: in
    faststream 0.7.8 that subscriber loses a fetch's messages until the ack wait when nats-py
    ends a fetch with a plain ``asyncio.TimeoutError`` (writer-postgres README).

    Never ends on an error: a failed fetch (bus restarting, consumer briefly missing) is counted
    (stage ``fetch``), logged and retried after a second; nats-py reconnects underneath.
    """
    stream = settings.namespace.stream(stream_base)
    sub: JetStreamContext.PullSubscription | None = None
    try:
        while not stopping.is_set():
            if breaker is not None and breaker.is_open:
                await breaker.wait_closed(stopping)
                continue
            try:
                if sub is None:
                    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
                try:
                    messages = await sub.fetch(
                        settings.fetch_batch_size, timeout=settings.fetch_timeout_seconds
                    )
                except (TimeoutError, nats.errors.TimeoutError):
                    continue  # nothing to do right now
                await handle(messages)
            except Exception as exc:
                metrics.ERRORS.labels("fetch", type(exc).__name__).inc()
                log.warning("fetch failed, retrying", durable=durable, error=describe(exc))
                await pause(stopping, 1.0)
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def stop_consuming(
    stopping: asyncio.Event, tasks: Sequence[asyncio.Task[None]], timeout: float,
    breaker: CircuitBreaker | None, nc: Any,
) -> None:
    """Set ``stopping``, let the fetches in progress finish (their acks sent) for up to
    ``timeout`` s and cancel what is left (its messages are redelivered after the ack wait), stop
    the breaker's probe, then send the last acks and naks and close NATS."""
    stopping.set()
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if breaker is not None:
        await breaker.close()
    if nc is not None:
        # Not drain(): it would wait for the pull inbox, which nobody reads any more.
        with contextlib.suppress(Exception):
            await nc.flush(timeout=5)
        await nc.close()


async def retry_transient(
    what: str, action: Callable[[], Awaitable[T]], within: float, *,
    is_transient: Callable[[BaseException], bool], describe: Callable[[BaseException], str],
    log: Any,
) -> T:
    """Run ``action``, retrying transient failures (a database still starting) every second
    for ``within`` s; a permanent failure, or one after the deadline, is raised."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await action()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() > deadline:
                raise
            log.warning(f"{what} not reachable yet, retrying", error=describe(exc))
            await asyncio.sleep(1.0)


class WriterService(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ready(self) -> dict[str, bool]: ...


def writer_app(service: WriterService) -> Starlette:
    """The ASGI app of a writer: ``/health``, ``/ready``, ``/metrics``; its lifespan starts and
    stops ``service`` (``app.state.service``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    ready: ReadyCheck = service.ready
    app = Starlette(routes=ops_routes(ready), lifespan=lifespan)
    app.state.service = service
    return app


@dataclass
class Pending(Generic[RowT]):
    """One batch of a parsed message owned by this writer, waiting for its rows to be committed
    (a bundle gives one per batch, all with the same ``msg``)."""

    msg: Message
    batch: ClassifiedBatch
    delivered: int
    rows: list[RowT]
    indexes: list[int]  # index in batch.points of each row
    refused: list[tuple[int, Exception]] = field(default_factory=list)  # (point index, why)
    bundle: ClassifiedBundle | None = None
    """The bundle the batch came in (None: a former per-source ClassifiedBatch message)."""


def parse_classified(subject: str, data: bytes) -> ClassifiedBundle | ClassifiedBatch:
    """A ``dp.classified`` message: a ClassifiedBundle on a partitioned subject, a
    ClassifiedBatch on a former per-source one. Raises ``ValidationError``."""
    if is_partition_subject(subject):
        return ClassifiedBundle.model_validate_json(data)
    return ClassifiedBatch.model_validate_json(data)


def _by_message(pending: list[Pending[RowT]]) -> list[list[Pending[RowT]]]:
    """``pending`` grouped by message, in order (the batches of a bundle share one message)."""
    groups: dict[int, list[Pending[RowT]]] = {}
    for p in pending:
        groups.setdefault(id(p.msg), []).append(p)
    return list(groups.values())


@dataclass
class ClassifiedWriterBase(Generic[RowT, ResultT]):
    """Writes fetched messages and settles them (see the module docstring).

    Subclasses are declared ``@dataclass(kw_only=True)`` to add their own fields (the store…).
    """

    SINK: ClassVar[str]
    CONSUMER: ClassVar[str]
    metrics: ClassVar[WriterMetrics]
    log: ClassVar[Any]
    # True: a DLQ batch lists its refused points in their original (time) order
    sort_dead_letters: ClassVar[bool] = False

    routes: SinkRoutes
    dead_letter: DeadLetterPublish
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    breaker: CircuitBreaker | None = None
    settle: Settler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.settle = Settler(
            self.CONSUMER, self.dead_letter, self.metrics, self.log, self._describe,
            self.backoff_seconds, self.backoff_max_seconds,
        )

    # --- what each writer supplies -------------------------------------------------------

    def _rows(
        self, batch: ClassifiedBatch
    ) -> tuple[list[RowT], list[int], list[tuple[int, Exception]]]:
        """(rows, index in batch.points of each row, points refused before writing)."""
        raise NotImplementedError

    async def _write(self, rows: Sequence[RowT]) -> ResultT:
        """One transaction, with the commit metrics."""
        raise NotImplementedError

    async def _isolate(
        self, pending: list[Pending[RowT]], rows: list[RowT], first: Exception
    ) -> ResultT | None:
        """Store every writable row of a refused fetch, append each refused one to its owner's
        ``refused``; a transient error propagates. (``_bisect`` does the work.)"""
        raise NotImplementedError

    def _is_transient(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _describe(self, exc: BaseException) -> str:
        raise NotImplementedError

    # --- the shared rules ------------------------------------------------------------------

    async def _bisect(
        self, pending: list[Pending[RowT]], rows: list[RowT], first: Exception
    ) -> tuple[list[ResultT], int]:
        """Bisect a fetch the database refused (``first``): store every writable row, append
        each refused one to its owner's ``refused``. Returns (what ``_write`` returned for each
        stored part, how many rows were refused).

        Bisecting the whole fetch finds k bad rows among n in about 2·k·log2(n) small
        transactions (retrying message by message would cost one per message first). The parts
        are written in order, so rows whose effect depends on time order (writer-sqlserver's
        alert close-before-open) still see it. A transient error propagates: the caller naks,
        and the parts already stored dedupe on replay.
        """
        owners = [(p, index) for p in pending for index in p.indexes]
        stored: list[ResultT] = []
        refused = 0

        async def split(lo: int, hi: int, exc: Exception) -> None:
            nonlocal refused
            if hi - lo == 1:
                owner, index = owners[lo]
                owner.refused.append((index, exc))
                refused += 1
                return
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                try:
                    stored.append(await self._write(rows[a:b]))
                except Exception as part_exc:
                    if self._is_transient(part_exc):
                        raise
                    await split(a, b, part_exc)

        await split(0, len(rows), first)
        return stored, refused

    async def handle(self, messages: Sequence[Message]) -> None:
        """Write, dead-letter, skip, ack or nak every message of one fetch; never raises."""
        self.metrics.MESSAGES_RECEIVED.inc(len(messages))
        await self.settle.handle(messages, self._handle(messages))

    async def _handle(self, messages: Sequence[Message]) -> None:
        pending: list[Pending[RowT]] = []
        for msg in messages:
            pending.extend(await self._admit(msg))
        await self._store(pending)

    async def _admit(self, msg: Message) -> list[Pending[RowT]]:
        """Parse and route one message; settle it at once unless it has rows to write."""
        delivered = deliveries(msg)
        try:
            parsed = parse_classified(msg.subject, msg.data)
        except (ValidationError, ValueError) as exc:
            self.metrics.ERRORS.labels("parse", type(exc).__name__).inc()
            kind = "ClassifiedBundle" if is_partition_subject(msg.subject) else "ClassifiedBatch"
            await self.settle.reject(msg, "invalid_message", f"invalid {kind}: {exc}", delivered)
            return []
        if not self.routes.owns(self.SINK, parsed.domain):
            self.metrics.MESSAGES_SKIPPED.inc()
            await self.settle.ack(msg)
            return []
        if isinstance(parsed, ClassifiedBatch):
            batches, bundle = [parsed], None
        else:
            batches, bundle = parsed.batches, parsed
        admitted = []
        for batch in batches:
            rows, indexes, refused = self._rows(batch)
            admitted.append(Pending(msg, batch, delivered, rows, indexes, list(refused), bundle))
        return admitted

    async def _store(self, pending: list[Pending[RowT]]) -> None:
        rows = [row for p in pending for row in p.rows]
        try:
            await self._write(rows)
        except Exception as exc:
            self.metrics.ERRORS.labels("write", type(exc).__name__).inc()
            if self._is_transient(exc):
                await self._retry_later(pending, exc)
                return
            try:
                await self._isolate(pending, rows, exc)
            except Exception as retry_exc:  # transient during isolation: stored rows dedupe
                self.metrics.ERRORS.labels("isolate", type(retry_exc).__name__).inc()
                await self._retry_later(pending, retry_exc)
                return
        if rows and self.breaker is not None:  # nothing written proves nothing
            self.breaker.success()
        settle = self.settle
        for group in _by_message(pending):
            ok = True
            for p in group:
                if p.refused:
                    ok &= await self._dead_letter_points(p)
            if ok:  # every row stored or dead-lettered
                await settle.ack(group[0].msg)
            else:
                await settle.nak(group[0].msg, group[0].delivered)

    async def _dead_letter_points(self, p: Pending[RowT]) -> bool:
        """Publish the refused points of ``p``, one DLQ message per distinct reason."""
        by_reason: dict[str, list[int]] = {}
        for index, exc in p.refused:
            by_reason.setdefault(self._describe(exc), []).append(index)
        ok = True
        for reason, indexes in by_reason.items():
            if self.sort_dead_letters:
                indexes = sorted(indexes)
            refused = p.batch.model_copy(update={"points": [p.batch.points[i] for i in indexes]})
            message: ClassifiedBatch | ClassifiedBundle = refused
            if p.bundle is not None:  # replayable on the subject it came on
                message = p.bundle.model_copy(update={"batches": [refused]})
            # Identified by its points, not its bytes: the same points classified twice (a
            # producer's retry that went out in another bundle) are dead-lettered once.
            points = batch_msg_id(
                refused.domain, refused.source_id, [(q.stream_id, q.ts) for q in refused.points]
            )
            ok &= await self.settle.dead_letter(
                p.msg, "bad_rows", reason, p.delivered,
                body=message.model_dump_json().encode(), identity=points,
            )
        return ok

    async def _retry_later(self, pending: list[Pending[RowT]], exc: BaseException) -> None:
        """A transient failure: tell the breaker, retry every message (``Settler.retry``)."""
        if self.breaker is not None:
            self.breaker.failure(self._describe(exc))
        groups = _by_message(pending)
        if groups:
            self.log.warning("write failed, redelivery scheduled", messages=len(groups),
                             error=self._describe(exc))
        for group in groups:
            await self.settle.retry(group[0].msg, group[0].delivered, exc)
