"""Settings of the operator tools (the ``tributary`` CLI, ``deploy/local/fleet.py``)."""

from __future__ import annotations

from pydantic import Field

from tributary_runtime.settings import ServiceSettings


class OperatorSettings(ServiceSettings):
    """What every service reads (NATS, bus prefix, …) and what only ``bootstrap`` needs."""

    jetstream_replicas: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description=(
            "Replicas of every stream and bucket `tributary bootstrap` creates or updates "
            "(3 on a production cluster); unset keeps existing streams as they are, new ones R1."
        ),
    )
