"""``tributary keys create|list|revoke|rotate``: API keys from the shell (audited as ``cli``).

tributary keys create --role admin [--name ops]
tributary keys create --role source_writer --source server-01 --source server-02 \\
                      --domain infrastructure                 (``*`` = any)
tributary keys create --role read_only --name dashboards
tributary keys list                                   (ids, roles, scopes, status; no secrets)
tributary keys revoke KEY_ID
tributary keys rotate KEY_ID [--overlap-seconds 86400]
tributary keys import FILE [--dry-run]   legacy key records (CSV export of the legacy api_keys
                      table, JSON list or JSON lines: key_hash, role, source_ids, domains,
                      is_active, name): the old key texts keep working with the same roles

``create`` and ``rotate`` print the key as the last line of stdout (shown only this once); the
rest goes to stderr.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any, TextIO

from tributary_access.apikeys import ApiKeyStore, KeyProblem, Role
from tributary_access.audit import AuditLog
from tributary_access.key_admin import (
    DEFAULT_OVERLAP_SECONDS,
    Actor,
    create_key,
    import_legacy_key,
    parse_legacy_key,
    read_legacy_keys,
    revoke_key,
    rotate_key,
)
from tributary_contracts import API_KEYS_BUCKET, ensure_jetstream
from tributary_runtime.bus import connect_nats
from tributary_runtime.settings import ServiceSettings

ROLE_NAMES = {r.value: r for r in Role} | {"ingest": Role.SOURCE_WRITER}


def add_parser(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="manage API keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print it as the last line")
    create.add_argument(
        "--role",
        choices=sorted(ROLE_NAMES),
        required=True,
        help="admin, source_writer or read_only (ingest = source_writer on any source)",
    )
    create.add_argument("--name", default="", help="who or what the key is for")
    create.add_argument(
        "--source", action="append", dest="sources", help="source_writer: writable source id"
    )
    create.add_argument(
        "--domain", action="append", dest="domains", help="source_writer: writable domain"
    )
    keys.add_parser("list", help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id")
    rotate = keys.add_parser("rotate", help="new key; the old one valid for the overlap")
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap-seconds", type=float, default=DEFAULT_OVERLAP_SECONDS)
    imp = keys.add_parser(
        "import", help="import legacy key records (SHA-256, role, scopes, enabled)"
    )
    imp.add_argument("file", help="CSV (header row), JSON list or JSON lines; - for stdin")
    imp.add_argument("--dry-run", action="store_true", help="check the file, store nothing")


def scope_of(args: argparse.Namespace) -> tuple[Role, list[str] | None, list[str] | None]:
    """Role and scope from the arguments (``KeyProblem`` when they do not fit together)."""
    legacy = args.role == "ingest"
    role = ROLE_NAMES[args.role]
    sources, domains = args.sources, args.domains
    if role is Role.SOURCE_WRITER:
        if legacy:
            return role, sources or ["*"], domains or ["*"]
        if not sources or not domains:
            raise KeyProblem(
                2, "--role source_writer needs --source and --domain (each repeatable; * = any)"
            )
    elif sources or domains:
        raise KeyProblem(2, "--source/--domain apply to --role source_writer only")
    return role, sources, domains


def describe(record: Any) -> str:
    shown = record.public()
    scope = ""
    if record.role is Role.SOURCE_WRITER:
        scope = f"  sources={','.join(record.source_ids)} domains={','.join(record.domains)}"
    extra = f"  expires={shown['expires_at']}" if shown.get("expires_at") else ""
    origin = "  origin=legacy" if record.origin == "legacy" else ""
    return (
        f"{record.key_id}  {record.role.value:<13} {shown['status']:<8} "
        f"{record.name!r}{scope}{extra}{origin}"
    )


async def run(
    settings: ServiceSettings,
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run one ``keys`` command; returns the exit status."""
    try:
        scope = scope_of(args) if args.keys_command == "create" else None
    except KeyProblem as exc:
        print(f"tributary: {exc.message}", file=err)
        return 2
    if args.keys_command == "import":
        return await import_file(settings, args, out, err)
    nc = await connect_nats(settings, "tributary-cli", reconnect_attempts=2)
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        store = ApiKeyStore(await js.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
        audit = AuditLog(js, settings.namespace, "cli")
        actor = Actor(operator=_operator())
        try:
            if args.keys_command == "create":
                assert scope is not None
                role, sources, domains = scope
                issued = await create_key(store, audit, actor, role, args.name, sources, domains)
                print(f"created {describe(issued.record)}", file=err)
                print("the key is shown only once:", file=err)
                print(issued.key, file=out)
            elif args.keys_command == "list":
                for record in await store.list():
                    print(describe(record), file=out)
            elif args.keys_command == "revoke":
                record = await revoke_key(store, audit, actor, args.key_id)
                print(f"revoked {describe(record)}", file=out)
            elif args.keys_command == "rotate":
                issued, old = await rotate_key(
                    store, audit, actor, args.key_id, args.overlap_seconds
                )
                print(f"old: {describe(old)}", file=err)
                print(f"new: {describe(issued.record)}", file=err)
                print("the new key is shown only once:", file=err)
                print(issued.key, file=out)
        except KeyProblem as exc:
            print(f"tributary: {exc.message}", file=err)
            return 1
        return 0
    finally:
        await nc.close()


async def import_file(
    settings: ServiceSettings, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    """``keys import``: every row checked first (exit 2 naming each bad row, nothing stored),
    then stored; prints one line per row (imported / skipped: already imported) and a summary."""
    try:
        rows = read_legacy_keys(_read_text(args.file))
    except (OSError, ValueError) as exc:
        print(f"tributary: cannot read {args.file}: {exc}", file=err)
        return 2
    parsed, problems = [], []
    for number, row in enumerate(rows, start=1):
        try:
            parsed.append((number, parse_legacy_key(row)))
        except ValueError as exc:
            problems.append(f"row {number}: {exc}")
    for problem in problems:
        print(f"tributary: {problem}", file=err)
    if problems or not parsed:
        if not parsed and not problems:
            print(f"tributary: {args.file} holds no key records", file=err)
        return 2
    if args.dry_run:
        print(f"{len(parsed)} key record(s) valid; nothing stored (--dry-run)", file=out)
        return 0
    nc = await connect_nats(settings, "tributary-cli", reconnect_attempts=2)
    created = skipped = 0
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        store = ApiKeyStore(await js.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
        audit = AuditLog(js, settings.namespace, "cli")
        actor = Actor(operator=_operator())
        for number, key in parsed:
            try:
                record, new = await import_legacy_key(store, audit, actor, key)
            except KeyProblem as exc:
                print(f"tributary: row {number}: {exc.message}", file=err)
                return 1
            created += new
            skipped += not new
            verb = "imported" if new else "skipped (already imported)"
            print(f"row {number}: {verb} {describe(record)}", file=out)
    finally:
        await nc.close()
    print(f"{created} imported, {skipped} skipped", file=out)
    return 0


def _read_text(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text("utf-8")


def _operator() -> str | None:
    try:
        return getpass.getuser()
    except Exception:
        return None
