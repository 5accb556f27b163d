"""The delivery rules every writer of ``dp.classified.>`` shares (fetch → one transaction → acks).

``ClassifiedWriterBase.handle(messages)`` applies them to one fetch; a writer (writer-postgres,
writer-sqlserver) subclasses it and supplies only what differs: how a batch becomes rows
(``_rows``), how rows are written (``_write``), how the rows of a permanent error are isolated
(``_isolate``, normally the shared in-order bisection ``_bisect`` plus a log line), how a
database error is classified and described, its metrics module, logger and DLQ consumer name,
and optional hooks (``_write_failed``, ``_stored``, ``_retry_context``) for a circuit breaker or
extra logging.

- a message is a ``ClassifiedBundle`` (``dp.classified.<domain>.<cls>.part.<p>``: the batches
  of many sources) or, on a former per-source subject, one ``ClassifiedBatch`` (still read while
  an upgraded fleet drains them); one that is not valid → DLQ (reason ``invalid_message``), ack;
- a domain ``SINK_ROUTES`` gives another writer → ack without writing;
- every other message of the fetch is written in ONE transaction and acked after the commit
  (a bundle once every batch of it is stored or dead-lettered);
- transient error → nak every message with a delay growing with its delivery count; a message
  already delivered ``MAX_DELIVER`` times goes to the DLQ (``max_deliver``) instead;
- permanent error → ``_isolate`` marks each refused row; refused rows go to the DLQ with the
  database's reason (``bad_rows``, grouped per batch and reason, as a valid message of the
  subject it came on, a ClassifiedBundle of that one batch or a ClassifiedBatch, so it can be
  replayed), the others are stored, then every message is acked.

Nothing here raises: every failure is counted, logged once, and ends in ack, nak or DLQ. The
metrics module must define ``MESSAGES_RECEIVED``, ``MESSAGES_ACKED``, ``MESSAGES_NAKKED``,
``MESSAGES_SKIPPED``, ``ERRORS`` (labels stage, error_type) and ``DLQ`` (label reason).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import nats.errors
from nats.js import JetStreamContext
from pydantic import Field, ValidationError, field_validator

from tributary_contracts import (
    CONSUMERS,
    DP_DLQ,
    MAX_DELIVER,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    SinkRoutes,
    batch_msg_id,
    dead_letter_headers,
    is_partition_subject,
)
from tributary_contracts.dead_letters import one_line
from tributary_runtime.redelivery import backoff_delay, deliveries
from tributary_runtime.settings import ServiceSettings

RowT = TypeVar("RowT")


class WriterSettings(ServiceSettings):
    """The settings every writer of ``dp.classified.>`` reads (routing, fetch, redelivery)."""

    sink_routes: str = Field(
        default="*=postgres",
        description="Which writer owns which domain (e.g. iot=sqlserver,*=postgres).",
    )
    fetch_batch_size: int = Field(
        default=64, ge=1, le=10_000,
        description="Most messages (batches of points) pulled and written in one transaction.",
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

    @field_validator("sink_routes")
    @classmethod
    def _routes_parse(cls, value: str) -> str:
        SinkRoutes.parse(value)  # raises ValueError naming the bad entry
        return value

    @property
    def routes(self) -> SinkRoutes:
        return SinkRoutes.parse(self.sink_routes)


class Delivery(Protocol):
    """The part of a JetStream message (nats-py ``Msg``) a writer uses."""

    subject: str
    data: bytes

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...


DeadLetterPublish = Callable[[bytes, dict[str, str]], Awaitable[None]]
"""Publish ``body`` with ``headers`` on the DLQ subject and await the JetStream ack."""


def dead_letter_publisher(
    js: JetStreamContext, namespace: Namespace, consumer: str
) -> DeadLetterPublish:
    """Publish on ``dp.dlq.<consumer>``, awaiting the JetStream ack."""
    subject, stream = namespace.dlq_subject(consumer), namespace.stream(DP_DLQ)

    async def publish(body: bytes, headers: dict[str, str]) -> None:
        await js.publish(subject, body, headers=headers, stream=stream, timeout=5.0)

    return publish


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


async def pull_loop(
    js: JetStreamContext, stream: str, durable: str,
    handle: Callable[[Sequence[Any]], Awaitable[None]], stopping: asyncio.Event, *,
    fetch_size: Callable[[], int], fetch_timeout: float,
    ready: Callable[[], Awaitable[bool]] | None = None,
    on_error: Callable[[Exception], None],
) -> None:
    """Fetch from the durable ``durable`` on ``stream`` into ``handle`` until ``stopping``.

    Before each fetch ``ready()`` may wait (a circuit breaker is open) and return False to skip
    it. Never ends on an error: a failed fetch (bus restarting, consumer briefly missing) is
    passed to ``on_error`` (count and log it) and retried after a second; nats-py reconnects
    underneath.
    """
    sub: JetStreamContext.PullSubscription | None = None
    try:
        while not stopping.is_set():
            if ready is not None and not await ready():
                continue
            try:
                if sub is None:
                    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
                try:
                    messages = await sub.fetch(fetch_size(), timeout=fetch_timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue  # nothing to do right now
                await handle(messages)
            except Exception as exc:
                on_error(exc)
                await pause(stopping, 1.0)
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


@dataclass
class Pending(Generic[RowT]):
    """One batch of a parsed message owned by this writer, waiting for its rows to be committed
    (a bundle gives one per batch, all with the same ``msg``)."""

    msg: Delivery
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
class ClassifiedWriterBase(Generic[RowT]):
    """Applies the writer's delivery rules to fetched messages (see the module docstring).

    Subclasses are declared ``@dataclass(kw_only=True)`` to add their own fields (the store…).
    """

    SINK: ClassVar[str]
    CONSUMER: ClassVar[str]
    metrics: ClassVar[Any]
    log: ClassVar[Any]
    # True: a DLQ batch lists its refused points in their original (time) order
    sort_dead_letters: ClassVar[bool] = False

    routes: SinkRoutes
    dead_letter: DeadLetterPublish
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    # ids of the messages of the fetches in progress already acked or nakked (several consume
    # loops may share this writer; each removes its own ids when its fetch is done)
    _settled: set[int] = field(default_factory=set, init=False, repr=False)

    # --- what each writer supplies -------------------------------------------------------

    def _rows(
        self, batch: ClassifiedBatch
    ) -> tuple[list[RowT], list[int], list[tuple[int, Exception]]]:
        """(rows, index in batch.points of each row, points refused before writing)."""
        raise NotImplementedError

    async def _write(self, rows: Sequence[RowT]) -> Any:
        """One transaction, with the commit metrics."""
        raise NotImplementedError

    async def _isolate(
        self, pending: list[Pending[RowT]], rows: list[RowT], first: Exception
    ) -> Any:
        """Store every writable row of a refused fetch, append each refused one to its owner's
        ``refused``; a transient error propagates. (``_bisect`` does the work.)"""
        raise NotImplementedError

    def _is_transient(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _describe(self, exc: BaseException) -> str:
        raise NotImplementedError

    def _write_failed(self) -> None:
        """A write failed transiently (hook for a circuit breaker)."""

    def _stored(self, pending: list[Pending[RowT]], rows: list[RowT], result: Any) -> None:
        """The fetch's writable rows are stored (hook for a circuit breaker or a log line)."""

    def _retry_context(self) -> dict[str, Any]:
        """Extra fields of the "redelivery scheduled" log line."""
        return {}

    # --- the shared rules ------------------------------------------------------------------

    async def _bisect(
        self, pending: list[Pending[RowT]], rows: list[RowT], first: Exception
    ) -> tuple[list[Any], int]:
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
        stored: list[Any] = []
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

    async def handle(self, messages: Sequence[Delivery]) -> None:
        """Write, dead-letter, skip, ack or nak every message of one fetch; never raises."""
        self.metrics.MESSAGES_RECEIVED.inc(len(messages))
        pending: list[Pending[RowT]] = []
        try:
            for msg in messages:
                pending.extend(await self._admit(msg))
            await self._store(pending)
        except Exception as exc:  # a bug or an unexpected failure: retry the unsettled ones
            self.metrics.ERRORS.labels("handle", type(exc).__name__).inc()
            self.log.exception("unexpected failure handling a fetch; redelivery scheduled")
            for msg in messages:
                if id(msg) not in self._settled:
                    await self._nak(msg, deliveries(msg))
        finally:
            for msg in messages:
                self._settled.discard(id(msg))

    async def _admit(self, msg: Delivery) -> list[Pending[RowT]]:
        """Parse and route one message; settle it at once unless it has rows to write."""
        delivered = deliveries(msg)
        try:
            parsed = parse_classified(msg.subject, msg.data)
        except (ValidationError, ValueError) as exc:
            self.metrics.ERRORS.labels("parse", type(exc).__name__).inc()
            kind = "ClassifiedBundle" if is_partition_subject(msg.subject) else "ClassifiedBatch"
            reason = f"invalid {kind}: {exc}"
            self.log.warning("invalid message dead-lettered", subject=msg.subject,
                             reason=one_line(reason))
            if await self._publish_dead_letter(msg, msg.data, "invalid_message", reason, delivered):
                await self._ack(msg)
            else:
                await self._nak(msg, delivered)
            return []
        if not self.routes.owns(self.SINK, parsed.domain):
            self.metrics.MESSAGES_SKIPPED.inc()
            await self._ack(msg)
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
            result = await self._write(rows)
        except Exception as exc:
            self.metrics.ERRORS.labels("write", type(exc).__name__).inc()
            if self._is_transient(exc):
                self._write_failed()
                await self._retry_later(pending, exc)
                return
            try:
                result = await self._isolate(pending, rows, exc)
            except Exception as retry_exc:  # transient during isolation: stored rows dedupe
                self.metrics.ERRORS.labels("isolate", type(retry_exc).__name__).inc()
                self._write_failed()
                await self._retry_later(pending, retry_exc)
                return
        self._stored(pending, rows, result)
        for group in _by_message(pending):
            ok = True
            for p in group:
                if p.refused:
                    ok &= await self._dead_letter_points(p)
            if ok:
                await self._ack(group[0].msg)
            else:
                await self._nak(group[0].msg, group[0].delivered)

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
            body = message.model_dump_json().encode()
            # Identified by its points, not its bytes: the same points classified twice (a
            # producer's retry that went out in another bundle) are dead-lettered once.
            points = batch_msg_id(
                refused.domain, refused.source_id, [(q.stream_id, q.ts) for q in refused.points]
            )
            ok &= await self._publish_dead_letter(
                p.msg, body, "bad_rows", reason, p.delivered, identity=points
            )
        return ok

    async def _retry_later(self, pending: list[Pending[RowT]], exc: BaseException) -> None:
        """Nak each message with its backoff, or dead-letter it after MAX_DELIVER deliveries."""
        if pending:
            self.log.warning("write failed, redelivery scheduled", messages=len(pending),
                             error=self._describe(exc), **self._retry_context())
        for p in (group[0] for group in _by_message(pending)):
            if p.delivered >= MAX_DELIVER:
                reason = f"gave up after {p.delivered} deliveries: {self._describe(exc)}"
                self.log.error("message dead-lettered after max deliveries",
                               subject=p.msg.subject, reason=one_line(reason))
                if await self._publish_dead_letter(
                    p.msg, p.msg.data, "max_deliver", reason, p.delivered
                ):
                    await self._ack(p.msg)
                    continue
            await self._nak(p.msg, p.delivered)

    async def _publish_dead_letter(
        self, msg: Delivery, body: bytes, kind: str, reason: str, delivered: int,
        identity: str | None = None,
    ) -> bool:
        """Publish on the DLQ and await its ack; False (logged) when the bus refused it.
        ``identity`` (instead of the body) makes its ``Nats-Msg-Id``."""
        headers = dead_letter_headers(self.CONSUMER, kind, reason, msg.subject, delivered,
                                      body if identity is None else identity.encode())
        try:
            await self.dead_letter(body, headers)
        except Exception as exc:
            self.metrics.ERRORS.labels("dlq", type(exc).__name__).inc()
            self.log.warning("dead-letter publish failed; message will be redelivered",
                             subject=msg.subject, error=self._describe(exc))
            return False
        self.metrics.DLQ.labels(kind).inc()
        return True

    async def _ack(self, msg: Delivery) -> None:
        self._settled.add(id(msg))
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; idempotent writes make that harmless
            self.metrics.ERRORS.labels("ack", type(exc).__name__).inc()
            self.log.warning("ack failed; message will be redelivered",
                             error=self._describe(exc))
            return
        self.metrics.MESSAGES_ACKED.inc()

    async def _nak(self, msg: Delivery, delivered: int) -> None:
        self._settled.add(id(msg))
        delay = backoff_delay(delivered, self.backoff_seconds, self.backoff_max_seconds)
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # the ack wait expires and JetStream redelivers anyway
            self.metrics.ERRORS.labels("nak", type(exc).__name__).inc()
            return
        self.metrics.MESSAGES_NAKKED.inc()
