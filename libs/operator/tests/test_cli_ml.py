from __future__ import annotations

import sys

import pytest

from tributary_operator import cli


def test_ml_run_says_clearly_when_ml_batch_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ml_batch.__main__", None)  # import fails as if absent
    with pytest.raises(SystemExit) as exc:
        cli.main(["ml", "run", "--once"])
    assert exc.value.code == 1
    assert "ml-batch is not installed" in capsys.readouterr().err


def test_ml_run_refuses_a_non_positive_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["ml", "run", "--interval", "-1"])
    assert exc.value.code == 2
    assert "--interval must be greater than 0" in capsys.readouterr().err
