"""Subject, stream, bucket and durable names, under an optional namespace prefix.

Source ids may contain anything printable; in a subject each id is one token, with ``.``, ``*``,
``>``, whitespace, ``%`` and control characters escaped as ``%XX`` (UTF-8 bytes) so that any id is
legal. The original id always travels in the payload. A ``Namespace`` with a prefix (tests, or
two fleets on one server) puts every subject under ``<prefix>.`` and every JetStream object name
under ``<PREFIX>_``, so they never overlap with another namespace's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tributary_contracts.models import PointClass

_SUBJECT_UNSAFE = re.compile(r"[.*>%\s\x00-\x1f\x7f]")
_KV_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _percent_bytes(char: str, escape: str) -> str:
    return "".join(f"{escape}{b:02X}" for b in char.encode())


def escape_token(value: str) -> str:
    """Make ``value`` one legal subject token; ``unescape_token`` reverses it."""
    if value == "":
        raise ValueError("a subject token cannot be empty")
    return _SUBJECT_UNSAFE.sub(lambda m: _percent_bytes(m.group(), "%"), value)


def unescape_token(token: str) -> str:
    """Reverse ``escape_token``."""
    return _unescape(token, "%")


def escape_key(value: str) -> str:
    """Make ``value`` one legal KV key token (``[A-Za-z0-9_-]``, others as ``=XX``)."""
    if value == "":
        raise ValueError("a key token cannot be empty")
    return _KV_UNSAFE.sub(lambda m: _percent_bytes(m.group(), "="), value)


def unescape_key(token: str) -> str:
    """Reverse ``escape_key``."""
    return _unescape(token, "=")


def _unescape(token: str, escape: str) -> str:
    if escape not in token:
        return token
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == escape:
            out += bytes([int(token[i + 1 : i + 3], 16)])
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode()


_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193

DEFAULT_PARTITIONS = 4
"""Bus partitions of a fleet unless the deployment sets ``BUS_PARTITIONS``. Every gateway and
classifier of one fleet must use the same count; changing it is a drained upgrade (see the
contract document)."""

PARTITION_TOKEN = "part"
"""Token before the partition number in partitioned subjects: ``dp.raw.<domain>.part.<n>`` has
five tokens, so it can never collide with a former per-source subject (four tokens)."""


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bit: the partition hash (stable across processes, Python versions, hosts)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(domain: str, source_id: str, partitions: int) -> int:
    """Bus partition of ``(domain, source_id)``: FNV-1a of the domain and the escaped source
    token, concatenated, modulo ``partitions``. A source always maps to the same partition."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if partitions == 1:
        return 0
    return fnv1a_32((domain + escape_token(source_id)).encode()) % partitions


def is_partition_subject(subject: str) -> bool:
    """Whether a ``dp.raw``/``dp.classified`` subject (with or without a namespace prefix) is a
    partitioned one (``dp.raw.<domain>.part.<n>``, ``dp.classified.<domain>.<cls>.part.<n>``:
    a bundle) rather than a former per-source one (``dp.raw.<domain>.<source>``,
    ``dp.classified.<domain>.<cls>.<source>``: one batch). Decided by the number of tokens, so a
    source named ``part`` is never mistaken for a partition."""
    tokens = subject.split(".")
    if tokens[1:2] not in (["raw"], ["classified"]):
        tokens = tokens[1:]  # a namespace prefix (one token)
    size = 5 if tokens[1:2] == ["raw"] else 6
    return len(tokens) == size and tokens[-2] == PARTITION_TOKEN


@dataclass(frozen=True)
class Namespace:
    """All bus names of one fleet. ``Namespace()`` is production; tests pass a unique prefix."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and not _PREFIX.match(self.prefix):
            raise ValueError(f"namespace prefix {self.prefix!r} must match {_PREFIX.pattern}")

    # -- subjects -------------------------------------------------------------------------
    def _subject(self, *tokens: str) -> str:
        return ".".join((self.prefix, *tokens) if self.prefix else tokens)

    def raw_subject(self, domain: str, source_id: str) -> str:
        """``dp.raw.<domain>.<source>``: normalised, unclassified batches."""
        return self._subject("dp", "raw", domain, escape_token(source_id))

    def classified_subject(self, domain: str, cls: PointClass | str, source_id: str) -> str:
        """``dp.classified.<domain>.<cls>.<source>``: classified batches."""
        return self._subject("dp", "classified", domain, str(cls), escape_token(source_id))

    def raw_partition_subject(self, domain: str, partition: int) -> str:
        """``dp.raw.<domain>.part.<partition>``: ``PointBundle``s of one domain and partition."""
        return self._subject("dp", "raw", domain, PARTITION_TOKEN, str(partition))

    def raw_partition_filter(self, partition: int) -> str:
        """``dp.raw.*.part.<partition>``: every domain's bundles of one partition (the
        server-side filter of the classifier consumer that owns the partition)."""
        return self._subject("dp", "raw", "*", PARTITION_TOKEN, str(partition))

    def classified_partition_subject(
        self, domain: str, cls: PointClass | str, partition: int
    ) -> str:
        """``dp.classified.<domain>.<cls>.part.<partition>``: ``ClassifiedBundle``s."""
        return self._subject("dp", "classified", domain, str(cls), PARTITION_TOKEN, str(partition))

    def alert_subject(self, domain: str, severity: str, source_id: str) -> str:
        """``dp.alert.<domain>.<severity>.<source>``: alert lifecycle events."""
        return self._subject("dp", "alert", domain, severity, escape_token(source_id))

    def prediction_subject(self, domain: str, source_id: str) -> str:
        """``dp.prediction.<domain>.<source>``: ml-batch output."""
        return self._subject("dp", "prediction", domain, escape_token(source_id))

    def rejected_subject(self, transport: str) -> str:
        """``dp.rejected.<transport>``: input a gateway could not accept."""
        return self._subject("dp", "rejected", transport)

    def shadow_subject(self, domain: str, source_id: str) -> str:
        """``dp.shadow.<domain>.<source>``: live and shadow verdicts of a canary source."""
        return self._subject("dp", "shadow", domain, escape_token(source_id))

    def ledger_subject(self, transport: str) -> str:
        """``dp.ledger.<transport>``: ``RawRecord``s of the opted-in domains and sources."""
        return self._subject("dp", "ledger", transport)

    def dlq_subject(self, consumer: str) -> str:
        """``dp.dlq.<consumer>``: messages a consumer gave up on."""
        return self._subject("dp", "dlq", consumer)

    def audit_subject(self, service: str, action: str) -> str:
        """``audit.<service>.<action>``: security audit events (``AuditEvent``)."""
        return self._subject("audit", escape_token(service), escape_token(action))

    def all_raw(self) -> str:
        return self._subject("dp", "raw", ">")

    def all_classified(self) -> str:
        return self._subject("dp", "classified", ">")

    def classified_filter(self, domain: str = "*", cls: PointClass | str = "*") -> str:
        """``dp.classified.<domain>.<cls>.>``: the server-side filter of a downstream consumer
        of one domain and/or class (``*`` = any). It matches both the bundles' subjects
        (``….part.<n>``) and the former per-source ones, so it holds across the upgrade."""
        return self._subject("dp", "classified", domain, str(cls), ">")

    def all_alerts(self) -> str:
        return self._subject("dp", "alert", ">")

    def all_predictions(self) -> str:
        return self._subject("dp", "prediction", ">")

    # -- JetStream object names -----------------------------------------------------------
    def stream(self, base: str) -> str:
        """Name of stream ``base`` (DP_RAW, …) in this namespace."""
        return f"{self.prefix.upper()}_{base}" if self.prefix else base

    def bucket(self, base: str) -> str:
        """Name of KV bucket ``base`` (stream-configs, …) in this namespace."""
        return f"{self.prefix}_{base}" if self.prefix else base


WILDCARD = "*"


def stream_config_key(domain: str, source_id: str, stream_id: str) -> str:
    """Key of a StreamConfig in the ``stream-configs`` bucket.

    ``*`` stands for "any": ``(domain, *, X)`` is the domain's default for stream id or stream
    type X, ``(domain, *, *)`` the domain's default, ``(*, *, X)`` a global default for stream
    type X and ``(*, *, *)`` the global default.
    """
    return f"{escape_key(domain)}.{escape_key(source_id)}.{escape_key(stream_id)}"


def config_lookup_scopes(
    domain: str, source_id: str, stream_id: str, stream_type: str | None
) -> list[tuple[str, str, str]]:
    """``(domain, source_id, stream_id)`` scopes to try for a point's config, most specific
    first; the first one present wins: exact stream → source wildcard by stream id → by stream
    type → domain default → global default for the stream type → global default."""
    w = WILDCARD
    scopes = [(domain, source_id, stream_id), (domain, w, stream_id)]
    if stream_type:
        scopes.append((domain, w, stream_type))
    scopes.append((domain, w, w))
    if stream_type:
        scopes.append((w, w, stream_type))
    scopes.append((w, w, w))
    return scopes


def config_lookup_keys(
    domain: str, source_id: str, stream_id: str, stream_type: str | None
) -> list[str]:
    """``config_lookup_scopes`` as bucket keys (``stream_config_key``), in the same order."""
    return [
        stream_config_key(*scope)
        for scope in config_lookup_scopes(domain, source_id, stream_id, stream_type)
    ]


def parse_stream_config_key(key: str) -> tuple[str, str, str]:
    """Reverse ``stream_config_key`` into (domain, source_id, stream_id)."""
    domain, source, stream = key.split(".")
    return unescape_key(domain), unescape_key(source), unescape_key(stream)
