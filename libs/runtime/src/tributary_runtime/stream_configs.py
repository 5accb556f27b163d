"""Stream configurations in the ``stream-configs`` KV bucket: read, validate, write, delete, list.

Shared by gateway-http's config API and the ``tributary streams`` CLI so both accept exactly the
same scopes and configs and store them the same way. A scope is ``(domain, source_id,
stream_id)``; ``*`` stands for "any" (``libs/contracts`` ``stream_config_key``): as source id it
makes a domain-wide default for a stream id or stream type, and the domain may be ``*`` only
together with source ``*`` (a global default). The version of a stored config is its KV
revision; the classifier stamps it on every point it classifies with that config.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from tributary_contracts import (
    DEFAULT_CONSECUTIVE_VIOLATIONS,
    DEFAULT_COOLDOWN_SECONDS,
    StreamConfig,
    parse_stream_config_key,
    stream_config_key,
)
from tributary_contracts.models import DOMAIN_PATTERN, MAX_ID_CHARS
from tributary_contracts.subjects import WILDCARD

_DOMAIN = re.compile(DOMAIN_PATTERN)
LIST_TIMEOUT_SECONDS = 10.0


class ConfigProblem(ValueError):
    """Input that cannot be stored, with the field at fault and a sentence saying why."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))

    @property
    def field(self) -> str:
        return self.problems[0][0]

    def to_reply(self) -> dict[str, Any]:
        """JSON body of a 422: one sentence, the first field, and every problem."""
        return {
            "error": str(self),
            "field": self.field,
            "problems": [{"field": f, "message": m} for f, m in self.problems],
        }


class VersionConflict(Exception):
    """The stored config is not at the version the caller expected (optimistic concurrency)."""


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted field, message) of each error, without pydantic's "Value error, " noise."""
    problems = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        field = ".".join(p for p in (prefix, loc) if p) or prefix or "config"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append((field, message))
    return problems


def parse_config(data: Any, field: str = "") -> StreamConfig:
    """A ``StreamConfig`` from parsed JSON/YAML, or ``ConfigProblem`` naming what is wrong.

    A ``version`` in the input is ignored: the version is the KV revision, set when stored."""
    if not isinstance(data, dict):
        raise ConfigProblem([(field or "config", "must be an object (a JSON/YAML mapping)")])
    try:
        config = StreamConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigProblem(validation_problems(exc, field)) from None
    config.version = None
    return config


@dataclass(frozen=True)
class StreamScope:
    """Which stream (or default pattern) a config applies to."""

    domain: str
    source_id: str
    stream_id: str

    @classmethod
    def parse(cls, domain: Any, source_id: Any, stream_id: Any) -> StreamScope:
        """Validate the three ids (integers are taken as their text) or raise ConfigProblem."""
        problems: list[tuple[str, str]] = []
        values: dict[str, str] = {}
        for name, raw in (("domain", domain), ("source_id", source_id), ("stream_id", stream_id)):
            if isinstance(raw, int) and not isinstance(raw, bool):
                raw = str(raw)
            if not isinstance(raw, str) or raw == "":
                problems.append((name, "must be a non-empty string"))
                continue
            values[name] = raw
        d = values.get("domain")
        if d is not None and d != WILDCARD and not _DOMAIN.match(d):
            problems.append(("domain", f"must match {DOMAIN_PATTERN} or be '*'"))
        for name in ("source_id", "stream_id"):
            v = values.get(name)
            if v is None:
                continue
            if len(v) > MAX_ID_CHARS:
                problems.append((name, f"must be at most {MAX_ID_CHARS} characters"))
            elif not v.isprintable():
                problems.append((name, "must contain printable characters only"))
        if d == WILDCARD and values.get("source_id", WILDCARD) != WILDCARD:
            problems.append(
                ("domain", "may be '*' only together with source_id '*' (a global default)")
            )
        if problems:
            raise ConfigProblem(problems)
        return cls(values["domain"], values["source_id"], values["stream_id"])

    @property
    def key(self) -> str:
        return stream_config_key(self.domain, self.source_id, self.stream_id)

    def __str__(self) -> str:
        return f"{self.domain}/{self.source_id}/{self.stream_id}"


@dataclass(frozen=True)
class StoredConfig:
    """A config as found in the bucket. ``config`` is None when the stored value is not a valid
    StreamConfig (written around the API); ``problem`` says why."""

    scope: StreamScope
    version: int
    config: StreamConfig | None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The config's JSON with its ``version`` (what the API replies and ``get`` prints)."""
        if self.config is None:
            raise ValueError(f"stored config {self.scope} is invalid: {self.problem}")
        return {**self.config.model_dump(mode="json"), "version": self.version}

    def summary(self) -> str:
        """One line for listings: type, unit and the limits that are set."""
        if self.config is None:
            return f"INVALID ({self.problem})"
        c = self.config
        parts = []
        if c.stream_type:
            parts.append(f"type={c.stream_type}")
        if c.unit:
            parts.append(f"unit={c.unit}")
        limits = c.value_constraints.model_dump(exclude_none=True)
        parts.extend(f"{k}={v:g}" for k, v in limits.items())
        if c.rate_constraints is not None:
            rates = c.rate_constraints.model_dump(exclude_none=True, mode="json")
            parts.extend(
                f"{k}={v:g}" if isinstance(v, float) else f"rate_{k}={v}" for k, v in rates.items()
            )
        # The alert settings only where they differ from the defaults (seed 001: 3 and 300 s).
        if c.consecutive_violations_required != DEFAULT_CONSECUTIVE_VIOLATIONS:
            parts.append(f"consecutive={c.consecutive_violations_required}")
        if c.cooldown_seconds != DEFAULT_COOLDOWN_SECONDS:
            parts.append(f"cooldown={c.cooldown_seconds:g}s")
        if c.staleness_seconds:
            parts.append(f"staleness={c.staleness_seconds:g}s")
        return " ".join(parts) or "(no limits)"


def encode(config: StreamConfig) -> bytes:
    """What the bucket stores: the config's JSON (without ``version``, which is the revision)."""
    return config.model_dump_json().encode()


def decode(scope: StreamScope, value: bytes, version: int) -> StoredConfig:
    try:
        config = StreamConfig.model_validate_json(value)
    except ValidationError as exc:
        problem = "; ".join(f"{f}: {m}" for f, m in validation_problems(exc))
        return StoredConfig(scope, version, None, problem)
    config.version = version
    return StoredConfig(scope, version, config)


class StreamConfigBucket:
    """The ``stream-configs`` bucket seen as configs by scope."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, scope: StreamScope) -> StoredConfig | None:
        """The config stored for ``scope``, or None (never stored, or deleted)."""
        try:
            entry = await self._kv.get(scope.key)
        except KeyNotFoundError:  # KeyDeletedError is re-raised as this by nats-py
            return None
        if not entry.value:
            return None
        return decode(scope, entry.value, int(entry.revision or 0))

    async def put(
        self, scope: StreamScope, config: StreamConfig, expected_version: int | None = None
    ) -> StoredConfig:
        """Store ``config``; with ``expected_version`` only if that is still the current one
        (0: only if none is stored), else ``VersionConflict``."""
        value = encode(config)
        if expected_version is None:
            revision = await self._kv.put(scope.key, value)
        else:
            try:
                if expected_version == 0:
                    revision = await self._kv.create(scope.key, value)
                else:
                    revision = await self._kv.update(scope.key, value, last=expected_version)
            except KeyWrongLastSequenceError:
                raise VersionConflict(
                    f"{scope} is not at version {expected_version} any more"
                ) from None
        stored = config.model_copy()
        stored.version = revision
        return StoredConfig(scope, revision, stored)

    async def delete(self, scope: StreamScope) -> bool:
        """Delete the config of ``scope``; False when there was none."""
        if await self.get(scope) is None:
            return False
        await self._kv.delete(scope.key)
        return True

    async def list(self, domain: str | None = None) -> list[StoredConfig]:
        """Every stored config (of ``domain`` when given; ``*`` lists the global defaults),
        sorted by scope."""
        found: list[StoredConfig] = []
        watcher = await self._kv.watchall(ignore_deletes=True)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LIST_TIMEOUT_SECONDS
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError("listing the stream-configs bucket took too long")
                try:
                    entry = await watcher.updates(timeout=remaining)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    raise TimeoutError("listing the stream-configs bucket took too long") from None
                if entry is None:  # the initial content has been delivered
                    break
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    continue
                try:
                    scope = StreamScope(*parse_stream_config_key(entry.key))
                except (ValueError, UnicodeDecodeError):
                    continue  # not a key written by us; nothing resolves to it either
                if domain is None or scope.domain == domain:
                    found.append(decode(scope, entry.value, int(entry.revision or 0)))
                if entry.delta == 0:
                    break
        except NoKeysError:
            pass
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return sorted(found, key=lambda s: (s.scope.domain, s.scope.source_id, s.scope.stream_id))


@dataclass(frozen=True)
class ImportEntry:
    """One entry of an import file, validated."""

    scope: StreamScope
    config: StreamConfig


def parse_import(document: Any) -> list[ImportEntry]:
    """Entries of an import document, every one validated, or ``ConfigProblem`` naming the bad
    entry (its index or key) and field. Two shapes are accepted:

    - a list of ``{"domain", "source_id", "stream_id", "config"}`` objects;
    - a mapping ``"domain/source_id/stream_id" → config`` (the source id may contain ``/``;
      the domain and stream id may not — use the list form for such stream ids).
    """
    raw: list[tuple[str, Any, Any, Any, Any]] = []  # (label, domain, source, stream, config)
    if isinstance(document, list):
        for index, item in enumerate(document):
            label = f"entry {index}"
            if not isinstance(item, dict):
                raise ConfigProblem(
                    [(label, "must be an object with domain, source_id, stream_id and config")]
                )
            unknown = sorted(set(item) - {"domain", "source_id", "stream_id", "config"})
            if unknown:
                raise ConfigProblem([(f"{label}.{unknown[0]}", "unknown field")])
            if "config" not in item:
                raise ConfigProblem([(f"{label}.config", "is required")])
            raw.append(
                (
                    label,
                    item.get("domain"),
                    item.get("source_id"),
                    item.get("stream_id"),
                    item["config"],
                )
            )
    elif isinstance(document, dict):
        for key, config in document.items():
            label = f"entry {key!r}"
            parts = str(key).split("/")
            if len(parts) < 3:
                raise ConfigProblem([(label, "key must be 'domain/source_id/stream_id'")])
            raw.append((label, parts[0], "/".join(parts[1:-1]), parts[-1], config))
    else:
        raise ConfigProblem(
            [
                (
                    "file",
                    "must hold a list of {domain, source_id, stream_id, "
                    "config} objects or a mapping 'domain/source/stream' → "
                    "config",
                )
            ]
        )
    entries: list[ImportEntry] = []
    seen: dict[str, str] = {}
    for label, domain, source, stream, config in raw:
        try:
            scope = StreamScope.parse(domain, source, stream)
            parsed = parse_config(config, "config")
        except ConfigProblem as exc:
            raise ConfigProblem([(f"{label}.{f}", m) for f, m in exc.problems]) from None
        if scope.key in seen:
            raise ConfigProblem([(label, f"{scope} is also set by {seen[scope.key]}")])
        seen[scope.key] = label
        entries.append(ImportEntry(scope, parsed))
    return entries


async def import_entries(
    bucket: StreamConfigBucket, entries: Iterable[ImportEntry]
) -> list[StoredConfig]:
    """Store every (already validated) entry, in order."""
    return [await bucket.put(entry.scope, entry.config) for entry in entries]
