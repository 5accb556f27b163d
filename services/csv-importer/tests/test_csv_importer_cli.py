"""``tributary csv upload|status`` as a user runs it (a process) against a running importer
process on the real NATS: exit codes, the progress line, the error summary, the job it made."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from tests.host import free_port
from tests.streams import drop_namespace_at
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, DP_RAW, Namespace, PointBundle, ensure_jetstream
from tributary_operator.cli import main
from tributary_operator.csv_cli import progress_text

pytestmark = pytest.mark.integration

SEED_CSV = (
    "timestamp,temperature,humidity,pressure\n"
    "1708900000.0,23.5,65.2,1013.25\n"
    "1708900001.0,23.6,65.1,1013.24\n"
    "1708900002.0,23.7,65.0,1013.23\n"
)
BAD_ROWS_CSV = (
    "timestamp;cpu;mem\n"
    "2026-03-01T00:00:00Z;1,5;10\n"
    "2026-03-01T00:00:01Z;;11\n"
    "03/01/2026;2;12\n"
    "2026-03-01T00:00:03Z;abc;13\n"
    "2026-03-01T00:00:05Z;4;15\n"
)


@dataclass
class RunningImporter:
    url: str
    key: str
    prefix: str
    nats_url: str


async def _prepare(nats_url: str, prefix: str) -> str:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        ns = Namespace(prefix)
        await ensure_jetstream(js, ns)
        return await ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET))).create(
            Role.SOURCE_WRITER, "cli tests"
        )
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def importer(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningImporter]:
    """``python -m csv_importer`` as a process in its own namespace (one for this module)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    key = asyncio.run(_prepare(servers.nats_url, prefix))
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": servers.nats_url,
        "BUS_PREFIX": prefix,
        "PORT": str(port),
        "SPOOL_DIR": str(tmp_path_factory.mktemp("spool")),
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "csv_importer"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # a busy 2-core machine starts it slowly
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the importer exited at start"
            time.sleep(0.1)
        else:
            raise RuntimeError("the importer did not become ready")
        yield RunningImporter(url, key, prefix, servers.nats_url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        asyncio.run(drop_namespace_at(servers.nats_url, prefix))


def tributary(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``tributary`` CLI as a process, as a user does (stdout and stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "tributary_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def cli(
    monkeypatch: pytest.MonkeyPatch, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The same ``main()`` run in this process (a process start costs seconds on a busy
    machine); its exit code and output, as ``tributary`` gives them."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def upload(
    mp: pytest.MonkeyPatch, imp: RunningImporter, path: Path, *options: str, key: str = ""
) -> subprocess.CompletedProcess[str]:
    """``tributary csv upload PATH OPTIONS`` via :func:`cli` to ``imp``, with its key or ``key``."""
    return cli(
        mp, "csv", "upload", str(path), *options, "--url", imp.url, "--api-key", key or imp.key
    )


def job(imp: RunningImporter, job_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{imp.url}/ingest/csv/jobs/{job_id}", headers={"X-API-Key": imp.key})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def _raw_points(nats_url: str, prefix: str, source: str) -> list[tuple[str, float]]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = Namespace(prefix).stream(DP_RAW)
        info = await js.stream_info(stream)
        points = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            data = (await js.get_msg(stream, seq)).data or b""
            for batch in PointBundle.model_validate_json(data).batches:
                if batch.source_id == source:
                    points += [(p.stream_id, p.value) for p in batch.points]
        return sorted(points)
    finally:
        await nc.close()


def raw_points(imp: RunningImporter, source: str) -> list[tuple[str, float]]:
    return asyncio.run(_raw_points(imp.nats_url, imp.prefix, source))


def test_upload_wait_completes_the_job_and_exits_0(
    importer: RunningImporter, tmp_path: Path
) -> None:
    path = tmp_path / "seed.csv"
    path.write_text(SEED_CSV)
    run = tributary(
        "csv",
        "upload",
        str(path),
        "--source",
        "cli-seed",
        "--domain",
        "infrastructure",
        "--wait",
        "--url",
        importer.url,
        "--poll-interval",
        "0.1",
        env={"TRIBUTARY_API_KEY": importer.key},
    )
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip().splitlines()[-1]
    assert job(importer, job_id)["status"] == "completed"
    assert f"job {job_id} completed: 3 rows, 9 points published, 0 rejected" in run.stderr
    assert "100.0%  3/3 rows" in run.stderr  # the final progress line
    assert raw_points(importer, "cli-seed") == sorted(
        [("temperature", v) for v in (23.5, 23.6, 23.7)]
        + [("humidity", v) for v in (65.2, 65.1, 65.0)]
        + [("pressure", v) for v in (1013.25, 1013.24, 1013.23)]
    )


def test_bad_rows_are_summarised_with_row_numbers_and_exit_3(
    importer: RunningImporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    path = tmp_path / "bad.csv"
    path.write_text(BAD_ROWS_CSV)
    run = upload(mp, importer, path, "--source", "cli-bad", "--domain", "infrastructure",
                 "--decimal", ",", "--delimiter", ";", "--wait", "--errors-shown", "2",
                 "--poll-interval", "0.1")  # fmt: skip
    assert run.returncode == 3, run.stderr
    job_id = run.stdout.strip().splitlines()[-1]
    lines = run.stderr.splitlines()
    summary = lines.index(f"job {job_id} completed: 5 rows, 6 points published, 4 rejected")
    assert lines[summary + 1 :] == [
        "3 row errors; first 2:",
        "  row 3 [cpu]: cpu is required",
        "  row 4 [timestamp]: timestamp '03/01/2026' is not ISO 8601 "
        "(e.g. 2026-02-25T21:00:00Z) or epoch seconds",
        "  … and 1 more",
    ]
    assert raw_points(importer, "cli-bad") == [
        ("cpu", 1.5),
        ("cpu", 4.0),
        ("mem", 10.0),
        ("mem", 11.0),
        ("mem", 13.0),
        ("mem", 15.0),
    ]


def test_upload_without_wait_prints_the_job_id_and_status_follows_it(
    importer: RunningImporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    path = tmp_path / "seed.csv"
    path.write_text(SEED_CSV)
    env = {"TRIBUTARY_API_KEY": importer.key, "TRIBUTARY_CSV_URL": importer.url}
    run = cli(mp, "csv", "upload", str(path), "--source", "cli-nowait", "--domain", "iot", env=env)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert len(job_id) == 32
    assert "3 rows, format wide, value columns temperature, humidity, pressure" in run.stderr
    status = cli(mp, "csv", "status", job_id, "--wait", "--poll-interval", "0.1", env=env)
    assert status.returncode == 0, status.stderr
    assert f"job {job_id} completed: 3 rows, 9 points published" in status.stderr


def test_a_failed_job_exits_1_with_its_reason(
    importer: RunningImporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        "timestamp,t\n1708900000,1\n1708900001,2\n1708900002,3 \xe9\n".encode("latin-1")
    )
    run = upload(mp, importer, path, "--source", "cli-fail", "--domain", "infrastructure",
                 "--encoding", "utf-8", "--wait", "--poll-interval", "0.1")  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "failed: 0 rows" in run.stderr
    assert "the file is not valid utf-8-sig" in run.stderr


def test_a_refused_upload_exits_2_naming_the_field(
    importer: RunningImporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    path = tmp_path / "seed.csv"
    path.write_text(SEED_CSV)
    run = upload(mp, importer, path, "--source", "s", "--domain", "infrastructure",
                 "--timestamp-column", "time")  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "tributary: upload refused: HTTP 422: timestamp column 'time' is not in the file "
        "(columns: timestamp, temperature, humidity, pressure) (field timestamp_column)"
    )
    wrong_key = upload(
        mp,
        importer,
        path,
        "--source",
        "s",
        "--domain",
        "infrastructure",
        key="trb_000000000000_" + "x" * 32,  # well formed, never issued
    )
    assert wrong_key.returncode == 2
    assert "HTTP 401: unknown API key" in wrong_key.stderr


def test_bad_file_missing_key_and_unreachable_importer_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = monkeypatch
    missing = cli(
        mp,
        "csv",
        "upload",
        str(tmp_path / "nope.csv"),
        "--source",
        "s",
        "--domain",
        "iot",
        "--api-key",
        "k",
    )
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        f"tributary: cannot read {tmp_path / 'nope.csv'}: no such file",
    )
    path = tmp_path / "seed.csv"
    path.write_text(SEED_CSV)
    no_key = cli(mp, "csv", "upload", str(path), "--domain", "iot", env={"TRIBUTARY_API_KEY": ""})
    assert (no_key.returncode, no_key.stderr.strip()) == (
        2,
        "tributary: no API key: pass --api-key or set $TRIBUTARY_API_KEY",
    )
    port = free_port()  # nothing listens there
    down = cli(
        mp,
        "csv",
        "upload",
        str(path),
        "--source",
        "s",
        "--domain",
        "iot",
        "--api-key",
        "k",
        "--url",
        f"http://127.0.0.1:{port}",
    )
    assert down.returncode == 1
    assert down.stderr.startswith(
        f"tributary: cannot reach the csv-importer at http://127.0.0.1:{port}: "
    )


def test_the_upload_streams_the_file_instead_of_loading_it(
    importer: RunningImporter, tmp_path: Path
) -> None:
    """A 96 MB file passes through the CLI process without its peak RSS growing by that much
    (the importer refuses it after receiving it all: no timestamp column, so no job runs)."""
    size_mb = 96
    path = tmp_path / "big.csv"
    line = b"when,value\n" + b"2026-01-01T00:00:00Z,1.0\n" * 1000
    with path.open("wb") as out:
        for _ in range(size_mb * 1024 * 1024 // len(line)):
            out.write(line)
    # The CLI's own peak RSS (VmHWM: getrusage would include the forking pytest's), printed
    # by the process itself as it exits.
    code = (
        "import sys\n"
        "from tributary_operator.cli import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "finally:\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "    print('peak_kb=' + hwm.split()[1], file=sys.stderr)\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "csv",
            "upload",
            str(path),
            "--source",
            "s",
            "--domain",
            "iot",
            "--url",
            importer.url,
            "--api-key",
            importer.key,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "timestamp column 'timestamp' is not in the file" in run.stderr
    peak_kb = int(run.stderr.strip().splitlines()[-1].removeprefix("peak_kb="))
    assert peak_kb < size_mb * 1024, f"CLI peak RSS {peak_kb / 1024:.0f} MB for a {size_mb} MB file"


def test_progress_text_shows_rows_rate_and_eta() -> None:
    text = progress_text(
        {
            "status": "processing",
            "rows_processed": 350_000,
            "rows_total": 1_000_000,
            "percent": 35.0,
            "rate_points_per_s": 95_000.4,
            "eta_s": 75.2,
        }
    )
    assert text == (
        "[#########...................]   35.0%  350,000/1,000,000 rows  95,000 points/s  "
        "ETA 1m15s  processing"
    )
    assert progress_text({"status": "queued"}) == (
        "[............................]    0.0%  0 rows  - points/s  ETA -  queued"
    )
