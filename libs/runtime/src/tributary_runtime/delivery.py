"""How every consumer of the fleet settles a JetStream message: the one rule set.

The rules (the contract's "Delivery: acks and idempotency" and "Dead letters"):

- **ack** a message only once what it produced is durable (a writer: after the commit; the
  classifier: after its outputs and state were acked by JetStream);
- a **transient** failure → **nak** with a delay of ``base·2^(n-1)`` seconds, at most ``cap``
  (``n``: how many times it was delivered, ``backoff_delay``); a message already delivered
  ``MAX_DELIVER`` times is **dead-lettered** (kind ``max_deliver``) instead;
- a message that cannot be handled (not valid: ``invalid_message``/``invalid_batch``; rows the
  database refused: ``bad_rows``; …) is **dead-lettered** with its reason, then acked;
- a dead letter is published on ``dp.dlq.<consumer>`` (its PubAck awaited) with the contract's
  ``Tributary-Dlq-*`` headers (``dead_letter``); when that publish fails the message is nakked
  instead: it comes back, nothing is lost;
- a failed ack or nak is counted and left to JetStream (after ``ack_wait`` it redelivers; every
  write is idempotent, so a second delivery changes nothing).

``Settler`` applies them for a consumer that settles each message itself (the writers and their
event loops); the classifier, which acks by snapshot (``ack_all``), builds its dead letters with
``dead_letter`` and publishes them with its outputs.

Metrics: the consumer's metrics module defines the counters of ``DeliveryMetrics``; failures are
counted in ``ERRORS`` with ``stage`` one of ``parse``, ``write``, ``isolate``, ``handle``,
``dlq``, ``ack``, ``nak`` (and the loops' ``fetch``, ``probe``, ``publish``) and ``error_type``
the exception's type name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter

from tributary_contracts import DP_DLQ, MAX_DELIVER, Namespace, dead_letter_headers
from tributary_contracts.dead_letters import one_line
from tributary_runtime.publish import Outgoing, publish_one


def deliveries(msg: Any) -> int:
    """How many times JetStream has delivered ``msg`` (1 for a message outside JetStream)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # in-memory test brokers and core NATS messages carry no JS metadata
        return 1


def backoff_delay(delivered: int, base: float, cap: float) -> float:
    """Redelivery delay after the ``delivered``-th failed delivery: base·2^(n-1), at most cap."""
    return float(min(cap, base * 2 ** max(0, min(delivered - 1, 30))))


class Message(Protocol):
    """The part of a JetStream message (nats-py ``Msg``) a consumer settles."""

    subject: str
    data: bytes

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...


class AckMetrics(Protocol):
    """The counters ``ack_all`` uses (a consumer's metrics module satisfies this)."""

    MESSAGES_ACKED: Counter
    ERRORS: Counter
    """Labels stage, error_type."""


class DeliveryMetrics(AckMetrics, Protocol):
    """The counters a consumer's metrics module defines (the module itself satisfies this)."""

    MESSAGES_NAKKED: Counter
    DLQ: Counter
    """Label reason (the dead letter's kind)."""


async def ack_all(messages: Sequence[Message], metrics: AckMetrics) -> int:
    """Ack ``messages``; how many were acked. A failure is counted (stage ``ack``), not raised:
    JetStream redelivers the message after ``ack_wait`` and handling it again changes nothing."""
    acked = 0
    for msg in messages:
        try:
            await msg.ack()
        except Exception as exc:
            metrics.ERRORS.labels("ack", type(exc).__name__).inc()
            continue
        acked += 1
    metrics.MESSAGES_ACKED.inc(acked)
    return acked


def _headers(
    consumer: str, msg: Message, kind: str, reason: str, delivered: int, payload: bytes,
    identity: str | None,
) -> dict[str, str]:
    return dead_letter_headers(
        consumer, kind, reason, msg.subject, delivered,
        payload if identity is None else identity.encode(),
    )


def dead_letter(
    ns: Namespace, consumer: str, msg: Message, kind: str, reason: str, delivered: int
) -> Outgoing:
    """The dead letter of ``msg`` (its payload, unchanged) for ``dp.dlq.<consumer>``."""
    headers = _headers(consumer, msg, kind, reason, delivered, msg.data, None)
    return Outgoing(ns.dlq_subject(consumer), msg.data, headers, ns.stream(DP_DLQ))


DeadLetterPublish = Callable[[bytes, dict[str, str]], Awaitable[Any]]
"""Publish ``body`` with ``headers`` on the consumer's DLQ subject and await the PubAck
(raises when it was not acked)."""


def dead_letter_publisher(
    js: Any, ns: Namespace, consumer: str, timeout: float = 5.0
) -> DeadLetterPublish:
    """Publish on ``dp.dlq.<consumer>`` (``publish_one``)."""
    subject, stream = ns.dlq_subject(consumer), ns.stream(DP_DLQ)

    async def publish(body: bytes, headers: dict[str, str]) -> None:
        await publish_one(js, Outgoing(subject, body, headers, stream), timeout)

    return publish


@dataclass
class Settler:
    """Acks, naks and dead-letters the messages of one consumer by the rules above; never raises.

    Several consume loops may share one: each runs the handling of its fetch in ``handle``.
    """

    consumer: str
    """The durable's name: the DLQ subject ``dp.dlq.<consumer>`` and header."""
    publish: DeadLetterPublish
    metrics: DeliveryMetrics
    log: Any
    describe: Callable[[BaseException], str] = repr
    """One line for an error in logs and DLQ reasons."""
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    max_deliver: int = MAX_DELIVER
    _settled: set[int] = field(default_factory=set, init=False, repr=False)
    """ids of the messages of the fetches in progress already acked or nakked."""

    async def handle(self, messages: Sequence[Message], work: Awaitable[None]) -> None:
        """Run ``work`` (the handling of the fetch ``messages``); an unexpected failure (a defect)
        is counted and logged, and every message not settled yet is nakked (it comes back)."""
        try:
            await work
        except Exception as exc:
            self.metrics.ERRORS.labels("handle", type(exc).__name__).inc()
            self.log.exception("unexpected failure handling a fetch; redelivery scheduled",
                               consumer=self.consumer)
            for msg in messages:
                if id(msg) not in self._settled:
                    await self.nak(msg, deliveries(msg))
        finally:
            for msg in messages:
                self._settled.discard(id(msg))

    async def ack(self, msg: Message) -> None:
        self._settled.add(id(msg))
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; handling it again changes nothing
            self.metrics.ERRORS.labels("ack", type(exc).__name__).inc()
            self.log.warning("ack failed; message will be redelivered", consumer=self.consumer,
                             error=self.describe(exc))
            return
        self.metrics.MESSAGES_ACKED.inc()

    async def nak(self, msg: Message, delivered: int) -> None:
        self._settled.add(id(msg))
        delay = backoff_delay(delivered, self.backoff_seconds, self.backoff_max_seconds)
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # the ack wait expires and JetStream redelivers anyway
            self.metrics.ERRORS.labels("nak", type(exc).__name__).inc()
            return
        self.metrics.MESSAGES_NAKKED.inc()

    async def dead_letter(
        self, msg: Message, kind: str, reason: str, delivered: int,
        body: bytes | None = None, identity: str | None = None,
    ) -> bool:
        """Publish a dead letter of ``msg`` and await its PubAck; False (counted, logged) when
        the bus refused it. ``body`` replaces the message's payload (a writer's ``bad_rows``: a
        replayable message of just the refused points); ``identity`` (instead of the body) makes
        its ``Nats-Msg-Id``."""
        payload = msg.data if body is None else body
        headers = _headers(self.consumer, msg, kind, reason, delivered, payload, identity)
        try:
            await self.publish(payload, headers)
        except Exception as exc:
            self.metrics.ERRORS.labels("dlq", type(exc).__name__).inc()
            self.log.warning("dead-letter publish failed; message will be redelivered",
                             consumer=self.consumer, subject=msg.subject,
                             error=self.describe(exc))
            return False
        self.metrics.DLQ.labels(kind).inc()
        self.log.warning("dead-lettered", consumer=self.consumer, subject=msg.subject,
                         kind=kind, reason=one_line(reason))
        return True

    async def reject(self, msg: Message, kind: str, reason: str, delivered: int) -> None:
        """Dead-letter ``msg`` (its payload) and ack it; nak it when the DLQ publish fails."""
        if await self.dead_letter(msg, kind, reason, delivered):
            await self.ack(msg)
        else:
            await self.nak(msg, delivered)

    async def retry(self, msg: Message, delivered: int, exc: BaseException) -> None:
        """A transient failure: nak ``msg`` with its backoff, or dead-letter it (``max_deliver``)
        when it was delivered ``max_deliver`` times."""
        if delivered >= self.max_deliver:
            reason = f"gave up after {delivered} deliveries: {self.describe(exc)}"
            await self.reject(msg, "max_deliver", reason, delivered)
        else:
            await self.nak(msg, delivered)
