"""MQTT credentials for the repository's Mosquitto configuration (``deploy/mosquitto/``).

The broker authenticates every client (no anonymous access) against a password file and
authorises topics with an ACL file; ``use_username_as_clientid`` makes a client's id its user
name, so nobody can connect under the gateway's client id and take over its persistent session.
Both files are generated from one registry, ``users.json``, kept in the broker's state directory:

- a **gateway** user (its name is gateway-mqtt's ``MQTT_USERNAME`` and, through the broker, its
  client id) may read ``<topic prefix>/#``;
- a **producer** user may write only the topics of its scopes, the same vocabulary as API keys:
  ``<prefix>/<domain>/<source>/+/data`` per (domain, source) pair (``*`` = any) and
  ``<prefix>/iot/sensors/<id>/readings`` per legacy sensor id.

Passwords are stored as Mosquitto's PBKDF2-SHA512 hashes (``$7$``, what ``mosquitto_passwd``
writes) and shown once. After a change the broker whose pid is in ``mosquitto.pid`` gets SIGHUP,
which reloads both files (connected clients keep their connection; new ACLs apply at once).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tributary_contracts.subjects import WILDCARD

ROLES = ("gateway", "producer")
ANY = WILDCARD  # a scope entry that matches every source, domain or sensor
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's own count: the broker hashes at this cost per CONNECT
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SCOPE_RE = re.compile(r"^[^\s/+#\x00]{1,256}$")
SENSOR_RE = re.compile(r"^(\*|\d{1,18})$")
BROKER_USER = "mosquitto"
"""Mosquitto drops root privileges to this user; it must read the files and write its state."""

# Settings of the repository config that name paths or listeners: replaced when the config is
# rendered for a state directory and port (``render_broker_config``); everything else is kept.
_PATH_SETTINGS = ("listener", "password_file", "acl_file", "persistence_location", "pid_file",
                  "log_dest")  # fmt: skip


class CredentialProblem(ValueError):
    """Bad input for a credential: the message names the field and what it expected."""


@dataclass
class MqttUser:
    """One broker user and what it may do."""

    name: str
    role: str
    password_hash: str
    topic_prefix: str = ""
    sources: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    topics_extra: list[str] = field(default_factory=list)
    """Further topic filters it may write, relative to the prefix (``--topic``)."""
    remove_after: float | None = None
    """Epoch seconds after which the next change drops this user (temporary users of test
    fleets); never before any persistent session of it can have expired (see ``remove``)."""

    def topics(self) -> list[tuple[str, str]]:
        """``(access, topic filter)`` ACL entries of this user."""
        lead = f"{self.topic_prefix}/" if self.topic_prefix else ""
        if self.role == "gateway":
            return [("read", f"{lead}#")]
        level = {ANY: "+"}
        entries = [
            ("write", f"{lead}{level.get(d, d)}/{level.get(s, s)}/+/data")
            for d in self.domains
            for s in self.sources
        ]
        entries += [
            ("write", f"{lead}iot/sensors/{level.get(s, s)}/readings") for s in self.sensors
        ]
        entries += [("write", f"{lead}{topic}") for topic in self.topics_extra]
        return entries

    def scope_text(self) -> str:
        if self.role == "gateway":
            return f"read {self.topic_prefix + '/' if self.topic_prefix else ''}#"
        parts = []
        if self.sources:
            parts.append(f"sources={','.join(self.sources)} domains={','.join(self.domains)}")
        if self.sensors:
            parts.append(f"sensors={','.join(self.sensors)}")
        prefix = f" prefix={self.topic_prefix}" if self.topic_prefix else ""
        return " ".join(parts) + prefix


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Mosquitto's ``$7$`` PBKDF2-SHA512 password hash of ``password``."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"$7${PBKDF2_ITERATIONS}${encoded[0]}${encoded[1]}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash made by ``hash_password``."""
    try:
        _, tag, _, salt, _ = stored.split("$")
        return tag == "7" and hmac.compare_digest(
            hash_password(password, base64.b64decode(salt)), stored
        )
    except ValueError:
        return False


def new_password() -> str:
    return secrets.token_urlsafe(24)


def _clean(values: Iterable[str] | None, what: str, pattern: re.Pattern[str]) -> list[str]:
    cleaned = sorted({v.strip() for v in values or () if v.strip()})
    for value in cleaned:
        if not pattern.match(value):
            raise CredentialProblem(
                f"{what} {value!r} cannot be an MQTT topic level (no spaces, '/', '+', '#')"
            )
    return [ANY] if ANY in cleaned else cleaned


class MqttCredentials:
    """The registry of broker users in ``directory`` and the files the broker reads."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.registry = directory / "users.json"
        self.passwd = directory / "passwd"
        self.acl = directory / "acl"
        self.pid_file = directory / "mosquitto.pid"

    def users(self) -> dict[str, MqttUser]:
        if not self.registry.exists():
            return {}
        raw = json.loads(self.registry.read_text())
        return {u["name"]: MqttUser(**u) for u in raw["users"]}

    def add(
        self,
        name: str,
        role: str,
        *,
        topic_prefix: str = "",
        sources: Sequence[str] = (),
        domains: Sequence[str] = (),
        sensors: Sequence[str] = (),
        topics: Sequence[str] = (),
        password: str | None = None,
        remove_after: float | None = None,
        reload: bool = True,
    ) -> str:
        """Create or replace user ``name``; its password (generated unless given)."""
        user = self.build(name, role, topic_prefix, sources, domains, sensors, topics)
        password = password or new_password()
        user.password_hash = hash_password(password)
        user.remove_after = remove_after
        users = self.users()
        users[name] = user
        self.write(users, reload=reload)
        return password

    @staticmethod
    def build(
        name: str,
        role: str,
        topic_prefix: str,
        sources: Sequence[str],
        domains: Sequence[str],
        sensors: Sequence[str],
        topics: Sequence[str] = (),
    ) -> MqttUser:
        if not NAME_RE.match(name):
            raise CredentialProblem(
                f"user name {name!r}: 1-128 characters of letters, digits, '.', '_', '-'"
            )
        if role not in ROLES:
            raise CredentialProblem(f"role {role!r}: expected one of {', '.join(ROLES)}")
        prefix = topic_prefix.strip("/")
        if any(c in prefix for c in "+#\x00 "):
            raise CredentialProblem("topic prefix cannot contain '+', '#', spaces or NUL")
        user = MqttUser(name, role, "", prefix)
        if role == "producer":
            user.sources = _clean(sources, "source", SCOPE_RE)
            user.domains = _clean(domains, "domain", SCOPE_RE)
            user.sensors = _clean(sensors, "sensor", SENSOR_RE)
            user.topics_extra = sorted({t.strip().strip("/") for t in topics if t.strip("/ ")})
            if any(c.isspace() or c == "\x00" for t in user.topics_extra for c in t):
                raise CredentialProblem("a --topic filter cannot contain spaces or NUL")
            if bool(user.sources) != bool(user.domains):
                raise CredentialProblem("a producer needs both --source and --domain (or neither)")
            if not (user.sources or user.sensors or user.topics_extra):
                raise CredentialProblem(
                    "a producer needs --source and --domain, or --sensor (the topics it may write)"
                )
        elif sources or domains or sensors or topics:
            raise CredentialProblem("a gateway reads every topic under its prefix: no scopes")
        return user

    def kept_login(
        self, name: str, role: str, topic_prefix: str = "", remove_after: float | None = None
    ) -> str:
        """The password of user ``name`` with this role and prefix, made once and kept in
        ``logins/<name>`` (mode 600) so a service restarted later logs in again without a
        change. Changing or removing the password of a user whose persistent session outlives
        it is what crashes Mosquitto 2.0.11 on a later reload (see ``remove``)."""
        stored = self.dir / "logins" / name
        user = self.users().get(name)
        if (
            user is not None
            and stored.exists()
            and (user.role, user.topic_prefix)
            == (
                role,
                topic_prefix.strip("/"),
            )
        ):
            password = stored.read_text().strip()
            if verify_password(password, user.password_hash):
                return password
        password = self.add(name, role, topic_prefix=topic_prefix, remove_after=remove_after)
        stored.parent.mkdir(mode=0o700, exist_ok=True)
        _write(stored, password + "\n")
        return password

    def remove(self, names: Iterable[str], *, reload: bool = True) -> list[str]:
        """Remove users; the names that existed.

        Mosquitto 2.0.11 re-checks every session on reload, offline ones included; a session
        whose user is gone is "disconnected" there, and once that session expires the next
        reload crashes the broker (reproduced here; later 2.0.x releases are not affected).
        Remove a user only when no persistent session of it can still exist, or run a newer
        broker."""
        users = self.users()
        gone = [n for n in names if users.pop(n, None) is not None]
        if gone:
            self.write(users, reload=reload)
        return gone

    def write(self, users: dict[str, MqttUser], *, reload: bool = True) -> bool:
        """Write the registry, password and ACL files atomically; SIGHUP the broker if it runs.
        Whether a broker was signalled."""
        self.dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        kept = [u for u in users.values() if u.remove_after is None or u.remove_after > now]
        ordered = sorted(kept, key=lambda u: u.name)
        _write(self.registry, json.dumps({"users": [asdict(u) for u in ordered]}, indent=1))
        _write(self.passwd, "".join(f"{u.name}:{u.password_hash}\n" for u in ordered))
        acl = [
            "# Generated by `tributary mqtt` from users.json: edit with the CLI, not here.",
            "# No anonymous access: there are no topic lines before the first user.",
        ]
        for user in ordered:
            acl.append(f"\nuser {user.name}")
            acl += [f"topic {access} {topic}" for access, topic in user.topics()]
        _write(self.acl, "\n".join(acl) + "\n")
        return self.reload() if reload else False

    def broker_pid(self) -> int | None:
        """The pid of the broker running on this directory's config, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"mosquitto" in cmdline else None

    def reload(self) -> bool:
        pid = self.broker_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
            return True
        return False


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    _give_to_broker(tmp)
    tmp.replace(path)


def _give_to_broker(path: Path) -> None:
    """As root, hand ``path`` to the user Mosquitto runs as (it reads the files after dropping
    privileges, on every reload)."""
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam(BROKER_USER)
    except KeyError:
        return
    os.chown(path, owner.pw_uid, owner.pw_gid)


def render_broker_config(template: str, directory: Path, port: int, host: str = "127.0.0.1") -> str:
    """The repository's broker config with its listener and file paths pointed at ``directory``
    and ``host:port``; every other setting (queue limits, auth, persistence) is kept as is.

    Lines are replaced where they stand: Mosquitto applies listener options written before the
    first ``listener`` line to a default listener on 1883, so the listener must stay first."""
    local = {
        "listener": f"listener {port} {host}",
        "password_file": f"password_file {directory / 'passwd'}",
        "acl_file": f"acl_file {directory / 'acl'}",
        "persistence_location": f"persistence_location {directory / 'data'}/",
        "pid_file": f"pid_file {directory / 'mosquitto.pid'}",
        "log_dest": f"log_dest file {directory / 'mosquitto.log'}",
    }
    lines = ["# Rendered from deploy/mosquitto/mosquitto.conf by `tributary mqtt broker-config`."]
    if not any(line.split()[:1] == ["listener"] for line in template.splitlines()):
        lines.append(local["listener"])
        del local["listener"]
    for line in template.splitlines():
        key = line.split()[0] if line.split() else ""
        if key in _PATH_SETTINGS:
            if key in local:
                lines.append(local.pop(key))
        else:
            lines.append(line)
    return "\n".join([*lines, *local.values()]) + "\n"


def prepare_broker_dir(directory: Path, template: str, port: int, host: str = "127.0.0.1") -> Path:
    """Write ``mosquitto.conf`` (and empty credential files if none yet) into ``directory``,
    owned by the broker's user; the config's path."""
    creds = MqttCredentials(directory)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    if not creds.registry.exists():
        creds.write({}, reload=False)
    config = directory / "mosquitto.conf"
    _write(config, render_broker_config(template, directory, port, host))
    config.chmod(0o644)
    for path in (directory, directory / "data"):
        _give_to_broker(path)
    return config


MQTT_DIR_ENV = "TRIBUTARY_MQTT_DIR"
REPO_CONFIG = Path(__file__).resolve().parents[4] / "deploy" / "mosquitto" / "mosquitto.conf"


def broker_dir(env: Mapping[str, str] | None = None, root: Path | None = None) -> Path:
    """The local broker's state directory: ``$TRIBUTARY_MQTT_DIR``, else ``.tributary/mosquitto``
    under ``root`` (default: the current directory)."""
    env = os.environ if env is None else env
    if env.get(MQTT_DIR_ENV):
        return Path(env[MQTT_DIR_ENV])
    return (root or Path.cwd()) / ".tributary" / "mosquitto"
