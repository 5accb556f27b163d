"""``tributary``: operator commands against the bus.

tributary bootstrap                      create/update every stream, bucket and consumer
tributary keys create|list|revoke|rotate  API keys (see `tributary keys --help`)
tributary streams get|set|list|delete|import …   stream classification configs (see
                                         `tributary streams --help`)
tributary devices add|list|disable|enable|import …  the IoT device registry
tributary thresholds import (--mssql-dsn DSN | --alert A.csv [--delta D.csv])   legacy per-sensor
                                         thresholds → stream configs
tributary status                         services, rates, consumer lag, DLQ depth, stream sizes
tributary tail SUBJECT-FILTER            live classified points / alerts (--count, --seconds)
tributary dlq list|replay                dead letters; replay to the original subject if safe
tributary rollout start|promote|rollback|percent|list|report   canary of a classification config
tributary switches list|set|unset        live settings of services (the seeds' feature flags)
tributary csv upload FILE --source S --domain D [--wait]   import a CSV (`tributary csv --help`)
tributary mqtt add|list|remove|broker-config   MQTT broker users (`tributary mqtt --help`)

The ml-batch job is not a `tributary` command: it is ml-batch's own `tributary-ml-batch
[--once] [--interval S]` (or `python -m ml_batch`), installed with services/ml-batch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import nats.errors
import yaml

from tributary_contracts import CONSUMERS, STREAM_CONFIGS_BUCKET, ensure_jetstream
from tributary_operator import (
    csv_cli,
    devices_cli,
    dlq_cli,
    keys_cli,
    mqtt_cli,
    rollout_cli,
    status_cli,
    streams_cli,
    switches_cli,
    tail_cli,
    thresholds_cli,
)
from tributary_operator.settings import OperatorSettings
from tributary_runtime.bus import connect_nats
from tributary_runtime.logs import configure_logging
from tributary_runtime.settings import ServiceSettings, load_settings
from tributary_runtime.stream_configs import ConfigProblem, StreamConfigBucket


async def _bootstrap(settings: OperatorSettings) -> None:
    nc = await connect_nats(settings, "tributary-cli", reconnect_attempts=2)
    try:
        await ensure_jetstream(
            nc.jetstream(),
            settings.namespace,
            consumers=tuple(CONSUMERS),
            replicas=settings.jetstream_replicas,
        )
    finally:
        await nc.close()
    replicas = f", replicas {settings.jetstream_replicas}" if settings.jetstream_replicas else ""
    print(
        f"JetStream objects ready on {settings.nats_url} (prefix {settings.bus_prefix!r}{replicas})"
    )


async def _streams(settings: ServiceSettings, args: argparse.Namespace, checked: Any) -> int:
    nc = await connect_nats(settings, "tributary-cli", reconnect_attempts=2)
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        bucket = StreamConfigBucket(
            await js.key_value(settings.namespace.bucket(STREAM_CONFIGS_BUCKET))
        )
        return await streams_cli.run(args, checked, bucket, sys.stdout, sys.stderr)
    finally:
        await nc.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tributary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("bootstrap", help="create or update streams, buckets and consumers")
    keys_cli.add_parser(commands)
    streams_cli.add_parser(commands)
    devices_cli.add_parser(commands)
    csv_cli.add_parser(commands)
    mqtt_cli.add_parser(commands)
    for module in (status_cli, tail_cli, dlq_cli, thresholds_cli, rollout_cli, switches_cli):
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "csv":  # HTTP to the csv-importer; no NATS settings needed
        raise SystemExit(csv_cli.run(args))
    if args.command == "mqtt":  # files of the local broker; no NATS needed
        raise SystemExit(mqtt_cli.run(args))

    settings = load_settings(OperatorSettings)
    # Commands print their results on stdout (``streams get > f.json``); connection chatter
    # (a "disconnected" warning on every close) would only get in the way. Errors reach stderr.
    configure_logging("tributary-cli", level="ERROR", fmt="console")
    checked: Any = None
    if args.command == "streams":
        # Input is checked before connecting: a bad file never half-reaches the bucket.
        try:
            checked = streams_cli.validate_command(args)
        except ConfigProblem as exc:
            print(f"tributary: invalid input, nothing was written: {exc}", file=sys.stderr)
            raise SystemExit(streams_cli.INVALID) from None
        except (OSError, yaml.YAMLError) as exc:
            print(f"tributary: cannot read the input: {exc}", file=sys.stderr)
            raise SystemExit(streams_cli.INVALID) from None
    try:
        if args.command == "bootstrap":
            asyncio.run(_bootstrap(settings))
        elif args.command == "keys":
            code = asyncio.run(keys_cli.run(settings, args))
            if code:
                raise SystemExit(code)
        elif args.command == "streams":
            code = asyncio.run(_streams(settings, args, checked))
            if code:
                raise SystemExit(code)
        elif args.command == "devices":
            if code := devices_cli.execute(args, settings):
                raise SystemExit(code)
        elif hasattr(args, "handler"):
            code = asyncio.run(args.handler(args, settings))
            if code:
                raise SystemExit(code)
    except (OSError, TimeoutError, nats.errors.NoServersError) as exc:
        print(f"tributary: cannot reach NATS at {settings.nats_url}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
