"""``tributary rollout`` and ``tributary switches``: input checked before anything is written."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from tributary_contracts import RolloutState
from tributary_operator.rollout_cli import build_rollout
from tributary_operator.switches_cli import run as run_switches
from tributary_runtime.stream_configs import ConfigProblem
from tributary_runtime.switches import parse_bool, parse_list


def start_args(tmp_path: Path, **overrides: object) -> argparse.Namespace:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"value_constraints": {"warning_max": 60}}))
    values = {
        "name": "cpu-60",
        "domain": "infrastructure",
        "percent": 10.0,
        "source": [],
        "glob": [],
        "config": [f"cpu={config}"],
        "note": "",
    }
    return argparse.Namespace(**{**values, **overrides})


def test_a_rollout_starts_in_shadow_with_its_candidate(tmp_path: Path) -> None:
    rollout = build_rollout(start_args(tmp_path))
    assert rollout.state is RolloutState.SHADOW
    assert rollout.selector.percent == 10
    assert rollout.configs["cpu"].value_constraints.warning_max == 60


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"percent": 0.0}, "picks no source"),
        ({"percent": 150.0}, "less than or equal to 100"),
        ({"config": ["cpu"]}, "must be STREAM=FILE"),
        ({"config": ["cpu=/nonexistent.json"]}, "cannot read"),
        ({"name": "bad name"}, "should match pattern"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigProblem, match=message):
        build_rollout(start_args(tmp_path, **overrides))


def test_a_bad_candidate_config_names_its_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"value_constraints": {"warning_max": "high"}}))
    with pytest.raises(ConfigProblem, match="warning_max"):
        build_rollout(start_args(tmp_path, config=[f"cpu={bad}"]))


async def test_switches_refuse_a_setting_the_service_does_not_read_live() -> None:
    err = io.StringIO()
    args = argparse.Namespace(
        switches_command="set", service="gateway-http", setting="PORT", value="1"
    )
    assert await run_switches(args, settings=None, err=err) == 2
    assert "reads no live setting 'PORT'" in err.getvalue()
    assert "UNIVERSAL_API_ENABLED" in err.getvalue()


def test_switch_values_parse() -> None:
    assert [parse_bool(v) for v in ("true", "0", "On", "no")] == [True, False, True, False]
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("maybe")
    assert parse_list(" finance, ,health ") == {"finance", "health"}
