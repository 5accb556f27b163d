"""``tributary thresholds import``: the legacy per-sensor thresholds as stream configurations.

    tributary thresholds import --mssql-dsn mssql://user:pass@host:1433/iot_monitoring_system
    tributary thresholds import --alert alert_thresholds.csv --delta delta_thresholds.csv
        [--replace] [--dry-run] [--odbc-driver NAME]

Reads ``dbo.alert_thresholds`` and ``dbo.delta_thresholds`` (from the SQL Server, or from CSV
exports of them with a header row) and stores one config per sensor at ``iot/*/<sensor_id>``
(``tributary_operator.thresholds``: range → critical = ALERT, delta → anomaly = WARNING). Prints
one line per sensor — created, updated (``--replace``), unchanged, or skipped with why — then a
summary. Exit codes: 0 done (even with skipped rows: they are listed), 1 bus or database
unreachable, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

from tributary_contracts import DEVICES_BUCKET, STREAM_CONFIGS_BUCKET, ensure_jetstream
from tributary_operator.thresholds import (
    import_thresholds,
    merge_rows,
    read_csv,
    read_sqlserver,
)
from tributary_runtime.devices import DeviceRegistry
from tributary_runtime.stream_configs import StreamConfigBucket


def add_parser(commands: Any) -> None:
    thresholds = commands.add_parser(
        "thresholds",
        help="import the legacy per-sensor thresholds as stream configs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="thresholds_command", required=True)
    imp = thresholds.add_parser("import", help="alert_thresholds + delta_thresholds → configs")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--mssql-dsn", help="the legacy SQL Server (same forms as MSSQL_DSN)")
    source.add_argument("--alert", help="CSV export of dbo.alert_thresholds")
    imp.add_argument("--delta", help="CSV export of dbo.delta_thresholds (with --alert)")
    imp.add_argument("--odbc-driver", default="FreeTDS", help="ODBC driver for mssql:// DSNs")
    imp.add_argument("--tds-version", default="7.4", help="TDS version for FreeTDS")
    imp.add_argument(
        "--replace", action="store_true", help="overwrite a different config stored there"
    )
    imp.add_argument("--dry-run", action="store_true", help="report only; store nothing")
    imp.set_defaults(handler=run)


def _read(path: str) -> str:
    return Path(path).read_text("utf-8")


async def run(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    try:
        if args.mssql_dsn:
            alerts, deltas = await asyncio.to_thread(
                read_sqlserver, args.mssql_dsn, args.odbc_driver, args.tds_version
            )
        else:
            alerts = read_csv(await asyncio.to_thread(_read, args.alert))
            deltas = read_csv(await asyncio.to_thread(_read, args.delta)) if args.delta else []
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"tributary: cannot read the thresholds: {exc}", file=err)
        return 2
    except Exception as exc:  # the database driver's own errors
        print(
            f"tributary: cannot read the legacy SQL Server: {type(exc).__name__}: {exc}", file=err
        )
        return 1
    sensors, skipped_rows = merge_rows(alerts, deltas)

    from tributary_runtime.bus import connect_nats

    nc = await connect_nats(settings, "tributary-thresholds", reconnect_attempts=2)
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        ns = settings.namespace
        bucket = StreamConfigBucket(await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET)))
        registry = DeviceRegistry(await js.key_value(ns.bucket(DEVICES_BUCKET)), cache_seconds=0)
        types: dict[int, str | None] = {}
        for sensor_id in sensors:
            known = await registry.read_sensor(sensor_id)
            types[sensor_id] = known.sensor_type if known is not None else None
        report = await import_thresholds(
            bucket, sensors, types, replace=args.replace, dry_run=args.dry_run
        )
    finally:
        await nc.close()
    report.skipped[:0] = skipped_rows
    for line in report.lines():
        print(line, file=out)
    if args.dry_run:
        print("(--dry-run: nothing was stored)", file=out)
    return 0
