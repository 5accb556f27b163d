"""JetStream KV helpers: the watch loop and stop every KV-backed cache shares, ``kv_keys``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.js.errors import NoKeysError


async def kv_keys(kv: Any) -> list[str]:
    """The keys of KV bucket ``kv``; [] for an empty bucket (nats-py raises NoKeysError)."""
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []


class KvFollower:
    """Mixin for a cache fed by a KV watcher (``self._watcher``, run as ``self._task``).

    ``_follow`` applies each entry with ``_apply_entry`` (a failure goes to ``_apply_failed``
    and never stops the watch) and sets ``self.loaded`` once the initial content is in.
    """

    _watcher: Any
    _task: asyncio.Task[None] | None
    loaded: asyncio.Event

    def _apply_entry(self, entry: Any) -> None:
        raise NotImplementedError

    def _apply_failed(self, entry: Any) -> None:
        """Called inside ``except``: count and log the entry that could not be applied."""
        raise NotImplementedError

    async def _start_watch(self, watcher: Any, name: str, load_timeout: float) -> None:
        """Follow ``watcher`` in a task named ``name``; return once its initial content is
        applied (after ``load_timeout`` seconds: stop and raise ``TimeoutError``)."""
        self._watcher = watcher
        self._task = asyncio.create_task(self._follow(), name=name)
        try:
            await asyncio.wait_for(self.loaded.wait(), load_timeout)
        except TimeoutError:
            await self.stop()
            raise

    async def _follow(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:  # marker: the initial content has been delivered
                self.loaded.set()
                continue
            try:
                self._apply_entry(entry)
            except Exception:  # one bad entry must never stop the watch
                self._apply_failed(entry)
            if entry.delta == 0:
                self.loaded.set()

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._watcher = None
        self._task = None
