from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field

from tributary_runtime.settings import ServiceSettings, load_settings, settings_table


def test_load_settings_exits_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(SystemExit) as exit_info:
        load_settings(ServiceSettings)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("invalid setting PORT:")


def test_load_settings_refuses_a_bad_bus_prefix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BUS_PREFIX", "Has.Dots")
    with pytest.raises(SystemExit):
        load_settings(ServiceSettings)
    assert "BUS_PREFIX" in capsys.readouterr().err


def test_settings_table_lists_every_variable_with_default_and_meaning() -> None:
    class Demo(ServiceSettings):
        batch: int = Field(default=5, description="Points per batch.")

    table = settings_table(Demo)
    assert "| `BATCH` | `5` | Points per batch. |" in table
    assert "| `NATS_URL` | `'nats://127.0.0.1:4222'` |" in table


def test_secrets_can_come_from_files_and_nats_tls_from_settings(
    tmp_path: Any, monkeypatch: Any
) -> None:
    import ssl

    from tributary_runtime.bus import nats_auth_options

    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("NATS_USER", "svc")
    settings = ServiceSettings(nats_url="tls://nats:4222")
    options = nats_auth_options(settings)
    assert (options["user"], options["password"]) == ("svc", "s3cret")
    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["tls"].verify_mode == ssl.CERT_REQUIRED

    monkeypatch.setenv("NATS_PASSWORD", "from-env")  # the variable itself wins over _FILE
    assert nats_auth_options(ServiceSettings())["password"] == "from-env"
    assert "tls" not in nats_auth_options(ServiceSettings())  # plain local default


def test_an_unreadable_secret_file_is_one_clear_line(monkeypatch: Any, capsys: Any) -> None:
    from tributary_runtime.settings import load_settings

    monkeypatch.setenv("NATS_TOKEN_FILE", "/nonexistent/token")
    with pytest.raises(SystemExit) as exit_info:
        load_settings(ServiceSettings)
    assert exit_info.value.code == 2
    assert "NATS_TOKEN_FILE: cannot read /nonexistent/token" in capsys.readouterr().err
