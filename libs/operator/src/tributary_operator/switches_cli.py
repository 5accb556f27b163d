"""``tributary switches``: live settings of services (the ``switches`` bucket).

  tributary switches list
  tributary switches set SERVICE SETTING VALUE     e.g. set gateway-http DISABLED_DOMAINS finance
  tributary switches unset SERVICE SETTING         back to the service's environment value

Only the settings a service reads live take effect (gateway-http: UNIVERSAL_API_ENABLED,
DISABLED_DOMAINS); they apply at once, without a restart.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from tributary_contracts import LIVE_SETTINGS, SWITCHES_BUCKET
from tributary_runtime.kvwatch import kv_keys
from tributary_runtime.switches import switch_key


def add_parser(commands: Any) -> None:
    switches = commands.add_parser(
        "switches",
        help="live settings of services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = switches.add_subparsers(dest="switches_command", required=True)
    sub.add_parser("list", help="every live setting set").set_defaults(handler=run)
    put = sub.add_parser("set", help="set a live setting")
    put.add_argument("service")
    put.add_argument("setting")
    put.add_argument("value")
    put.set_defaults(handler=run)
    unset = sub.add_parser("unset", help="back to the environment value")
    unset.add_argument("service")
    unset.add_argument("setting")
    unset.set_defaults(handler=run)


async def run(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    command = args.switches_command
    if command != "list":
        live = LIVE_SETTINGS.get(args.service, ())
        if args.setting.upper() not in live:
            print(
                f"tributary: {args.service} reads no live setting {args.setting.upper()!r} "
                f"(live: {', '.join(live) or 'none'})",
                file=err,
            )
            return 2
    from tributary_runtime.bus import connect_nats

    nc = await connect_nats(settings, "tributary-switches", reconnect_attempts=2)
    try:
        kv = await nc.jetstream().key_value(settings.namespace.bucket(SWITCHES_BUCKET))
        if command == "list":
            for key in sorted(await kv_keys(kv)):
                entry = await kv.get(key)
                value = (entry.value or b"").decode(errors="replace")
                print(f"{key} = {value}", file=out)
        elif command == "set":
            key = switch_key(args.service, args.setting)
            await kv.put(key, args.value.encode())
            print(f"{key} = {args.value}", file=out)
        else:
            key = switch_key(args.service, args.setting)
            await kv.delete(key)
            print(f"{key} unset", file=out)
    finally:
        await nc.close()
    return 0
