"""``tributary csv …``: CSV imports through the csv-importer's HTTP API, from a shell.

    tributary csv upload FILE --source S --domain D [--wait] [options]   start an import job
    tributary csv status JOB_ID [--wait]                                  show (or follow) a job

The file is streamed to ``POST /ingest/csv`` in 64 KiB pieces (never read whole into memory).
Without ``--wait`` the job id is printed (last line of stdout) as soon as the importer has the
file. With ``--wait`` a progress line (rows, percent, points/s, ETA) follows the job until it
ends, then a summary with the first per-row errors (``row`` = the line number in the file, as an
editor shows it) and their total count.

The importer is ``--url`` or ``$TRIBUTARY_CSV_URL`` (default http://127.0.0.1:8003); the key
(``ingest`` or ``admin`` role) is ``--api-key`` or ``$TRIBUTARY_API_KEY``.

Exit codes: 0 the job completed (or was queued, without ``--wait``) with no rejected row;
1 the job failed or was cancelled, or the importer could not be reached / answered 5xx;
2 invalid input (unreadable file, the importer refused the upload: 4xx, its message shown);
3 the job completed but some rows or cells were rejected (see the summary).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TextIO

import httpx

from tributary_contracts.ports import local_url

DEFAULT_URL = local_url("csv-importer")
URL_ENV = "TRIBUTARY_CSV_URL"
KEY_ENV = "TRIBUTARY_API_KEY"
FINISHED = ("completed", "failed", "cancelled")

OK = 0
FAILED = 1
INVALID = 2
COMPLETED_WITH_ERRORS = 3

BAR_WIDTH = 28
NON_TTY_EVERY_SECONDS = 5.0
MAX_POLL_FAILURES = 30
"""Consecutive failed polls (importer restarting, network blip) before giving up on a job."""

# Form fields of POST /ingest/csv (contract + the importer's README) → CLI options.
FORM_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("format", "--format", "wide, long or auto (default: auto)"),
    ("timestamp_column", "--timestamp-column", "column of each row's time (default: timestamp)"),
    ("value_columns", "--value-columns", "wide format: comma or JSON list (default: numeric ones)"),
    ("timestamp_format", "--timestamp-format", "unix, iso8601 or auto (default: auto)"),
    ("timestamp_unit", "--timestamp-unit", "s, ms or us for unix times"),
    ("delimiter", "--delimiter", "one character, 'tab' or auto (default: auto)"),
    ("decimal", "--decimal", "'.' or ',' (default: '.')"),
    ("header", "--header", "true or false: whether line 1 names the columns (default: true)"),
    ("columns", "--columns", "column names when --header false (comma or JSON list)"),
    ("encoding", "--encoding", "utf-8, latin-1 or auto (default: auto)"),
)


class CliProblem(Exception):
    """Something the user can fix; ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_parser(commands: Any) -> None:
    """Add ``csv`` and its subcommands to the ``tributary`` parser."""
    csv = commands.add_parser(
        "csv",
        help="import CSV files through the csv-importer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = csv.add_subparsers(dest="csv_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url", default=None, help=f"importer base URL (${URL_ENV}, default {DEFAULT_URL})"
        )
        parser.add_argument("--api-key", default=None, help=f"API key (${KEY_ENV})")
        parser.add_argument(
            "--wait", action="store_true", help="follow the job with a progress bar until it ends"
        )
        parser.add_argument(
            "--poll-interval", type=float, default=0.5, help="seconds between status polls"
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="with --wait: give up waiting after this many seconds (the job goes on)",
        )
        parser.add_argument(
            "--errors-shown", type=int, default=10, help="per-row errors listed in the summary"
        )

    upload = sub.add_parser("upload", help="upload FILE as a new import job")
    upload.add_argument("file", help="the CSV file (streamed, any size)")
    upload.add_argument("--source", "--source-id", dest="source_id", help="source of the points")
    upload.add_argument("--domain", required=True, help="domain of the points (e.g. iot)")
    for name, flag, help_text in FORM_OPTIONS:
        upload.add_argument(
            flag, dest=f"form_{name}", metavar=name.upper(), default=None, help=help_text
        )
    common(upload)
    status = sub.add_parser("status", help="show an import job (with --wait: follow it)")
    status.add_argument("job_id")
    common(status)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a ``csv`` command; returns the exit code (every problem is one line on ``err``,
    default stderr; the job id goes to ``out``, default stdout)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        url = (args.url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = args.api_key or os.environ.get(KEY_ENV)
        if not key:
            raise CliProblem(f"no API key: pass --api-key or set ${KEY_ENV}", INVALID)
        with httpx.Client(
            base_url=url, headers={"X-API-Key": key}, timeout=httpx.Timeout(30.0, read=300.0)
        ) as client:
            if args.csv_command == "upload":
                job = upload(client, args, url, err)
                print(
                    f"job {job['job_id']} {job['status']}: {job.get('rows_total') or 0:,} rows, "
                    f"format {job.get('format')}, value columns "
                    f"{', '.join(job.get('value_columns') or []) or '-'}",
                    file=err,
                )
                job_id = str(job["job_id"])
            else:
                job_id = args.job_id
            if not args.wait:
                if args.csv_command == "status":
                    job = fetch_job(client, job_id, url)
                    summarize(job, err, args.errors_shown)
                print(job_id, file=out)
                return OK if args.csv_command == "upload" else exit_code(job)
            job = follow(client, job_id, url, args.poll_interval, args.timeout, err)
            summarize(job, err, args.errors_shown)
            print(job_id, file=out)
            return exit_code(job)
    except CliProblem as exc:
        print(f"tributary: {exc}", file=err)
        return exc.code


def exit_code(job: dict[str, Any]) -> int:
    status = job.get("status")
    if status in ("failed", "cancelled"):
        return FAILED
    if status == "completed":
        return COMPLETED_WITH_ERRORS if job.get("error_count") else OK
    return OK  # still queued/processing (status without --wait, or --timeout reached)


# -- HTTP ----------------------------------------------------------------------------------


def _unreachable(url: str, exc: Exception) -> CliProblem:
    return CliProblem(f"cannot reach the csv-importer at {url}: {exc}", FAILED)


def _refused(reply: httpx.Response, what: str) -> CliProblem:
    try:
        body = reply.json()
        message = body.get("error") or reply.text
        if body.get("field"):
            message += f" (field {body['field']})"
    except ValueError:
        message = reply.text[:300] or reply.reason_phrase
    code = INVALID if 400 <= reply.status_code < 500 else FAILED
    return CliProblem(f"{what} refused: HTTP {reply.status_code}: {message}", code)


class _ReadProgress:
    """The upload's file object, reporting how many bytes were read (httpx reads it in
    64 KiB pieces and learns its size from ``fileno``, so nothing is held in memory)."""

    def __init__(self, file: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._file = file
        self._on_read = on_read
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.done += len(data)
        self._on_read(self.done)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._file.seek(offset, whence)
        self.done = position
        return position

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


def upload(client: httpx.Client, args: argparse.Namespace, url: str, err: TextIO) -> dict[str, Any]:
    """Stream the file to ``POST /ingest/csv``; the importer's 202 body."""
    path = Path(args.file)
    if not path.is_file():
        raise CliProblem(f"cannot read {args.file}: no such file", INVALID)
    fields = {"domain": args.domain}
    if args.source_id:
        fields["source_id"] = args.source_id
    for name, _, _ in FORM_OPTIONS:
        value = getattr(args, f"form_{name}")
        if value is not None:
            fields[name] = value
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CliProblem(f"cannot read {args.file}: {exc.strerror or exc}", INVALID) from None
    size = path.stat().st_size
    bar = ProgressLine(err)
    with handle:
        reader = _ReadProgress(
            handle,
            lambda done: bar.show(
                f"uploading {bar_text(done / size if size else 1.0)} "
                f"{done / 1e6:,.1f}/{size / 1e6:,.1f} MB"
            ),
        )
        try:
            reply = client.post(
                "/ingest/csv",
                data=fields,
                files={"file": (path.name, reader, "text/csv")},  # type: ignore[dict-item]
            )
        except httpx.TransportError as exc:
            bar.clear()
            raise _unreachable(url, exc) from None
    bar.clear()
    if reply.status_code != 202:
        raise _refused(reply, "upload")
    return dict(reply.json())


def fetch_job(client: httpx.Client, job_id: str, url: str) -> dict[str, Any]:
    try:
        reply = client.get(f"/ingest/csv/jobs/{job_id}")
    except httpx.TransportError as exc:
        raise _unreachable(url, exc) from None
    if reply.status_code != 200:
        raise _refused(reply, f"status of job {job_id}")
    return dict(reply.json())


def follow(
    client: httpx.Client,
    job_id: str,
    url: str,
    interval: float,
    timeout: float | None,
    err: TextIO,
) -> dict[str, Any]:
    """Poll the job until it ends (or ``timeout``), drawing its progress on ``err``.

    A poll that fails (importer restarting: jobs resume after a restart) is retried up to
    ``MAX_POLL_FAILURES`` times in a row before giving up."""
    bar = ProgressLine(err)
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    job: dict[str, Any] = {}
    while True:
        try:
            job = fetch_job(client, job_id, url)
            failures = 0
        except CliProblem:
            failures += 1
            if failures >= MAX_POLL_FAILURES:
                bar.clear()
                raise
        else:
            if job.get("status") in FINISHED:
                bar.finish(progress_text(job))
                return job
            bar.show(progress_text(job))
        if deadline is not None and time.monotonic() >= deadline:
            bar.clear()
            print(f"tributary: stopped waiting after {timeout:g} s; the job goes on", file=err)
            return job
        time.sleep(max(interval, 0.05))


# -- output --------------------------------------------------------------------------------


class ProgressLine:
    """One line redrawn in place on a terminal; elsewhere (a log, CI) a line every few
    seconds, so the output stays readable."""

    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._tty = err.isatty()
        # Off a terminal, the first line comes after a few seconds: short jobs print only
        # their final state.
        self._last = 0.0 if self._tty else time.monotonic()
        self._width = 0

    def show(self, text: str) -> None:
        now = time.monotonic()
        if self._tty:
            if now - self._last < 0.1:
                return
            self._err.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            if now - self._last < NON_TTY_EVERY_SECONDS:
                return
            self._err.write(text + "\n")
        self._err.flush()
        self._last = now

    def finish(self, text: str) -> None:
        """The last state, always shown, on its own line."""
        if self._tty:
            self._err.write("\r" + text.ljust(self._width) + "\n")
        else:
            self._err.write(text + "\n")
        self._err.flush()
        self._width = 0

    def clear(self) -> None:
        if self._tty and self._width:
            self._err.write("\r" + " " * self._width + "\r")
            self._err.flush()
            self._width = 0


def bar_text(fraction: float) -> str:
    filled = int(max(0.0, min(fraction, 1.0)) * BAR_WIDTH)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def progress_text(job: dict[str, Any]) -> str:
    """``[#####.....]  35.0%  350,000/1,000,000 rows  95,000 points/s  ETA 7s  processing``"""
    rows = int(job.get("rows_processed") or 0)
    total = job.get("rows_total")
    percent = job.get("percent")
    if percent is None and total:
        percent = 100.0 * rows / total
    rate = job.get("rate_points_per_s")
    eta = job.get("eta_s")
    parts = [
        bar_text((percent or 0.0) / 100),
        f"{percent or 0.0:5.1f}%",
        f"{rows:,}/{total:,} rows" if total else f"{rows:,} rows",
        f"{rate:,.0f} points/s" if rate else "- points/s",
        f"ETA {_duration(eta)}" if eta is not None else "ETA -",
        str(job.get("status", "?")),
    ]
    return "  ".join(parts)


def summarize(job: dict[str, Any], err: TextIO, shown: int) -> None:
    """The job's outcome and its first per-row errors."""
    status = job.get("status")
    line = (
        f"job {job.get('job_id')} {status}: {int(job.get('rows_processed') or 0):,} rows, "
        f"{int(job.get('points_published') or 0):,} points published, "
        f"{int(job.get('points_rejected') or 0):,} rejected"
    )
    if job.get("reason"):
        line += f" — {job['reason']}"
    print(line, file=err)
    errors = job.get("errors") or []
    count = int(job.get("error_count") or len(errors))
    if not count:
        return
    print(
        f"{count:,} row error{'s' if count != 1 else ''}; first {min(shown, len(errors))}:",
        file=err,
    )
    for entry in errors[: max(shown, 0)]:
        column = f" [{entry['column']}]" if entry.get("column") else ""
        print(f"  row {entry['row']}{column}: {entry['reason']}", file=err)
    if count > min(shown, len(errors)):
        print(f"  … and {count - min(shown, len(errors)):,} more", file=err)
