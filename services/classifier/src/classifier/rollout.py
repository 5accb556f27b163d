"""Canary rollouts in the classifier: the ``rollouts`` bucket, watched live (see
``tributary_contracts.rollout`` for the semantics).

Two seams, nothing else of the classifier changes:

- ``RolloutFollower.resolver(resolve)`` wraps the config resolver: for a source of a
  *promoted* rollout, the candidate config decides (its ``config_version`` is the rollout
  entry's KV revision); everything else resolves as before;
- ``RolloutFollower.shadow_outputs(batch, result, …)``: for a source of a rollout in force, both
  verdicts of every point as one ``ShadowBatch`` on ``dp.shadow.<domain>.<source>``, published
  with the classified output (so the input is acked only once they are durable).

The other verdict is computed with its own previous point per canary stream (rate rules), kept
here, so the classifier's stream state is untouched. A change of the bucket (start, promote,
roll back, another percentage) applies to the next input, without a restart.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from classifier.classify import ConfigResolver, MessageResult, Verdict, classify, late_verdict
from classifier.metrics import ERRORS
from tributary_contracts import (
    MSG_ID_HEADER,
    DataPoint,
    Namespace,
    PointBatch,
    Rollout,
    RolloutState,
    ShadowBatch,
    ShadowVerdict,
    StreamConfig,
    batch_msg_id,
)
from tributary_runtime.kvwatch import KvFollower
from tributary_runtime.publish import Outgoing

log = structlog.get_logger(__name__)

_DELETE_OPERATIONS = ("DEL", "PURGE")
_CACHE_LIMIT = 100_000
_LAST_LIMIT = 200_000


class RolloutFollower(KvFollower):
    """The rollouts in force, by domain, from the ``rollouts`` bucket."""

    def __init__(self, kv: Any = None) -> None:
        self._kv = kv
        self._rollouts: dict[str, tuple[Rollout, int]] = {}
        self._by_source: dict[tuple[str, str], tuple[Rollout, int] | None] = {}
        self._last: dict[
            tuple[str, str, str], tuple[float, datetime, float | None, datetime | None]
        ] = {}
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    # -- which rollout a source is in -------------------------------------------------------
    def rollout_of(self, domain: str, source_id: str) -> tuple[Rollout, int] | None:
        """The rollout in force for the source (first by name when several select it)."""
        key = (domain, source_id)
        cache = self._by_source
        if key in cache:
            return cache[key]
        found = None
        for name in sorted(self._rollouts):
            rollout, revision = self._rollouts[name]
            if (
                rollout.domain == domain
                and rollout.state is not RolloutState.ROLLED_BACK
                and rollout.selector.selects(source_id)
            ):
                found = (rollout, revision)
                break
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = found
        return found

    def resolver(self, resolve: ConfigResolver) -> ConfigResolver:
        """``resolve``, except that a promoted rollout's candidate decides for its sources."""

        def resolve_with_rollouts(
            domain: str, source_id: str, stream_id: str, stream_type: str | None
        ) -> StreamConfig | None:
            found = self.rollout_of(domain, source_id) if self._rollouts else None
            if found is not None and found[0].state is RolloutState.PROMOTED:
                candidate = found[0].candidate(stream_id, stream_type)
                if candidate is not None:
                    return candidate
            return resolve(domain, source_id, stream_id, stream_type)

        return resolve_with_rollouts

    # -- the other verdict --------------------------------------------------------------------
    def shadow_outputs(
        self,
        ns: Namespace,
        batch: PointBatch,
        result: MessageResult,
        classified_at: datetime,
        live_resolve: ConfigResolver,
        stream: str,
    ) -> list[Outgoing]:
        """The ShadowBatch of ``batch`` when its source is in a rollout (none or one)."""
        if not self._rollouts:
            return []
        found = self.rollout_of(batch.domain, batch.source_id)
        if found is None:
            return []
        rollout, revision = found
        live: dict[int, tuple[Verdict, int | None]] = {
            id(point): (verdict, version)
            for items in result.by_class.values()
            for point, verdict, version in items
        }
        verdicts = []
        for point in batch.points:
            decided = live.get(id(point))
            if decided is None:
                continue
            other = self._other_config(rollout, batch, point, live_resolve)
            shadow = self._verdict(batch, point, other)
            verdict, version = decided
            verdicts.append(
                ShadowVerdict(
                    stream_id=point.stream_id,
                    ts=point.ts,
                    stream_type=point.stream_type,
                    value=point.value,
                    live_cls=verdict.cls,
                    live_rule=verdict.rule,
                    live_version=version,
                    shadow_cls=shadow.cls,
                    shadow_rule=shadow.rule,
                    shadow_reason=shadow.reason,
                    shadow_version=other.version if other is not None else None,
                )
            )
        if not verdicts:
            return []
        body = ShadowBatch(
            rollout=rollout.name,
            revision=revision,
            state=rollout.state,
            domain=batch.domain,
            source_id=batch.source_id,
            classified_at=classified_at,
            verdicts=verdicts,
        )
        msg_id = batch_msg_id(
            batch.domain,
            batch.source_id,
            [(v.stream_id, v.ts) for v in verdicts],
            f"shadow:{rollout.name}:{revision}",
        )
        message = Outgoing(
            ns.shadow_subject(batch.domain, batch.source_id),
            body.model_dump_json().encode(),
            {MSG_ID_HEADER: msg_id},
            stream,
        )
        return [message]

    @staticmethod
    def _other_config(
        rollout: Rollout, batch: PointBatch, point: DataPoint, live_resolve: ConfigResolver
    ) -> StreamConfig | None:
        """Shadow state: the candidate (or the live config if it has none for the stream);
        promoted: the live config the candidate replaced."""
        live = live_resolve(batch.domain, batch.source_id, point.stream_id, point.stream_type)
        if rollout.state is RolloutState.PROMOTED:
            return live
        return rollout.candidate(point.stream_id, point.stream_type) or live

    def _verdict(self, batch: PointBatch, point: DataPoint, config: StreamConfig | None) -> Verdict:
        key = (batch.domain, batch.source_id, point.stream_id)
        last = self._last.get(key)
        if last is None:
            verdict = classify(point, config)
            self._remember(key, (point.value, point.ts, None, None))
        else:
            last_value, last_ts, prev_value, prev_ts = last
            if point.ts > last_ts:
                verdict = classify(point, config, last_value, last_ts)
                self._remember(key, (point.value, point.ts, last_value, last_ts))
            elif point.ts == last_ts:
                verdict = classify(point, config, prev_value, prev_ts)
            else:
                verdict = late_verdict(point, config, last_ts)
        return verdict

    def _remember(
        self,
        key: tuple[str, str, str],
        value: tuple[float, datetime, float | None, datetime | None],
    ) -> None:
        if len(self._last) >= _LAST_LIMIT and key not in self._last:
            self._last.clear()  # bounded: rate rules of the shadow restart from the next point
        self._last[key] = value

    # -- the bucket -----------------------------------------------------------------------------
    def apply(
        self, key: str, value: bytes | None, revision: int | None, operation: str | None
    ) -> None:
        if operation in _DELETE_OPERATIONS or not value:
            self._rollouts.pop(key, None)
        else:
            try:
                rollout = Rollout.model_validate_json(value)
            except ValidationError as exc:
                ERRORS.labels(stage="rollout", error_type="invalid_rollout").inc()
                log.warning("ignoring invalid rollout", key=key, error=str(exc)[:500])
                return
            rev = revision or 0
            rollout.configs = {
                scope: config.model_copy(update={"version": rev})
                for scope, config in rollout.configs.items()
            }
            self._rollouts[key] = (rollout, rev)
            log.info(
                "rollout applied",
                rollout=rollout.name,
                state=rollout.state.value,
                revision=rev,
                domain=rollout.domain,
            )
        self._by_source.clear()

    async def start(self, load_timeout: float = 10.0) -> None:
        if self._kv is None:
            raise RuntimeError("RolloutFollower.start needs the rollouts KeyValue")
        await self._start_watch(await self._kv.watchall(), "rollout-watch", load_timeout)

    def _apply_entry(self, entry: Any) -> None:
        self.apply(entry.key, entry.value, entry.revision, entry.operation)

    def _apply_failed(self, entry: Any) -> None:
        ERRORS.labels(stage="rollout", error_type="apply_failed").inc()
        log.exception("failed to apply a rollout entry", key=entry.key)
