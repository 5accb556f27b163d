"""``tributary_operator.mqtt_credentials`` and ``tributary mqtt``: the files the broker reads.

That the broker enforces them (anonymous refused, topics outside a producer's scope dropped, the
gateway's session safe) is shown against a real Mosquitto in ``tests/security/hostile``."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import pytest

from tributary_operator.cli import main
from tributary_operator.mqtt_credentials import (
    REPO_CONFIG,
    CredentialProblem,
    MqttCredentials,
    hash_password,
    render_broker_config,
    verify_password,
)


def test_a_password_hash_is_what_mosquitto_passwd_writes() -> None:
    # `mosquitto_passwd -b pw alice secret` wrote this line (salt tRu4xcOB81hU/L/0).
    salt = base64.b64decode("tRu4xcOB81hU/L/0")
    digest = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)

    assert hash_password("secret", salt) == (
        f"$7$101$tRu4xcOB81hU/L/0${base64.b64encode(digest).decode()}"
    )
    assert verify_password("secret", hash_password("secret"))
    assert not verify_password("Secret", hash_password("secret"))


def test_the_acl_grants_each_user_only_its_topics(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.add("tributary-gateway-mqtt", "gateway")
    creds.add("dev-1", "producer", sources=["server-01"], domains=["infrastructure"])
    creds.add("sn-1", "producer", sensors=["17", "18"], topic_prefix="site-a")
    creds.add("all", "producer", sources=["*", "x"], domains=["*"])

    acl = creds.acl.read_text().split("\n\n", 1)[1]

    assert acl == (
        "user all\ntopic write +/+/+/data\n\n"
        "user dev-1\ntopic write infrastructure/server-01/+/data\n\n"
        "user sn-1\ntopic write site-a/iot/sensors/17/readings\n"
        "topic write site-a/iot/sensors/18/readings\n\n"
        "user tributary-gateway-mqtt\ntopic read #\n"
    )
    assert [line.split(":")[0] for line in creds.passwd.read_text().splitlines()] == [
        "all", "dev-1", "sn-1", "tributary-gateway-mqtt",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sources": ["a/b"], "domains": ["d"]}, "cannot be an MQTT topic level"),
        ({"sources": ["a"]}, "both --source and --domain"),
        ({}, "needs --source and --domain, or --sensor"),
        ({"sensors": ["x1"]}, "sensor 'x1'"),
    ],
)
def test_a_producer_without_a_usable_scope_is_refused(
    tmp_path: Path, kwargs: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(CredentialProblem, match=message):
        MqttCredentials(tmp_path).add("p", "producer", **kwargs)  # type: ignore[arg-type]


def test_temporary_users_are_dropped_by_the_first_change_after_their_time(
    tmp_path: Path,
) -> None:
    creds = MqttCredentials(tmp_path)
    creds.add("old", "producer", sensors=["1"], remove_after=time.time() - 1, reload=False)
    creds.add("new", "producer", sensors=["2"], remove_after=time.time() + 3600, reload=False)

    creds.add("other", "producer", sensors=["3"], reload=False)

    assert sorted(creds.users()) == ["new", "other"]


def test_a_kept_login_is_reused_until_the_user_changes(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)

    first = creds.kept_login("gw", "gateway", "p1")
    again = creds.kept_login("gw", "gateway", "p1")
    moved = creds.kept_login("gw", "gateway", "p2")

    assert first == again != moved
    assert verify_password(moved, creds.users()["gw"].password_hash)


def test_the_rendered_config_keeps_the_listener_first_and_every_limit(tmp_path: Path) -> None:
    rendered = render_broker_config(REPO_CONFIG.read_text(), tmp_path, 31999)
    settings = [line for line in rendered.splitlines() if line and not line.startswith("#")]

    assert settings[0] == "listener 31999 127.0.0.1"
    assert f"password_file {tmp_path / 'passwd'}" in settings
    assert f"pid_file {tmp_path / 'mosquitto.pid'}" in settings
    for kept in ("allow_anonymous false", "use_username_as_clientid true",
                 "max_queued_messages 1000000", "persistence true"):  # fmt: skip
        assert kept in settings
    assert not [s for s in settings if s.startswith("listener") and "1883" in s]


def test_the_cli_prints_the_password_last_and_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["mqtt", "--dir", str(tmp_path), "add", "dev", "--source", "s1", "--domain", "d"])
    password = capsys.readouterr().out.splitlines()[-1]
    with pytest.raises(SystemExit) as bad:
        main(["mqtt", "--dir", str(tmp_path), "add", "dev", "--source", "s 1", "--domain", "d"])

    assert done.value.code == 0
    assert verify_password(password, MqttCredentials(tmp_path).users()["dev"].password_hash)
    assert bad.value.code == 2
    assert "cannot be an MQTT topic level" in capsys.readouterr().err
