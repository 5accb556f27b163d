"""Longer fuzz runs than the test suite's (not a test):

    .venv/bin/python -m tests.security.run_fuzz --http-examples 200 --ws-examples 300

Starts gateway-http and gateway-ws in this process on a fresh bus namespace of the local NATS
(deleted afterwards), runs schemathesis against gateway-http's OpenAPI document and random
frames against gateway-ws, prints each report and exits 1 if any 5xx, crash or lost point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from dataclasses import dataclass

import nats

from tests.security.fuzz import fuzz_http, fuzz_ws
from tests.streams import drop_namespace
from tributary_contracts import Namespace, ensure_jetstream
from tributary_runtime.logs import configure_logging


@dataclass
class Servers:
    nats_url: str


async def main_async(args: argparse.Namespace) -> int:
    configure_logging("fuzz", "ERROR", "console")
    servers = Servers(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    prefix = f"fz{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream()
    ns = Namespace(prefix)
    await ensure_jetstream(js, ns)
    failed = False
    try:
        if args.http_examples:
            report = await fuzz_http(servers, prefix, nc, args.http_examples)
            print(f"gateway-http (schemathesis, {args.http_examples} cases per operation): "
                  f"{report.summary()}")
            for failure in report.failures:
                print(f"  FAIL {failure}")
            failed |= bool(report.failures)
        if args.ws_examples:
            report = await fuzz_ws(servers, prefix, nc, args.ws_examples)
            print(f"gateway-ws (hypothesis, {args.ws_examples} sessions): {report.summary()}")
            for failure in report.failures:
                print(f"  FAIL {failure}")
            failed |= bool(report.failures)
    finally:
        await drop_namespace(js, ns)
        await nc.close()
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http-examples", type=int, default=100,
                        help="schemathesis cases per operation (0: skip)")
    parser.add_argument("--ws-examples", type=int, default=200,
                        help="random WebSocket sessions of up to 12 frames (0: skip)")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
