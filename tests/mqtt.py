"""The one way tests reach an MQTT broker: with credentials of their own.

The local broker runs the repository's config (``deploy/local/servers.sh``): every client
authenticates, topics are granted per user, and a client's id is its user name. A test asks for
``producer(topic_prefix)`` (writes every topic under its prefix) or ``gateway(name,
topic_prefix)`` (reads them); the users are made with ``tributary_operator.mqtt_credentials`` in
the broker's state directory and dropped an hour later (after their sessions expired). On a
broker that is not the repository's (an anonymous one) the same calls hand out no credentials,
and clients connect as before.

Where: ``127.0.0.1:$TRIBUTARY_MQTT_PORT`` (default 1883), state in ``$TRIBUTARY_MQTT_DIR``
(default ``.tributary/mosquitto``) — the variables ``servers.sh`` reads. Fault scenarios pass
their private broker's ``(port, directory)`` as ``at``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tributary_operator.mqtt_credentials import MqttCredentials, broker_dir

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
Broker = tuple[int, Path]  # (port, state directory)


def local_broker() -> Broker:
    return int(os.environ.get("TRIBUTARY_MQTT_PORT", "1883")), broker_dir(root=ROOT)


@dataclass(frozen=True)
class MqttLogin:
    """Where and as whom to connect; ``username`` is None on an anonymous broker."""

    port: int
    username: str | None = None
    password: str | None = None
    host: str = HOST

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def client(self, client_id: str = "", **kwargs: Any) -> Any:
        """A paho client (callback API 2) with these credentials, not yet connected. The broker
        replaces ``client_id`` by the user name when it authenticates."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client_id = client_id or f"t-{uuid.uuid4().hex[:8]}"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        return client

    def connect(self, client: Any, **kwargs: Any) -> Any:
        return client.connect(self.host, self.port, **kwargs)

    def pub_args(self) -> list[str]:
        """``mosquitto_pub``/``mosquitto_sub`` options: host, port and credentials."""
        args = ["-h", self.host, "-p", str(self.port)]
        if self.username is not None:
            args += ["-u", self.username, "-P", self.password or ""]
        return args

    def gateway_env(self) -> dict[str, str]:
        """gateway-mqtt's settings for this login (``MQTT_URL``, user name, password)."""
        env = {"MQTT_URL": self.url}
        if self.username is not None:
            env |= {"MQTT_USERNAME": self.username, "MQTT_PASSWORD": self.password or ""}
        return env

    def gateway_settings(self) -> dict[str, Any]:
        """The same as ``GatewayMqttSettings`` keyword arguments."""
        return {k.lower(): v for k, v in self.gateway_env().items()}


TEMPORARY_SECONDS = 3600.0
"""How long a test's user stays: longer than any test's MQTT session expiry."""
_cache: dict[tuple[Any, ...], MqttLogin] = {}
_lock = threading.Lock()


def producer(
    topic_prefix: str,
    *,
    sources: tuple[str, ...] = ("*",),
    domains: tuple[str, ...] = ("*",),
    sensors: tuple[str, ...] = ("*",),
    topics: tuple[str, ...] = ("#",),
    at: Broker | None = None,
) -> MqttLogin:
    """A producer allowed every topic under ``topic_prefix`` (or only the given scopes)."""
    scopes = {"sources": sources, "domains": domains, "sensors": sensors, "topics": topics}
    return _login("producer", f"pub-{topic_prefix or 'root'}", topic_prefix, scopes, at)


def gateway(name: str, topic_prefix: str, *, at: Broker | None = None) -> MqttLogin:
    """gateway-mqtt's login ``name`` (= its client id), reading every topic under the prefix."""
    return _login("gateway", name, topic_prefix, {}, at)


def user(
    name: str, role: str, topic_prefix: str, at: Broker | None = None, **scopes: Any
) -> MqttLogin:
    """Any user (a hostile test's own attacker, say)."""
    return _login(role, name, topic_prefix, scopes, at)


def _login(
    role: str, name: str, topic_prefix: str, scopes: dict[str, Any], at: Broker | None
) -> MqttLogin:
    port, directory = at or local_broker()
    creds = MqttCredentials(directory)
    if creds.broker_pid() is None:
        return MqttLogin(port)  # not the repository's broker: anonymous, as it allows
    key = (directory, role, name, topic_prefix, tuple(sorted(scopes.items())))
    with _lock:
        if key in _cache:
            return _cache[key]
        # Dropped an hour later by the next change, once any test session of it has expired:
        # removing a user whose session still exists crashes Mosquitto 2.0.11 later on.
        remove_after = time.time() + TEMPORARY_SECONDS
        password = creds.add(
            name, role, topic_prefix=topic_prefix, remove_after=remove_after, **scopes
        )
        login = _cache[key] = MqttLogin(port, name, password)
    _wait_accepted(login)
    return login


def forget(name: str, at: Broker | None = None) -> None:
    """Remove user ``name`` now (e.g. to show a revoked producer is refused); only for a user
    without a persistent session (see ``MqttCredentials.remove``)."""
    _, directory = at or local_broker()
    with _lock:
        MqttCredentials(directory).remove([name])
        for key in [k for k in _cache if k[0] == directory and k[2] == name]:
            del _cache[key]


def _wait_accepted(login: MqttLogin, timeout: float = 10.0) -> None:
    """Until the broker (reloading on SIGHUP) accepts the new user: a clean session, so nothing
    of the user's later persistent session is touched."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result: list[Any] = []
        client = login.client(clean_session=True)
        client.on_connect = lambda _c, _u, _f, reason, _p, out=result: out.append(reason)
        try:
            login.connect(client, keepalive=5)
            while not result and time.monotonic() < deadline:
                client.loop(timeout=0.1)
        except OSError as exc:
            last = str(exc)
        finally:
            client.disconnect()
        if result and not result[0].is_failure:
            return
        last = str(result[0]) if result else last
        time.sleep(0.05)
    raise AssertionError(f"the broker did not accept MQTT user {login.username}: {last}")
