"""Stream configurations held in memory, kept current by watching the ``stream-configs`` bucket.

Keys are ``stream_config_key(domain, source_id, stream_id)``; ``*`` stands for "any" (see
``config_lookup_scopes`` for the order). The version of a config is its KV revision. An entry
that is not a valid StreamConfig is logged and ignored: it changes nothing, so the last valid
config of that key stays in force (and a watch never crashes).

Shipped defaults by stream type (``data/stream_type_defaults.json``, version 0) fill the
``(*, *, <stream_type>)`` level when the bucket has no entry there.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Any

import structlog
from pydantic import ValidationError

from classifier.metrics import CONFIG_ERRORS, CONFIGS_LOADED
from tributary_contracts import (
    StreamConfig,
    config_lookup_scopes,
    parse_stream_config_key,
)
from tributary_contracts.subjects import WILDCARD
from tributary_runtime.kvwatch import KvFollower

log = structlog.get_logger(__name__)

_DELETE_OPERATIONS = ("DEL", "PURGE")
DEFAULTS_VERSION = 0
"""``config_version`` of a shipped default (KV revisions start at 1, so 0 is never a revision)."""
_RESOLVED_CACHE_LIMIT = 200_000


def load_shipped_defaults() -> dict[str, StreamConfig]:
    """The shipped defaults by stream type, validated (a bad file is a defect: it raises)."""
    text = resources.files("classifier").joinpath("data/stream_type_defaults.json").read_text()
    configs = {}
    for stream_type, doc in json.loads(text).items():
        if stream_type.startswith("_"):
            continue
        config = StreamConfig.model_validate(doc)
        config.version = DEFAULTS_VERSION
        configs[stream_type] = config
    return configs


class StreamConfigStore(KvFollower):
    """In-memory StreamConfigs by ``(domain, source_id, stream_id)``, resolved per point."""

    def __init__(self, kv: Any = None, defaults: dict[str, StreamConfig] | None = None) -> None:
        self._kv = kv
        self._configs: dict[tuple[str, str, str], StreamConfig] = {}
        """By ``(domain, source_id, stream_id)`` (the bucket key parsed: no escaping per
        lookup)."""
        self._defaults = load_shipped_defaults() if defaults is None else defaults
        self._resolved: dict[tuple[str, str, str, str | None], StreamConfig | None] = {}
        """Resolution results, emptied whenever a config changes."""
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()
        """Set once the bucket's current content has been read."""

    # -- resolution -----------------------------------------------------------------------
    def resolve(
        self, domain: str, source_id: str, stream_id: str, stream_type: str | None = None
    ) -> StreamConfig | None:
        """The first config present in ``config_lookup_scopes`` order (exact → (domain, *, id) →
        (domain, *, type) → (domain, *, *) → (*, *, type) → (*, *, *)); the shipped default of
        the stream type stands in at (*, *, type) when the bucket has none there."""
        ids = (domain, source_id, stream_id, stream_type)
        resolved = self._resolved
        if ids in resolved:
            return resolved[ids]
        config = self._lookup(domain, source_id, stream_id, stream_type)
        if len(resolved) >= _RESOLVED_CACHE_LIMIT:
            resolved.clear()
        resolved[ids] = config
        return config

    def _lookup(
        self, domain: str, source_id: str, stream_id: str, stream_type: str | None
    ) -> StreamConfig | None:
        configs = self._configs
        type_default = (WILDCARD, WILDCARD, stream_type) if stream_type else None
        for scope in config_lookup_scopes(domain, source_id, stream_id, stream_type):
            config = configs.get(scope)
            if config is not None:
                return config
            if scope == type_default and stream_type in self._defaults:
                return self._defaults[stream_type]
        return None

    def __len__(self) -> int:
        return len(self._configs)

    # -- updates --------------------------------------------------------------------------
    def apply(
        self, key: str, value: bytes | None, revision: int | None, operation: str | None
    ) -> None:
        """Apply one bucket entry (a put, a delete or a purge) to the in-memory configs."""
        try:
            scope = parse_stream_config_key(key)
        except (ValueError, UnicodeDecodeError):
            CONFIG_ERRORS.labels(reason="invalid_key").inc()
            log.warning("ignoring stream config with an invalid key", key=key)
            return
        if operation in _DELETE_OPERATIONS or not value:
            if self._configs.pop(scope, None) is not None:
                self._resolved.clear()
                self._log_change("stream config removed", key=key, revision=revision)
        else:
            try:
                config = StreamConfig.model_validate_json(value)
            except ValidationError as exc:
                CONFIG_ERRORS.labels(reason="invalid_config").inc()
                log.warning(
                    "ignoring invalid stream config",
                    key=key,
                    revision=revision,
                    error=str(exc).replace("\n", " ")[:500],
                )
                return
            config.version = revision
            self._configs[scope] = config
            self._resolved.clear()
            self._log_change("stream config applied", key=key, revision=revision)
        CONFIGS_LOADED.set(len(self._configs))

    def _log_change(self, event: str, **fields: Any) -> None:
        # One line per change once running; the initial load (maybe 10,000s) only at debug.
        (log.info if self.loaded.is_set() else log.debug)(event, **fields)

    # -- watching -------------------------------------------------------------------------
    async def start(self, load_timeout: float = 10.0) -> None:
        """Watch the bucket; return once its current content is loaded (or raise TimeoutError)."""
        if self._kv is None:
            raise RuntimeError("StreamConfigStore.start needs the stream-configs KeyValue")
        await self._start_watch(await self._kv.watchall(), "stream-config-watch", load_timeout)
        log.info("stream configs loaded", configs=len(self._configs))

    def _apply_entry(self, entry: Any) -> None:
        self.apply(entry.key, entry.value, entry.revision, entry.operation)

    def _apply_failed(self, entry: Any) -> None:
        CONFIG_ERRORS.labels(reason="apply_failed").inc()
        log.exception("failed to apply a stream config entry", key=entry.key)
