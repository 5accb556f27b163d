"""``tributary rollout``: canary rollouts of classification configs (``rollouts`` bucket).

  tributary rollout start NAME --domain D (--percent P | --source S … | --glob G …)
                          --config STREAM=FILE … [--note TEXT] [--replace]
  tributary rollout promote NAME      the candidate decides for the canary sources
  tributary rollout rollback NAME     the rollout stops having any effect
  tributary rollout percent NAME P    another share of sources (10 → 50 → 100)
  tributary rollout list
  tributary rollout report NAME [--limit N] [--json]   agreement per stream type, disagreements

``--config STREAM=FILE``: the candidate config (JSON/YAML, a StreamConfig) of a stream id or
stream type (``*``: every stream). The classifier watches the bucket: every command takes
effect on the next input, without a restart. ``report`` reads PostgreSQL (``POSTGRES_DSN``).
Exit codes: 0 done, 1 bus or database unreachable, 2 invalid input, 3 no such rollout, 4 the
rollout changed meanwhile (retry).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from tributary_contracts import ROLLOUTS_BUCKET, CanarySelector, Rollout, RolloutState
from tributary_runtime.kvwatch import kv_keys
from tributary_runtime.stream_configs import ConfigProblem, parse_config

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/tributary"
INVALID, MISSING, CONFLICT = 2, 3, 4

AGREEMENT = """
SELECT stream_type, state, points, agree, disagree, agreement_pct, sources
FROM rollout_comparison WHERE rollout = $1 ORDER BY stream_type, state
"""
DISAGREEMENTS = """
SELECT time, source_id, stream_id, value, state, live_cls, live_rule, shadow_cls, shadow_rule,
       shadow_reason
FROM rollout_verdicts WHERE rollout = $1 AND live_cls <> shadow_cls
ORDER BY time DESC, source_id, stream_id LIMIT $2
"""


def add_parser(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout",
        help="canary rollouts of classification configs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = rollout.add_subparsers(dest="rollout_command", required=True)
    start = sub.add_parser("start", help="start a canary in shadow mode")
    start.add_argument("name")
    start.add_argument("--domain", required=True)
    start.add_argument("--percent", type=float, default=0, help="share of sources, 0..100")
    start.add_argument("--source", action="append", default=[], help="a source id (repeatable)")
    start.add_argument("--glob", action="append", default=[], help="a source glob (repeatable)")
    start.add_argument(
        "--config",
        action="append",
        default=[],
        required=True,
        metavar="STREAM=FILE",
        help="candidate config of a stream id/type, or *",
    )
    start.add_argument("--note", default="")
    start.add_argument("--replace", action="store_true", help="overwrite an existing rollout")
    start.set_defaults(handler=run_start)
    for name, state, text in (
        ("promote", RolloutState.PROMOTED, "the candidate decides for the canary sources"),
        ("rollback", RolloutState.ROLLED_BACK, "the rollout stops having any effect"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("name")
        command.set_defaults(handler=run_state, state=state)
    percent = sub.add_parser("percent", help="change the share of sources")
    percent.add_argument("name")
    percent.add_argument("percent", type=float)
    percent.set_defaults(handler=run_percent)
    listing = sub.add_parser("list", help="every rollout and its state")
    listing.set_defaults(handler=run_list)
    report = sub.add_parser("report", help="agreement per stream type and disagreements")
    report.add_argument("name")
    report.add_argument("--limit", type=int, default=20, help="disagreements shown")
    report.add_argument("--json", action="store_true")
    report.add_argument("--dsn", default=None, help=f"PostgreSQL (POSTGRES_DSN, {DEFAULT_DSN})")
    report.set_defaults(handler=run_report)


def build_rollout(args: argparse.Namespace, now: datetime | None = None) -> Rollout:
    """The Rollout of ``rollout start``'s arguments; ``ConfigProblem`` naming what is wrong."""
    configs = {}
    for item in args.config:
        scope, eq, path = item.partition("=")
        if not eq or not scope or not path:
            raise ConfigProblem([("--config", f"{item!r} must be STREAM=FILE")])
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigProblem([("--config", f"cannot read {path}: {exc}")]) from None
        configs[scope] = parse_config(data, f"--config {scope}")
    try:
        return Rollout(
            name=args.name,
            domain=args.domain,
            configs=configs,
            note=args.note,
            selector=CanarySelector(sources=args.source, globs=args.glob, percent=args.percent),
            updated_at=now or datetime.now(UTC),
        )
    except ValidationError as exc:
        raise ConfigProblem(
            [(".".join(map(str, e["loc"])) or "rollout", e["msg"]) for e in exc.errors()]
        ) from None


async def _bucket(settings: Any) -> tuple[Any, Any]:
    from tributary_runtime.bus import connect_nats

    nc = await connect_nats(settings, "tributary-rollout", reconnect_attempts=2)
    js = nc.jetstream()
    try:
        kv = await js.key_value(settings.namespace.bucket(ROLLOUTS_BUCKET))
    except Exception:
        from tributary_contracts import ensure_jetstream

        await ensure_jetstream(js, settings.namespace)
        kv = await js.key_value(settings.namespace.bucket(ROLLOUTS_BUCKET))
    return nc, kv


async def run_start(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    try:
        rollout = build_rollout(args)
    except ConfigProblem as exc:
        print(f"tributary: invalid rollout, nothing was written: {exc}", file=err)
        return INVALID
    nc, kv = await _bucket(settings)
    try:
        payload = rollout.model_dump_json().encode()
        if args.replace:
            revision = await kv.put(rollout.name, payload)
        else:
            try:
                revision = await kv.create(rollout.name, payload)
            except Exception as exc:
                if "exist" not in str(exc).lower() and "wrong last sequence" not in str(exc):
                    raise
                print(f"tributary: rollout {rollout.name!r} exists (use --replace)", file=err)
                return CONFLICT
    finally:
        await nc.close()
    print(f"rollout {rollout.name}: shadow, revision {revision}", file=out)
    return 0


async def _change(
    args: argparse.Namespace, settings: Any, err: TextIO, change: Any
) -> tuple[int, Rollout | None, int]:
    nc, kv = await _bucket(settings)
    try:
        try:
            entry = await kv.get(args.name)
        except Exception:
            entry = None
        if entry is None or not entry.value:
            print(f"tributary: no rollout named {args.name!r}", file=err)
            return MISSING, None, 0
        rollout = change(Rollout.model_validate_json(entry.value))
        rollout.updated_at = datetime.now(UTC)
        try:
            revision = await kv.update(
                args.name, rollout.model_dump_json().encode(), last=entry.revision
            )
        except Exception as exc:
            print(f"tributary: rollout {args.name!r} changed meanwhile, retry: {exc}", file=err)
            return CONFLICT, None, 0
    finally:
        await nc.close()
    return 0, rollout, revision


async def run_state(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    def set_state(rollout: Rollout) -> Rollout:
        rollout.state = args.state
        return rollout

    code, rollout, revision = await _change(args, settings, err, set_state)
    if rollout is not None:
        print(f"rollout {rollout.name}: {rollout.state.value}, revision {revision}", file=out)
    return code


async def run_percent(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    if not 0 < args.percent <= 100:
        print("tributary: percent must be in (0, 100]", file=err)
        return INVALID

    def set_percent(rollout: Rollout) -> Rollout:
        rollout.selector = rollout.selector.model_copy(update={"percent": args.percent})
        return rollout

    code, rollout, revision = await _change(args, settings, err, set_percent)
    if rollout is not None:
        print(f"rollout {rollout.name}: {args.percent} % of sources, revision {revision}", file=out)
    return code


async def run_list(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    nc, kv = await _bucket(settings)
    try:
        for key in sorted(await kv_keys(kv)):
            entry = await kv.get(key)
            r = Rollout.model_validate_json(entry.value)
            s = r.selector
            print(
                f"{r.name:<24} {r.state.value:<12} {r.domain:<16} percent={s.percent:g} "
                f"sources={len(s.sources)} globs={len(s.globs)} configs={','.join(r.configs)} "
                f"updated={r.updated_at.isoformat()} rev={entry.revision}",
                file=out,
            )
    finally:
        await nc.close()
    return 0


async def report(dsn: str, name: str, limit: int) -> dict[str, Any]:
    """Agreement per stream type and the latest disagreements of rollout ``name``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        agreement = [dict(r) for r in await conn.fetch(AGREEMENT, name)]
        disagreements = [dict(r) for r in await conn.fetch(DISAGREEMENTS, name, limit)]
    finally:
        await conn.close()
    for row in agreement:
        row["agreement_pct"] = float(row["agreement_pct"])
    for row in disagreements:
        row["time"] = row["time"].isoformat()
    return {"rollout": name, "agreement": agreement, "disagreements": disagreements}


async def run_report(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    dsn = args.dsn or os.environ.get("POSTGRES_DSN") or DEFAULT_DSN
    try:
        result = await report(dsn, args.name, max(args.limit, 0))
    except OSError as exc:
        print(f"tributary: cannot reach PostgreSQL: {exc}", file=err)
        return 1
    if args.json:
        out.write(json.dumps(result) + "\n")
        return 0
    print(f"rollout {args.name}: agreement per stream type", file=out)
    print(
        f"  {'stream type':<24} {'state':<10} {'points':>8} {'agree':>8} {'disagree':>8} "
        f"{'agree %':>8} {'sources':>8}",
        file=out,
    )
    for r in result["agreement"]:
        print(
            f"  {r['stream_type']:<24} {r['state']:<10} {r['points']:>8} {r['agree']:>8} "
            f"{r['disagree']:>8} {r['agreement_pct']:>8.2f} {r['sources']:>8}",
            file=out,
        )
    print(f"latest disagreements (at most {args.limit})", file=out)
    for d in result["disagreements"]:
        print(
            f"  {d['time']}  {d['source_id']}/{d['stream_id']} = {d['value']:g}: live "
            f"{d['live_cls']} ({d['live_rule']}), shadow {d['shadow_cls']} "
            f"({d['shadow_rule']}): {d['shadow_reason']}",
            file=out,
        )
    return 0
