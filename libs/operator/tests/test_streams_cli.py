"""``tributary streams``: validation of scopes, configs and import files, and the commands
against the real local NATS (each test in its own bus prefix)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.streams import drop_namespace_at
from tributary_contracts import STREAM_CONFIGS_BUCKET, Namespace, StreamConfig, stream_config_key
from tributary_operator import streams_cli
from tributary_operator.cli import build_parser
from tributary_runtime.stream_configs import (
    ConfigProblem,
    StreamConfigBucket,
    StreamScope,
    parse_config,
    parse_import,
)

CPU = {
    "stream_type": "cpu_usage",
    "unit": "percent",
    "value_constraints": {"min_value": 0, "max_value": 100, "warning_max": 80},
    "cooldown_seconds": 30,
}


# -- validation (no bus) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "field"),
    [
        (("Infra", "s", "x"), "domain"),
        (("infrastructure", "", "x"), "source_id"),
        (("infrastructure", "s", "a\nb"), "stream_id"),
        (("infrastructure", "s", "x" * 257), "stream_id"),
        (("*", "server-01", "x"), "domain"),
        (("infrastructure", None, "x"), "source_id"),
    ],
)
def test_scope_refuses_bad_ids_naming_the_field(ids: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ConfigProblem) as problem:
        StreamScope.parse(*ids)
    assert problem.value.field == field


@pytest.mark.parametrize(
    "ids",
    [
        ("infrastructure", "server-01", "cpu_usage"),
        ("infrastructure", "*", "cpu_usage"),
        ("infrastructure", "*", "*"),
        ("*", "*", "temperature"),
        ("*", "*", "*"),
        ("finance", "rack.4 unit*7/ü", "BTCUSDT:price"),
    ],
)
def test_scope_accepts_printable_ids_and_wildcards(ids: tuple[str, str, str]) -> None:
    scope = StreamScope.parse(*ids)
    assert (scope.domain, scope.source_id, scope.stream_id) == ids
    assert scope.key == stream_config_key(*ids)


def test_scope_takes_integer_ids_as_their_text() -> None:
    assert StreamScope.parse("iot", 17, 3) == StreamScope("iot", "17", "3")


def test_config_problem_names_the_field_and_the_numbers() -> None:
    with pytest.raises(ConfigProblem) as problem:
        parse_config({"value_constraints": {"max_value": 100, "warning_max": 150}})
    assert problem.value.problems == [
        ("value_constraints", "warning_max (150.0) lies above max_value (100.0)")
    ]


def test_config_problem_lists_unknown_fields_and_bad_types() -> None:
    with pytest.raises(ConfigProblem) as problem:
        parse_config({"colour": "red", "consecutive_violations_required": 0})
    assert sorted(problem.value.problems) == [
        ("colour", "unknown field"),
        ("consecutive_violations_required", "Input should be greater than or equal to 1"),
    ]


def test_parse_config_ignores_a_version_in_the_input() -> None:
    assert parse_config({**CPU, "version": 9}).version is None


def test_import_accepts_a_list_and_a_mapping() -> None:
    listed = parse_import(
        [{"domain": "infrastructure", "source_id": "*", "stream_id": "cpu_usage", "config": CPU}]
    )
    mapped = parse_import({"infrastructure/rack/7/cpu_usage": CPU, "*/*/*": {}})
    assert [str(e.scope) for e in listed] == ["infrastructure/*/cpu_usage"]
    assert [e.scope for e in mapped] == [
        StreamScope("infrastructure", "rack/7", "cpu_usage"),
        StreamScope("*", "*", "*"),
    ]
    assert listed[0].config == StreamConfig.model_validate(CPU)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (
            [
                {"domain": "iot", "source_id": "a", "stream_id": "t", "config": {}},
                {"domain": "iot", "source_id": "b", "stream_id": "t", "config": {"min": 1}},
            ],
            "entry 1.config.min",
        ),
        ([{"domain": "iot", "source_id": "a", "stream_id": "t"}], "entry 0.config"),
        ([{"domain": "IOT", "source_id": "a", "stream_id": "t", "config": {}}], "entry 0.domain"),
        ({"iot/a": {}}, "entry 'iot/a'"),
        (
            {"iot/a/t": {"value_constraints": {"alert_min": 5, "alert_max": 1}}},
            "entry 'iot/a/t'.config.value_constraints",
        ),
        ({"iot/a/t": {}, "iot/b/\x07/t": {}}, "entry 'iot/b/\\x07/t'.source_id"),
        ("just text", "file"),
    ],
)
def test_import_refuses_the_whole_file_naming_the_bad_entry(document: Any, field: str) -> None:
    with pytest.raises(ConfigProblem) as problem:
        parse_import(document)
    assert problem.value.field == field


def test_import_refuses_two_entries_for_one_scope() -> None:
    with pytest.raises(ConfigProblem, match="also set by entry 0"):
        parse_import(
            [
                {"domain": "iot", "source_id": "a", "stream_id": "t", "config": {}},
                {"domain": "iot", "source_id": "a", "stream_id": "t", "config": {}},
            ]
        )


# -- the commands against the real bus --------------------------------------------------------
@pytest.fixture
async def bucket(jetstream: Any, bus_prefix: str) -> StreamConfigBucket:
    return StreamConfigBucket(
        await jetstream.key_value(Namespace(bus_prefix).bucket(STREAM_CONFIGS_BUCKET))
    )


async def tributary(bucket: StreamConfigBucket, *argv: str) -> tuple[int, str, str]:
    """Run ``tributary streams …`` in process: (exit code, stdout, stderr)."""
    args = build_parser().parse_args(["streams", *argv])
    out, err = io.StringIO(), io.StringIO()
    try:
        checked = streams_cli.validate_command(args)
    except ConfigProblem as exc:
        return streams_cli.INVALID, "", str(exc)
    code = await streams_cli.run(args, checked, bucket, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.integration
async def test_set_then_get_round_trips_the_config_with_its_version(
    bucket: StreamConfigBucket,
) -> None:
    code, out, _ = await tributary(
        bucket, "set", "infrastructure", "*", "cpu_usage", json.dumps(CPU)
    )
    assert code == 0
    stored = json.loads(out)

    code, out, _ = await tributary(bucket, "get", "infrastructure", "*", "cpu_usage")
    assert code == 0
    got = json.loads(out)
    assert got == stored
    assert got["version"] >= 1
    assert parse_config(got) == StreamConfig.model_validate(CPU)


@pytest.mark.integration
async def test_set_reads_yaml_files_and_a_new_set_gets_a_new_version(
    bucket: StreamConfigBucket, tmp_path: Path
) -> None:
    path = tmp_path / "cpu.yaml"
    path.write_text(
        "stream_type: cpu_usage\nvalue_constraints:\n  min_value: 0\n  max_value: 100\n"
    )
    code, first, _ = await tributary(
        bucket, "set", "infrastructure", "srv 1", "cpu", "-f", str(path)
    )
    assert code == 0
    code, second, _ = await tributary(
        bucket, "set", "infrastructure", "srv 1", "cpu", "--file", str(path)
    )
    assert code == 0
    assert json.loads(second)["version"] > json.loads(first)["version"]
    assert json.loads(second)["value_constraints"]["max_value"] == 100.0


@pytest.mark.integration
async def test_set_refuses_an_invalid_config_and_writes_nothing(
    bucket: StreamConfigBucket,
) -> None:
    bad = {"value_constraints": {"max_value": 100, "warning_max": 150}}
    code, _, err = await tributary(bucket, "set", "infrastructure", "*", "cpu", json.dumps(bad))
    assert code == streams_cli.INVALID
    assert "warning_max (150.0) lies above max_value (100.0)" in err
    assert await bucket.list() == []


@pytest.mark.integration
async def test_get_and_delete_of_a_missing_config_exit_1(bucket: StreamConfigBucket) -> None:
    assert (await tributary(bucket, "get", "iot", "a", "t"))[0] == streams_cli.NOT_FOUND
    assert (await tributary(bucket, "delete", "iot", "a", "t"))[0] == streams_cli.NOT_FOUND


@pytest.mark.integration
async def test_delete_removes_the_config(bucket: StreamConfigBucket) -> None:
    await tributary(bucket, "set", "iot", "a", "t", "{}")
    code, _, err = await tributary(bucket, "delete", "iot", "a", "t")
    assert (code, err.strip()) == (0, "deleted iot/a/t")
    assert (await tributary(bucket, "get", "iot", "a", "t"))[0] == streams_cli.NOT_FOUND
    assert (await tributary(bucket, "list"))[1] == ""


@pytest.mark.integration
async def test_list_prints_key_version_and_summary_filtered_by_domain(
    bucket: StreamConfigBucket,
) -> None:
    await tributary(bucket, "set", "infrastructure", "*", "cpu_usage", json.dumps(CPU))
    await tributary(bucket, "set", "health", "p-1", "heart_rate", "{}")
    await tributary(bucket, "set", "*", "*", "*", "{}")
    await tributary(bucket, "delete", "health", "p-1", "heart_rate")

    _, everything, _ = await tributary(bucket, "list")
    _, infra, _ = await tributary(bucket, "list", "--domain", "infrastructure")

    assert [line.split("\t")[0] for line in everything.splitlines()] == [
        "*/*/*",
        "infrastructure/*/cpu_usage",
    ]
    [line] = infra.splitlines()
    scope, version, summary = line.split("\t")
    assert scope == "infrastructure/*/cpu_usage" and version.startswith("v")
    assert summary == (
        "type=cpu_usage unit=percent min_value=0 max_value=100 warning_max=80 cooldown=30s"
    )


@pytest.mark.integration
async def test_list_shows_an_entry_written_around_the_api_as_invalid(
    bucket: StreamConfigBucket, jetstream: Any, bus_prefix: str
) -> None:
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(STREAM_CONFIGS_BUCKET))
    await kv.put(stream_config_key("iot", "a", "t"), b'{"min_value": 1}')
    _, out, _ = await tributary(bucket, "list")
    assert out.startswith("iot/a/t\tv") and "INVALID (min_value: unknown field)" in out
    code, _, err = await tributary(bucket, "get", "iot", "a", "t")
    assert code == streams_cli.INVALID and "invalid" in err


@pytest.mark.integration
async def test_import_writes_every_entry(bucket: StreamConfigBucket, tmp_path: Path) -> None:
    path = tmp_path / "configs.yaml"
    path.write_text(
        "- {domain: infrastructure, source_id: '*', stream_id: cpu_usage,\n"
        "   config: {value_constraints: {min_value: 0, max_value: 100}}}\n"
        "- {domain: '*', source_id: '*', stream_id: temperature,\n"
        "   config: {unit: celsius, value_constraints: {min_value: -40, max_value: 125}}}\n"
    )
    code, out, err = await tributary(bucket, "import", str(path))
    assert code == 0 and "imported 2 stream configs" in err
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        "infrastructure/*/cpu_usage",
        "*/*/temperature",
    ]
    stored = await bucket.get(StreamScope("*", "*", "temperature"))
    assert stored is not None and stored.config is not None
    assert stored.config.unit == "celsius"


@pytest.mark.integration
async def test_import_of_a_file_with_one_bad_entry_writes_nothing(
    bucket: StreamConfigBucket, tmp_path: Path
) -> None:
    path = tmp_path / "configs.json"
    path.write_text(
        json.dumps(
            {
                "infrastructure/*/cpu_usage": CPU,
                "infrastructure/*/mem": {"value_constraints": {"min_value": 5, "max_value": 1}},
            }
        )
    )
    code, _, err = await tributary(bucket, "import", str(path))
    assert code == streams_cli.INVALID
    assert "entry 'infrastructure/*/mem'.config.value_constraints" in err
    assert "min_value (5.0) must not be greater than max_value (1.0)" in err
    assert await bucket.list() == []


@pytest.mark.integration
def test_cli_process_sets_and_refuses_with_exit_codes(servers: Any, bus_prefix: str) -> None:
    """The installed entry point end to end: set → 0 with the JSON on stdout (and nothing
    else), an invalid config → 2 with one line on stderr."""
    env = {"NATS_URL": servers.nats_url, "BUS_PREFIX": bus_prefix, "PATH": ""}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tributary_operator.cli", "streams", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    try:
        ok = cli("set", "infrastructure", "*", "cpu_usage", json.dumps(CPU))
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["stream_type"] == "cpu_usage"
        got = cli("get", "infrastructure", "*", "cpu_usage")
        assert json.loads(got.stdout) == json.loads(ok.stdout)

        bad = cli(
            "set",
            "infrastructure",
            "*",
            "cpu_usage",
            '{"value_constraints": {"max_value": 1, "alert_max": 2}}',
        )
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [
            "tributary: invalid input, nothing was written: value_constraints: "
            "alert_max (2.0) lies above max_value (1.0)"
        ]
    finally:
        import asyncio

        asyncio.run(drop_namespace_at(servers.nats_url, bus_prefix))
