"""Partition assignment: stable, the same from the subject and from the payload's ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from classifier.partition import (
    PartitionFilter,
    fnv1a_32,
    partition_durable,
    source_partition,
)
from classifier.settings import ClassifierSettings
from tributary_contracts import Namespace

SOURCES = ["server-01", "rack 7.a", "dev*1", "a>b", "100%", "ünïcode", "x" * 256, "s.1.2"]


def test_fnv1a_matches_the_published_test_vectors() -> None:
    assert [fnv1a_32(b""), fnv1a_32(b"a"), fnv1a_32(b"foobar")] == [
        0x811C9DC5,
        0xE40C292C,
        0xBF9CF968,
    ]


@pytest.mark.parametrize("prefix", ["", "pt1"])
def test_subject_and_payload_ids_give_the_same_partition(prefix: str) -> None:
    ns = Namespace(prefix)
    for partitions in (2, 3, 7):
        filters = [PartitionFilter(ns, i, partitions) for i in range(partitions)]
        for domain in ("iot", "infrastructure"):
            for source in SOURCES:
                subject = ns.raw_subject(domain, source)
                owners = [f.index for f in filters if f.owns_subject(subject)]
                assert owners == [source_partition(domain, source, partitions)]
                assert [f.index for f in filters if f.owns_source(domain, source)] == owners


def test_sources_spread_over_every_partition_and_one_partition_owns_all() -> None:
    spread = {source_partition("infrastructure", f"server-{i}", 4) for i in range(200)}
    assert spread == {0, 1, 2, 3}
    assert {source_partition("iot", s, 1) for s in SOURCES} == {0}


def test_durable_names() -> None:
    assert [partition_durable(0, 1), partition_durable(1, 3)] == ["classifier", "classifier-1-of-3"]


def test_partition_index_must_be_below_the_count() -> None:
    with pytest.raises(ValidationError, match="CLASSIFIER_PARTITION must be below"):
        ClassifierSettings(classifier_partitions=2, classifier_partition=2)
    assert ClassifierSettings(classifier_partitions=2, classifier_partition=1).classifier_partition
