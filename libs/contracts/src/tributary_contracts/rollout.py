"""Canary rollouts of a classification config: which sources, which candidate configs, what
state, and the shadow verdicts the classifier publishes for the comparison.

A ``Rollout`` is one entry of the ``rollouts`` KV bucket (key: its name). For the sources its
``CanarySelector`` picks (a list, globs, or a percentage by stable hash of the source id) in its
domain, the classifier computes a second verdict with the candidate config:

- ``shadow``: the live config decides, the candidate's verdict is the shadow;
- ``promoted``: the candidate decides for the selected sources, the live config's verdict is the
  shadow (the comparison goes on);
- ``rolled_back``: the rollout has no effect any more.

Both verdicts of every point of a selected source go out as a ``ShadowBatch`` on
``dp.shadow.<domain>.<source>`` (stream ``DP_SHADOW``) with the classified output, before the
input is acked; writer-postgres stores them in ``rollout_verdicts``. Changing the entry (promote,
roll back, another percentage) changes the classifier's behaviour at once, without a restart.
"""

from __future__ import annotations

import fnmatch
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from tributary_contracts.models import PointClass
from tributary_contracts.stream_config import StreamConfig
from tributary_contracts.subjects import fnv1a_32

ROLLOUT_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
PERCENT_BUCKETS = 10_000
"""A source's hash bucket is ``fnv1a_32(source_id) % 10000``; percent p picks buckets < p × 100."""


def canary_bucket(source_id: str) -> int:
    """The stable bucket (0..9999) of ``source_id``: the same on every host and process."""
    return fnv1a_32(source_id.encode()) % PERCENT_BUCKETS


class CanarySelector(BaseModel):
    """Which sources of the domain are in the canary: any of the three rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[str] = Field(default_factory=list, description="Source ids, exactly.")
    globs: list[str] = Field(default_factory=list, description="fnmatch globs on source ids.")
    percent: float = Field(
        default=0, ge=0, le=100, description="Share of sources by stable hash of the source id."
    )

    def selects(self, source_id: str) -> bool:
        if source_id in self.sources:
            return True
        if any(fnmatch.fnmatchcase(source_id, glob) for glob in self.globs):
            return True
        return self.percent > 0 and canary_bucket(source_id) < self.percent * 100


class RolloutState(StrEnum):
    SHADOW = "shadow"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class Rollout(BaseModel):
    """A canary of candidate configs for some sources of one domain (entry of ``rollouts``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ROLLOUT_NAME_PATTERN, description="Key in the rollouts bucket.")
    domain: str = Field(description="Domain whose sources the canary covers.")
    selector: CanarySelector = Field(description="Which sources are in the canary.")
    configs: dict[str, StreamConfig] = Field(
        min_length=1,
        description="Candidate configs by stream id or stream type ('*': every stream); a "
        "stream with none keeps its live config in both verdicts.",
    )
    state: RolloutState = Field(default=RolloutState.SHADOW, description="See module docstring.")
    updated_at: AwareDatetime = Field(description="When the state last changed (UTC).")
    note: str = Field(default="", max_length=1024, description="What changes, for humans.")

    @model_validator(mode="after")
    def _selects_something(self) -> Rollout:
        s = self.selector
        if not (s.sources or s.globs or s.percent > 0):
            raise ValueError("the selector picks no source: give sources, globs or percent > 0")
        return self

    def candidate(self, stream_id: str, stream_type: str | None) -> StreamConfig | None:
        """The candidate config of a stream: by stream id, then stream type, then '*'."""
        configs = self.configs
        return (
            configs.get(stream_id)
            or (configs.get(stream_type) if stream_type else None)
            or configs.get("*")
        )


class ShadowVerdict(BaseModel):
    """Both verdicts of one point of a canary source."""

    model_config = ConfigDict(extra="forbid")

    stream_id: str
    ts: AwareDatetime
    stream_type: str | None = None
    value: float
    live_cls: PointClass = Field(description="Class that decided (stored in data_points).")
    live_rule: str
    live_version: int | None = Field(description="Config version that decided.")
    shadow_cls: PointClass = Field(description="Class the other config gives.")
    shadow_rule: str
    shadow_reason: str
    shadow_version: int | None = None


class ShadowBatch(BaseModel):
    """The verdict pairs of one classified input of a canary source, on ``dp.shadow.>``."""

    model_config = ConfigDict(extra="forbid")

    rollout: str = Field(description="Rollout name.")
    revision: int = Field(description="KV revision of the rollout entry in force.")
    state: RolloutState = Field(description="shadow: live decided; promoted: candidate decided.")
    domain: str
    source_id: str
    classified_at: AwareDatetime
    verdicts: list[ShadowVerdict] = Field(min_length=1)
