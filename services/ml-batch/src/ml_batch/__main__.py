"""``python -m ml_batch [--once] [--interval S]``, installed as ``tributary-ml-batch``.

Without ``--once``: the service — a run every ``ML_INTERVAL_SECONDS`` (or ``--interval``) and
``/health``, ``/ready``, ``/metrics`` on ``PORT``. With ``--once``: one run, a summary line on
stdout, exit status 0 (done) or 1 (failed, reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ml_batch.settings import MlBatchSettings
from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="one run, then exit")
    parser.add_argument(
        "--interval", type=positive_seconds, default=None, metavar="S",
        help="seconds between runs (default ML_INTERVAL_SECONDS, 60)",
    )


def run(once: bool = False, interval: float | None = None) -> None:
    """The job with ``once`` and ``interval`` as the command line gives them."""
    settings = load_settings(MlBatchSettings)
    if interval is not None:
        settings.ml_interval_seconds = interval
    configure_logging("ml-batch", settings.log_level, settings.log_format)
    if not once:
        from ml_batch.app import create_app

        serve(create_app(settings), settings)
        return
    from ml_batch.app import once as run_once

    try:
        result = asyncio.run(run_once(settings))
    except Exception as exc:
        print(f"ml-batch: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"ml-batch: {result.summary()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml_batch", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args.once, args.interval)


if __name__ == "__main__":
    main()
