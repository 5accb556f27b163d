"""``tributary streams …``: stream configurations in the ``stream-configs`` bucket, from a shell.

    tributary streams get DOMAIN SOURCE STREAM          print the config JSON with its version
    tributary streams set DOMAIN SOURCE STREAM (--file F | JSON)   validate, store, print it
    tributary streams list [--domain D]                 one line per config: scope, version, limits
    tributary streams delete DOMAIN SOURCE STREAM
    tributary streams import FILE                       validate every entry, then store them all

``*`` as SOURCE (and DOMAIN, with SOURCE ``*``) makes a default; quote it in the shell. Files
are YAML or JSON (YAML is a superset; ``-`` reads stdin). Exit codes: 0 done, 1 not found or bus
unreachable, 2 invalid input (nothing was written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from tributary_runtime.stream_configs import (
    ConfigProblem,
    StreamConfigBucket,
    StreamScope,
    import_entries,
    parse_config,
    parse_import,
)

NOT_FOUND = 1
INVALID = 2


def add_parser(commands: Any) -> None:
    """Add ``streams`` and its subcommands to the ``tributary`` parser."""
    streams = commands.add_parser(
        "streams",
        help="manage stream classification configs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = streams.add_subparsers(dest="streams_command", required=True)

    def scoped(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        parser.add_argument("domain", help="domain, or '*' (with source '*') for a global default")
        parser.add_argument("source_id", help="source id, or '*' for a domain-wide default")
        parser.add_argument("stream_id", help="stream id or stream type")
        return parser

    scoped("get", "print a stream's config with its version")
    setter = scoped("set", "validate and store a stream's config")
    given = setter.add_mutually_exclusive_group(required=True)
    given.add_argument("config", nargs="?", help="the config as inline JSON")
    given.add_argument("--file", "-f", help="YAML or JSON file holding the config ('-': stdin)")
    scoped("delete", "delete a stream's config")
    lister = sub.add_parser("list", help="list stored configs with a one-line summary")
    lister.add_argument("--domain", help="only this domain ('*': the global defaults)")
    importer = sub.add_parser("import", help="validate every entry of FILE, then store them all")
    importer.add_argument(
        "file",
        help="YAML or JSON: a list of {domain, source_id, stream_id, "
        "config}, or a mapping 'domain/source/stream' → config ('-': stdin)",
    )


def validate_command(args: argparse.Namespace) -> Any:
    """Everything that can be checked before connecting: the parsed input of the command, or
    ``ConfigProblem``/``OSError``/``yaml.YAMLError``."""
    command = args.streams_command
    if command == "import":
        return parse_import(_load(args.file))
    if command == "list":
        return None
    scope = StreamScope.parse(args.domain, args.source_id, args.stream_id)
    if command == "set":
        document = _load(args.file) if args.file else _parse_inline(args.config)
        return scope, parse_config(document)
    return scope


def _load(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _parse_inline(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigProblem([("config", f"is not valid JSON: {exc}")]) from None


async def run(
    args: argparse.Namespace, checked: Any, bucket: StreamConfigBucket, out: TextIO, err: TextIO
) -> int:
    """Run a validated ``streams`` command against ``bucket``; returns the exit code."""
    command = args.streams_command
    if command == "get":
        stored = await bucket.get(checked)
        if stored is None:
            print(f"tributary: no config stored for {checked}", file=err)
            return NOT_FOUND
        if stored.config is None:
            print(
                f"tributary: the config stored for {checked} is invalid: {stored.problem}", file=err
            )
            return INVALID
        print(json.dumps(stored.to_json(), indent=2), file=out)
    elif command == "set":
        scope, config = checked
        stored = await bucket.put(scope, config)
        print(f"stored {scope} version {stored.version}", file=err)
        print(json.dumps(stored.to_json(), indent=2), file=out)
    elif command == "delete":
        if not await bucket.delete(checked):
            print(f"tributary: no config stored for {checked}", file=err)
            return NOT_FOUND
        print(f"deleted {checked}", file=err)
    elif command == "list":
        for stored in await bucket.list(args.domain):
            print(f"{stored.scope}\tv{stored.version}\t{stored.summary()}", file=out)
    elif command == "import":
        written = await import_entries(bucket, checked)
        for stored in written:
            print(f"{stored.scope}\tv{stored.version}", file=out)
        print(f"imported {len(written)} stream configs", file=err)
    return 0
