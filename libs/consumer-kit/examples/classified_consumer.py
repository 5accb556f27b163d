"""Example downstream consumer: Tributary's classified points of one domain and class.

    python libs/consumer-kit/examples/classified_consumer.py --domain infrastructure \\
        --cls critical [--source server-01 ...] [--since 2026-02-25T21:00:00Z] [--durable NAME]

prints one JSON line per point. It is a FastStream app: a durable pull consumer on the
DP_CLASSIFIED stream whose server-side filter is ``dp.classified.<domain>.<cls>.>`` (so the
server sends only that domain and class, in bundles or, during an upgrade, former per-source
batches), sources filtered on the client (a partition mixes sources), points deduplicated on
their idempotency key, and each message acked only after all its points were handled (an error
nacks it with a growing delay: redelivered, at most ``MAX_DELIVER`` times; a message that is not
a classified message is terminated, not retried). Copy it and replace ``print_reading``.

Settings: ``NATS_URL`` (nats://127.0.0.1:4222), ``BUS_PREFIX`` (the fleet's namespace, empty in
production), the reader account's ``NATS_USER``/``NATS_PASSWORD`` or ``NATS_CREDS`` (a .creds
file), and the options above (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from faststream import AckPolicy, FastStream
from faststream.exceptions import NackMessage, RejectMessage
from faststream.middlewares import ExceptionMiddleware
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    NatsCredentials,
    NatsMessage,
    NatsSecurity,
    NatsUserPassword,
    PullSub,
)
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from tributary_contracts import (
    DP_CLASSIFIED,
    ClassifiedMessage,
    ClassifiedReading,
    Namespace,
    PointClass,
    PointDeduplicator,
    iter_readings,
)

MAX_DELIVER = 20
"""Deliveries of one message before the server stops offering it to this consumer: with the
backoff below, a downstream outage of about a quarter of an hour is ridden out. A reader account
cannot publish to a dead-letter subject; the server's advisory
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<durable>`` records the skip."""
RETRY_DELAY_SECONDS = 1.0
RETRY_MAX_DELAY_SECONDS = 60.0

Handler = Callable[[ClassifiedReading], Awaitable[None]]


@dataclass(frozen=True)
class Options:
    """What to read, and from where."""

    domain: str
    cls: PointClass
    sources: frozenset[str] | None = None
    """Keep only these source ids (original ids); None keeps every source."""
    since: datetime | None = None
    """Replay from this instant (deliver_policy by_start_time) when the durable is created."""
    durable: str | None = None
    """Durable consumer name; default ``reader-<domain>-<cls>``."""
    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = ""
    dedup_capacity: int = 100_000
    user: str | None = None
    password: str | None = None
    creds: str | None = None
    """NATS credentials of the reader account: user and password, or a ``.creds`` file."""

    @property
    def durable_name(self) -> str:
        return self.durable or f"reader-{self.domain}-{self.cls}"


def consumer_config(options: Options) -> ConsumerConfig:
    """The durable's config: explicit acks, a bounded number of deliveries, and where to start
    (the whole retained stream, or ``since``). Fixed when the durable is created: to replay an
    existing durable from another time, use a new durable name (or delete it first)."""
    start = (
        {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": options.since}
        if options.since
        else {"deliver_policy": DeliverPolicy.ALL}
    )
    return ConsumerConfig(
        durable_name=options.durable_name,
        ack_wait=30,
        max_deliver=MAX_DELIVER,
        max_ack_pending=1000,
        **start,  # type: ignore[arg-type]
    )


def security(options: Options) -> NatsSecurity | None:
    """The reader account's credentials, if any."""
    if options.creds:
        return NatsCredentials(options.creds)
    if options.user:
        return NatsUserPassword(options.user, options.password or "")
    return None


def retry_delay(delivered: int) -> float:
    """Nack delay before delivery ``delivered + 1``: 1 s, 2 s, 4 s … at most 60 s."""
    return min(RETRY_DELAY_SECONDS * 2 ** max(delivered - 1, 0), RETRY_MAX_DELAY_SECONDS)


def build_broker(
    options: Options, handle: Handler, logger: logging.Logger | None = None
) -> NatsBroker:
    """A broker with one subscriber: ``handle`` is awaited once per new point, in order."""
    ns = Namespace(options.prefix)
    log = logger or logging.getLogger("classified_consumer")
    invalid = ExceptionMiddleware()

    @invalid.add_handler(ValidationError)
    async def refuse(exc: ValidationError) -> None:
        # Not a classified message: retrying cannot help. Terminated (the server's advisory
        # $JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED records it); the stream keeps it.
        log.error("not a classified message, terminated: %s", " ".join(str(exc).split()))
        raise RejectMessage()

    broker = NatsBroker(
        options.nats_url,
        security=security(options),
        middlewares=[invalid],
        **({"logger": logger} if logger is not None else {}),
    )
    dedup = PointDeduplicator(options.dedup_capacity)
    sources: Collection[str] | None = options.sources

    @broker.subscriber(
        ns.classified_filter(options.domain, options.cls),
        stream=JStream(ns.stream(DP_CLASSIFIED), declare=False),
        durable=options.durable_name,
        config=consumer_config(options),
        # One message per fetch: FastStream 0.7.8's pull subscriber handles the messages of a
        # fetch concurrently (an anyio task group), which would break per-source order.
        pull_sub=PullSub(batch_size=1, timeout=1.0),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_classified(message: ClassifiedMessage, msg: NatsMessage) -> None:
        """Consumes ClassifiedBundle (or a former ClassifiedBatch); hands each new point on."""
        fresh = dedup.unseen(iter_readings(message, sources))
        try:
            for reading in fresh:
                await handle(reading)
        except Exception as exc:
            delivered = msg.raw_message.metadata.num_delivered or 1
            delay = retry_delay(delivered)
            log.warning("handling failed (delivery %d), again in %.0f s: %r", delivered, delay, exc)
            raise NackMessage(delay=delay) from exc
        # Only now: a failed message is handled again, from its first point, when redelivered.
        dedup.remember(fresh)

    return broker


async def print_reading(reading: ClassifiedReading) -> None:
    point = reading.point
    line = {
        "domain": reading.domain,
        "source_id": reading.source_id,
        "stream_id": point.stream_id,
        "ts": point.ts.isoformat(),
        "value": point.value,
        "cls": str(reading.cls),
        "rule": point.rule,
        "reason": point.reason,
    }
    print(json.dumps(line), flush=True)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", required=True, help="domain to read (server-side filter)")
    parser.add_argument(
        "--cls", required=True, choices=[c.value for c in PointClass], help="class to read"
    )
    parser.add_argument(
        "--source", action="append", help="keep only this source id (repeatable; client side)"
    )
    parser.add_argument(
        "--since", type=datetime.fromisoformat, help="replay from this ISO 8601 instant"
    )
    parser.add_argument("--durable", help="durable consumer name (default reader-<domain>-<cls>)")
    args = parser.parse_args(argv)
    if args.since is not None and args.since.tzinfo is None:
        parser.error("--since needs a UTC offset, e.g. 2026-02-25T21:00:00Z")
    return Options(
        domain=args.domain,
        cls=PointClass(args.cls),
        sources=frozenset(args.source) if args.source else None,
        since=args.since,
        durable=args.durable,
        nats_url=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        prefix=os.environ.get("BUS_PREFIX", ""),
        user=os.environ.get("NATS_USER") or None,
        password=os.environ.get("NATS_PASSWORD") or None,
        creds=os.environ.get("NATS_CREDS") or None,
    )


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    # FastStream's own log lines go to stderr: stdout carries only the points.
    logger = logging.getLogger("classified_consumer")
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.setLevel(logging.INFO)
    app = FastStream(build_broker(options, print_reading, logger), logger=logger)
    try:
        asyncio.run(app.run())
    except NotFoundError:
        stream = Namespace(options.prefix).stream(DP_CLASSIFIED)
        sys.exit(
            f"classified_consumer: stream {stream} not found on {options.nats_url}: "
            "is BUS_PREFIX the fleet's, and has the fleet started (tributary bootstrap)?"
        )


if __name__ == "__main__":
    main()
