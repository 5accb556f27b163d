"""Classification configuration of a stream (JSON in the ``stream-configs`` bucket and the API).

Per point, first match wins: outside ``min_value..max_value`` (physical) → critical; beyond
``alert_min``/``alert_max`` → critical; outside ``operational_min..operational_max`` → warning;
beyond ``warning_min``/``warning_max`` → warning; a rate constraint exceeded against the stream's
previous point → anomaly (or the severity set); else normal. Every limit is optional.
``consecutive_violations_required`` and ``cooldown_seconds`` govern when an alert opens, not the
class of a point.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, model_validator

DEFAULT_CONSECUTIVE_VIOLATIONS = 3
"""Seed 001's default: an alert opens after 3 violating points in a row (when a config omits it).
Stored configs carry their own value (the whole model is stored), so changing this default never
changes a config already in the bucket."""

DEFAULT_COOLDOWN_SECONDS = 300.0
"""Seed 001's default quiet time after an alert closes (when a config omits it)."""


class Severity(StrEnum):
    """Class a rate-of-change violation gives a point."""

    WARNING = "warning"
    CRITICAL = "critical"
    ANOMALY = "anomaly"


class ValueConstraints(BaseModel):
    """Value zones, from the widest (physical) to the narrowest (warning)."""

    model_config = ConfigDict(extra="forbid")

    min_value: float | None = Field(default=None, description="Physical minimum; below → critical.")
    max_value: float | None = Field(default=None, description="Physical maximum; above → critical.")
    alert_min: float | None = Field(default=None, description="At or below → critical zone.")
    alert_max: float | None = Field(default=None, description="At or above → critical zone.")
    operational_min: float | None = Field(
        default=None, description="Operational minimum; below → warning."
    )
    operational_max: float | None = Field(
        default=None, description="Operational maximum; above → warning."
    )
    warning_min: float | None = Field(default=None, description="At or below → warning zone.")
    warning_max: float | None = Field(default=None, description="At or above → warning zone.")

    @model_validator(mode="after")
    def _zones_are_consistent(self) -> ValueConstraints:
        pairs = [
            ("min_value", "max_value"),
            ("alert_min", "alert_max"),
            ("operational_min", "operational_max"),
            ("warning_min", "warning_max"),
        ]
        for low, high in pairs:
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) must not be greater than {high} ({hi})")
        # Every other limit must lie inside the physical range.
        for name in (
            "alert_min",
            "alert_max",
            "operational_min",
            "operational_max",
            "warning_min",
            "warning_max",
        ):
            limit = getattr(self, name)
            if limit is None:
                continue
            if self.min_value is not None and limit < self.min_value:
                raise ValueError(f"{name} ({limit}) lies below min_value ({self.min_value})")
            if self.max_value is not None and limit > self.max_value:
                raise ValueError(f"{name} ({limit}) lies above max_value ({self.max_value})")
        return self


class RateConstraints(BaseModel):
    """Limits on the change between a stream's consecutive points."""

    model_config = ConfigDict(extra="forbid")

    abs_delta: PositiveFloat | None = Field(
        default=None, description="Largest allowed |value - previous value|."
    )
    rel_delta: PositiveFloat | None = Field(
        default=None, description="Largest allowed change in % of |previous value|."
    )
    abs_slope: PositiveFloat | None = Field(
        default=None, description="Largest allowed |Δvalue| per second."
    )
    rel_slope: PositiveFloat | None = Field(
        default=None, description="Largest allowed change in % of |previous value| per second."
    )
    severity: Severity = Field(
        default=Severity.ANOMALY, description="Class a point gets when a rate limit fires."
    )


class StreamConfig(BaseModel):
    """Everything the classifier applies to one stream (or to a default pattern of streams)."""

    model_config = ConfigDict(extra="forbid")

    stream_type: str | None = Field(default=None, description="Kind of stream this config is for.")
    unit: str | None = Field(default=None, description="Unit of the values, for humans.")
    value_constraints: ValueConstraints = Field(
        default_factory=ValueConstraints, description="Value zones."
    )
    rate_constraints: RateConstraints | None = Field(
        default=None, description="Rate-of-change limits against the previous point."
    )
    consecutive_violations_required: int = Field(
        default=DEFAULT_CONSECUTIVE_VIOLATIONS,
        ge=1,
        description="Violating points in a row before an alert opens.",
    )
    cooldown_seconds: NonNegativeFloat = Field(
        default=DEFAULT_COOLDOWN_SECONDS,
        description="Quiet time after an alert closes before another may open.",
    )
    staleness_seconds: PositiveFloat | None = Field(
        default=None, description="No point for this long → staleness event."
    )
    version: int | None = Field(
        default=None,
        description="Revision of this config (set from the KV revision when read; not stored).",
        exclude=True,
    )
