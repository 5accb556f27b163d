"""Settings of the classifier (env vars, prefix-free; see the README's table)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from tributary_contracts import DEFAULT_PARTITIONS
from tributary_contracts.ports import SERVICE_PORTS
from tributary_runtime.settings import ServiceSettings


class ClassifierSettings(ServiceSettings):
    """Everything the classifier reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["classifier"],
        ge=1,
        le=65535,
        description="HTTP port of /health, /ready, /metrics.",
    )
    fetch_batch_size: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Bundles one fetch asks for (each up to 2,000 points); classified together.",
    )
    drain_fetch_batch_size: int = Field(
        default=256,
        ge=1,
        le=1000,
        description="Former per-source messages one drain fetch asks for (upgrade drain).",
    )
    max_inflight_fetches: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Fetches whose outputs may wait for their publish acks at once (pipelining).",
    )
    fetch_timeout_seconds: float = Field(
        default=0.1,
        gt=0,
        le=30,
        description="Expiry of one fetch request: an idle bus delays a message at most this long.",
    )
    drain_fetch_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Expiry of one fetch of the former per-source subjects (upgrade drain).",
    )
    publish_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait for JetStream to ack the classified publishes."
    )
    publish_retry_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Delay before publishing failed outputs again (doubles per retry).",
    )
    publish_retry_max_seconds: float = Field(
        default=5.0, gt=0, description="Upper bound of the publish retry delay."
    )
    config_load_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait at start for the stream-configs bucket to load.",
    )
    state_load_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait at start for the classifier-state checkpoints to load.",
    )
    staleness_check_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often silent streams are checked against their staleness_seconds.",
    )
    staleness_max_events: int = Field(
        default=1000,
        ge=1,
        description="Most staleness alerts opened per check (the rest wait for the next one).",
    )
    checkpoint_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=25,
        description="Most seconds between two snapshots of a partition (inputs are acked by them).",
    )
    checkpoint_max_inputs: int = Field(
        default=2000,
        ge=1,
        le=15_000,
        description="A snapshot is taken sooner once this many inputs of a partition wait for it.",
    )
    max_streams_per_source: int = Field(
        default=10_000,
        ge=1,
        description="Streams with state per source; points of further new streams get the "
        "value rules only.",
    )
    state_idle_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A source silent this long leaves memory (its state stays in the bucket, "
        "restored on its next point).",
    )
    max_streams_in_memory: int = Field(
        default=200_000,
        ge=1,
        description="Stream states one process keeps in memory; above it the least recently "
        "seen sources are evicted.",
    )
    eviction_interval_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="How often idle sources are evicted."
    )
    bus_partitions: int = Field(
        default=DEFAULT_PARTITIONS,
        ge=1,
        le=1024,
        description="Bus partitions P of the fleet (the same count in every gateway).",
    )
    classifier_replicas: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Classifier processes R sharing the partitions (at most BUS_PARTITIONS).",
    )
    classifier_replica: int = Field(
        default=0,
        ge=0,
        description="This process's index k: it owns the partitions p with p % R == k.",
    )

    @model_validator(mode="after")
    def _replica_in_range(self) -> Self:
        if self.classifier_replicas > self.bus_partitions:
            raise ValueError(
                f"CLASSIFIER_REPLICAS ({self.classifier_replicas}) must not exceed "
                f"BUS_PARTITIONS ({self.bus_partitions}): a replica would own no partition"
            )
        if self.classifier_replica >= self.classifier_replicas:
            raise ValueError(
                f"CLASSIFIER_REPLICA must be below CLASSIFIER_REPLICAS "
                f"({self.classifier_replicas}), got {self.classifier_replica}"
            )
        return self

    @property
    def owned_partitions(self) -> list[int]:
        """The partitions this replica reads: p with p % CLASSIFIER_REPLICAS == its index."""
        return [
            p
            for p in range(self.bus_partitions)
            if p % self.classifier_replicas == self.classifier_replica
        ]
