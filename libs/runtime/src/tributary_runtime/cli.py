"""``tributary``: operator commands against the bus.

tributary bootstrap                      create/update every stream, bucket and consumer
tributary keys create --role admin       print a new API key (last line of output)
tributary streams get|set|list|delete|import …   stream classification configs (see
                                         `tributary streams --help`)
tributary csv upload FILE --source S --domain D [--wait]   import a CSV (`tributary csv --help`)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import nats.errors
import yaml

from tributary_contracts import API_KEYS_BUCKET, CONSUMERS, STREAM_CONFIGS_BUCKET, ensure_jetstream
from tributary_runtime import csv_cli, streams_cli
from tributary_runtime.apikeys import ApiKeyStore, Role
from tributary_runtime.bus import connect_nats
from tributary_runtime.logs import configure_logging
from tributary_runtime.settings import ServiceSettings, load_settings
from tributary_runtime.stream_configs import ConfigProblem, StreamConfigBucket


async def _bootstrap(settings: ServiceSettings) -> None:
    nc = await connect_nats(settings, "tributary-cli", reconnect_attempts=2)
    try:
        await ensure_jetstream(nc.jetstream(), settings.namespace, consumers=tuple(CONSUMERS))
    finally:
        await nc.close()
    print(f"JetStream objects ready on {settings.nats_url} (prefix {settings.bus_prefix!r})")


async def _create_key(settings: ServiceSettings, role: Role, name: str) -> None:
    nc = await connect_nats(settings, "tributary-cli", reconnect_attempts=2)
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        store = ApiKeyStore(await js.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
        key = await store.create(role, name)
    finally:
        await nc.close()
    print(
        f"created {role} key{f' for {name}' if name else ''}; it is shown only once:",
        file=sys.stderr,
    )
    print(key)


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
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it as the last line")
    create.add_argument("--role", type=Role, choices=list(Role), required=True)
    create.add_argument("--name", default="", help="who or what the key is for")
    streams_cli.add_parser(commands)
    csv_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "csv":  # HTTP to the csv-importer; no NATS settings needed
        raise SystemExit(csv_cli.run(args))

    settings = load_settings(ServiceSettings)
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
        elif args.command == "keys" and args.keys_command == "create":
            asyncio.run(_create_key(settings, args.role, args.name))
        elif args.command == "streams":
            code = asyncio.run(_streams(settings, args, checked))
            if code:
                raise SystemExit(code)
    except (OSError, TimeoutError, nats.errors.NoServersError) as exc:
        print(f"tributary: cannot reach NATS at {settings.nats_url}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
