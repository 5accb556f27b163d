"""CPU per point of the classifier's own work on the many_streams workload, without NATS.

    .venv/bin/python services/classifier/bench/prepare_cpu.py [--streams 10000] [--rounds 10]
        [--fetch 256] [--repeat 5] [--profile]

The same 10,000 streams, configs and messages as ``many_streams.py``, handed to
``RawBatchHandler.prepare`` in fetches of ``--fetch`` messages (parse, classify, alert
lifecycle, output JSON, msg ids), plus the checkpoint bodies of one snapshot per fetch (every
document whose streams moved, as ``PartitionCheckpoint`` writes them). Everything the
classifier computes per point, and none of the nats-py/socket cost that ``many_streams.py``
adds. Each repeat starts from empty state; prints every repeat's µs per point and their
minimum (the least disturbed by other work on this shared machine). ``--profile`` prints the
top functions of one more repeat under cProfile. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Sequence

from many_streams import PER_SOURCE, config_of, raw_messages
from nats.aio.msg import Msg

from classifier.checkpoint import document_writes
from classifier.config_store import StreamConfigStore
from classifier.handler import RawBatchHandler
from classifier.state import ClassifierState
from tributary_contracts import Namespace, stream_config_key
from tributary_runtime.logs import configure_logging
from tributary_runtime.publish import Outgoing, Published

NS = Namespace("cpubench")


class NoOutbox:
    """Never called by ``prepare``: the handler needs an outbox to be built."""

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        raise NotImplementedError

    async def publish(self, message: Outgoing) -> None:
        raise NotImplementedError


def build_store(streams: int) -> StreamConfigStore:
    store = StreamConfigStore(defaults={})
    for k in range(streams):
        key = stream_config_key("infrastructure", f"src-{k // PER_SOURCE}", f"m{k}")
        store.apply(key, config_of(k).model_dump_json().encode(), k + 1, None)
    return store


def one_pass(store: StreamConfigStore, msgs: list[Msg], fetch: int) -> float:
    """Seconds of CPU for prepare + checkpoint bodies of every fetch, from empty state."""
    state = ClassifierState()
    handler = RawBatchHandler(NS, store.resolve, NoOutbox(), state)
    bucket = NS.bucket("classifier-state")
    started = time.process_time()
    for i in range(0, len(msgs), fetch):
        handler.prepare(handler.parse(msgs[i : i + fetch]))
        docs, state.dirty = state.dirty, set()
        document_writes(state, bucket, docs)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fetch", type=int, default=256, help="messages per prepare call")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    configure_logging("classifier-bench", "WARNING")

    store = build_store(args.streams)
    msgs = [
        Msg(None, subject, f"$JS.ACK.S.classifier.1.{n}.{n}.0.0", payload)  # type: ignore[arg-type]
        for n, (subject, payload) in enumerate(raw_messages(NS, args.streams, args.rounds), 1)
    ]
    points = args.streams * args.rounds
    samples = [one_pass(store, msgs, args.fetch) / points * 1e6 for _ in range(args.repeat)]
    print(
        f"{args.streams} streams, {len(msgs)} messages, fetch {args.fetch}: "
        f"µs/pt {' '.join(f'{s:.1f}' for s in samples)}; min {min(samples):.2f}"
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(one_pass, store, msgs, args.fetch)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
