"""``tributary mqtt``: broker users of the repository's Mosquitto configuration.

tributary mqtt add NAME --source S --domain D        a producer writing D/S/<stream>/data
                        [--sensor ID]                 (+ legacy iot/sensors/<ID>/readings)
tributary mqtt add NAME --role gateway                gateway-mqtt (reads every topic)
                        [--topic-prefix P]            topics under P/ only (namespaced fleets)
tributary mqtt list                                   users, roles and topics (no passwords)
tributary mqtt remove NAME...
tributary mqtt broker-config --port 1883              write DIR/mosquitto.conf for this machine

Scopes are those of API keys: repeat --source/--domain/--sensor, ``*`` = any. ``add`` prints the
password as the last line of stdout (shown only this once; again ``add`` replaces it). Files live
in --dir (default $TRIBUTARY_MQTT_DIR or .tributary/mosquitto): users.json, passwd, acl; the
broker whose pid is in DIR/mosquitto.pid is reloaded (SIGHUP) after every change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tributary_operator.mqtt_credentials import (
    REPO_CONFIG,
    ROLES,
    CredentialProblem,
    MqttCredentials,
    broker_dir,
    prepare_broker_dir,
)


def add_parser(commands: Any) -> None:
    mqtt = commands.add_parser(
        "mqtt",
        help="MQTT broker users (producers, gateways)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mqtt.add_argument("--dir", type=Path, default=None, help="the broker's state directory")
    sub = mqtt.add_subparsers(dest="mqtt_command", required=True)
    add = sub.add_parser("add", help="create or replace a user; prints its password last")
    add.add_argument("name", help="user name (= the client id the broker gives it)")
    add.add_argument("--role", choices=ROLES, default="producer")
    add.add_argument("--source", action="append", dest="sources", help="writable source id")
    add.add_argument("--domain", action="append", dest="domains", help="writable domain")
    add.add_argument("--sensor", action="append", dest="sensors", help="legacy sensor id")
    add.add_argument(
        "--topic", action="append", dest="topics", help="any other topic filter it may write"
    )
    add.add_argument("--topic-prefix", default="", help="topic levels in front of every topic")
    sub.add_parser("list", help="users and their topics")
    remove = sub.add_parser("remove", help="remove users")
    remove.add_argument("names", nargs="+")
    config = sub.add_parser("broker-config", help="render the repository config into --dir")
    config.add_argument("--port", type=int, default=1883)
    config.add_argument("--host", default="127.0.0.1")
    config.add_argument("--template", type=Path, default=REPO_CONFIG)


def run(args: argparse.Namespace) -> int:
    directory = args.dir or broker_dir()
    creds = MqttCredentials(directory)
    try:
        if args.mqtt_command == "add":
            password = creds.add(
                args.name,
                args.role,
                topic_prefix=args.topic_prefix,
                sources=args.sources or (),
                domains=args.domains or (),
                sensors=args.sensors or (),
                topics=args.topics or (),
            )
            user = creds.users()[args.name]
            _say(creds, f"{user.role} {user.name}: " + ", ".join(t for _, t in user.topics()))
            print(password)
        elif args.mqtt_command == "list":
            for user in creds.users().values():
                topics = " ".join(f"{access}:{topic}" for access, topic in user.topics())
                print(f"{user.name}\t{user.role}\t{topics}")
        elif args.mqtt_command == "remove":
            gone = creds.remove(args.names)
            missing = sorted(set(args.names) - set(gone))
            _say(creds, f"removed {', '.join(gone) or 'nobody'}")
            if missing:
                print(f"tributary: no such MQTT user: {', '.join(missing)}", file=sys.stderr)
                return 1
        elif args.mqtt_command == "broker-config":
            path = prepare_broker_dir(directory, args.template.read_text(), args.port, args.host)
            print(path)
    except CredentialProblem as exc:
        print(f"tributary: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tributary: cannot write the broker files in {directory}: {exc}", file=sys.stderr)
        return 1
    return 0


def _say(creds: MqttCredentials, what: str) -> None:
    running = "broker reloaded" if creds.broker_pid() else "no broker running on this directory"
    print(f"{what} ({running})", file=sys.stderr)
