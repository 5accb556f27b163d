"""Live settings: a service's chosen settings, overridable at run time from the ``switches``
KV bucket (key ``<service>.<SETTING>``, value: the setting as text, as in the environment).

A service declares which of its settings it reads live (only those that are safe to change
between two requests) and asks ``LiveSwitches.value(NAME)`` where it uses them: the bucket's
value when there is one, else ``None`` (the caller falls back to its environment setting).
``tributary switches set|unset|list`` writes the bucket; a watch applies a change at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

from tributary_runtime.kvwatch import KvFollower

log = structlog.get_logger(__name__)

_DELETE_OPERATIONS = ("DEL", "PURGE")
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


def switch_key(service: str, name: str) -> str:
    return f"{service}.{name.upper()}"


def parse_bool(value: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); ``ValueError`` otherwise."""
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def parse_list(value: str) -> frozenset[str]:
    """A comma list, items stripped, empty items dropped."""
    return frozenset(item.strip() for item in value.split(",") if item.strip())


class LiveSwitches(KvFollower):
    """The live values of ``names`` for ``service``, followed from the bucket."""

    def __init__(self, kv: Any, service: str, names: Iterable[str]) -> None:
        self._kv = kv
        self.service = service
        self.names = frozenset(n.upper() for n in names)
        self._values: dict[str, str] = {}
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    def value(self, name: str) -> str | None:
        return self._values.get(name.upper())

    def apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        service, _, name = key.partition(".")
        if service != self.service or name not in self.names:
            return
        if operation in _DELETE_OPERATIONS or value is None:
            if self._values.pop(name, None) is not None:
                log.info("live setting removed, environment value in force", setting=name)
            return
        self._values[name] = value.decode(errors="replace")
        log.info("live setting applied", setting=name, value=self._values[name])

    async def start(self, load_timeout: float = 10.0) -> None:
        prefix = f"{self.service}."
        await self._start_watch(await self._kv.watch(f"{prefix}>"), "switches-watch", load_timeout)

    def _apply_entry(self, entry: Any) -> None:
        self.apply(entry.key, entry.value, entry.operation)

    def _apply_failed(self, entry: Any) -> None:
        log.exception("failed to apply a live setting", key=entry.key)
