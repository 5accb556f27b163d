"""``SINK_ROUTES``: which writer owns which domain, one setting read by every writer.

Text form ``iot=sqlserver,*=postgres``: exact domains first, ``*`` for every other domain. A
domain with no route (and no ``*``) is owned by no writer; writers skip what they do not own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tributary_contracts.models import DOMAIN_PATTERN
from tributary_contracts.subjects import WILDCARD

SINKS = ("postgres", "sqlserver")
_DOMAIN = re.compile(DOMAIN_PATTERN)


@dataclass(frozen=True)
class SinkRoutes:
    """Parsed ``SINK_ROUTES``: domain → sink name, with ``*`` as the fallback."""

    routes: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> SinkRoutes:
        """Parse ``domain=sink,…``; raises ValueError naming the bad entry."""
        routes: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in text.split(","))):
            domain, sep, sink = (part.strip() for part in entry.partition("="))
            if not sep or not (domain == WILDCARD or _DOMAIN.match(domain)):
                raise ValueError(
                    f"SINK_ROUTES entry {entry!r} must look like 'domain=sink' or '*=sink'"
                )
            if sink not in SINKS:
                raise ValueError(
                    f"SINK_ROUTES entry {entry!r}: sink must be one of {', '.join(SINKS)}"
                )
            if domain in routes:
                raise ValueError(f"SINK_ROUTES names domain {domain!r} twice")
            routes[domain] = sink
        if not routes:
            raise ValueError("SINK_ROUTES is empty; expected e.g. '*=postgres'")
        return cls(tuple(routes.items()))

    def sink_for(self, domain: str) -> str | None:
        """The sink that owns ``domain``, or None when no route matches."""
        table = dict(self.routes)
        return table.get(domain, table.get(WILDCARD))

    def owns(self, sink: str, domain: str) -> bool:
        return self.sink_for(domain) == sink
