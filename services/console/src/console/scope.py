"""What a key may read: the same scope as what it may write.

``admin`` and ``read_only`` keys read everything; a ``source_writer`` key reads only the domains
and source ids it may write to (``*`` = any). Queries of one stream are refused (403) outside
that scope; listings are filtered to it in SQL (``clause``) or in memory (``allows``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tributary_access.apikeys import ANY, ApiKeyRecord, Role


@dataclass(frozen=True)
class ReadScope:
    """``None`` means any; otherwise the listed values only."""

    domains: tuple[str, ...] | None = None
    source_ids: tuple[str, ...] | None = None
    text: str = "everything"

    @classmethod
    def of(cls, record: ApiKeyRecord) -> ReadScope:
        if record.role is not Role.SOURCE_WRITER:
            return cls()
        domains = None if ANY in record.domains else tuple(record.domains)
        sources = None if ANY in record.source_ids else tuple(record.source_ids)
        return cls(domains, sources, record.scope_text())

    @property
    def unrestricted(self) -> bool:
        return self.domains is None and self.source_ids is None

    def allows(self, domain: str, source_id: str) -> bool:
        """May this key read the data of ``domain``/``source_id``?"""
        return (self.domains is None or domain in self.domains) and (
            self.source_ids is None or source_id in self.source_ids
        )

    def allows_config(self, domain: str, source_id: str) -> bool:
        """May this key read the config stored for this scope? Also the defaults (``*``) that
        apply to its streams."""
        return (self.domains is None or domain in self.domains or domain == ANY) and (
            self.source_ids is None or source_id in self.source_ids or source_id == ANY
        )

    def refusal(self, domain: str, source_id: str) -> str | None:
        """The 403 reason for reading ``domain``/``source_id``, or None when allowed."""
        if self.allows(domain, source_id):
            return None
        which = (
            f"domain {domain[:64]!r}"
            if self.domains is not None and domain not in self.domains
            else f"source_id {source_id[:64]!r}"
        )
        return (
            f"API key role 'source_writer' may not read {which} (it reads what it may write; "
            f"its scope: {self.text})"
        )

    def params(self) -> tuple[list[str] | None, list[str] | None]:
        """The two SQL parameters of ``clause``."""
        return (
            list(self.domains) if self.domains is not None else None,
            list(self.source_ids) if self.source_ids is not None else None,
        )


def clause(first: int) -> str:
    """SQL condition on ``domain``/``source_id`` with parameters ``$first``, ``$first+1``
    (``ReadScope.params``): a NULL list means any."""
    return (
        f"(${first}::text[] IS NULL OR domain = ANY(${first}::text[])) AND "
        f"(${first + 1}::text[] IS NULL OR source_id = ANY(${first + 1}::text[]))"
    )
