"""Version of the bus contract (subjects, streams, consumers, buckets, message schemas).

Semantic versioning of what a consumer or producer outside this repository relies on: a new
optional field, subject, stream or bucket is a minor version; a removed or renamed field,
subject, stream or bucket, a field made required, a narrowed type or a changed meaning is a
major version, and the former shape keeps being served or drained for one upgrade (see
docs/contract.md, "Versioning"). The AsyncAPI document carries this as ``info.version``.
"""

from __future__ import annotations

CONTRACT_VERSION = "2.0.0"
"""2.0.0: partitioned bundles (``PointBundle``/``ClassifiedBundle`` on ``….part.<n>``) replace
per-source batches on their own subjects. 1.x: one ``PointBatch``/``ClassifiedBatch`` per
message on ``dp.raw.<domain>.<source>`` / ``dp.classified.<domain>.<cls>.<source>``."""
