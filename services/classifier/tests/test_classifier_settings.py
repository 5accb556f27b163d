"""Which partitions a replica owns, and the settings that cannot work together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from classifier.settings import ClassifierSettings


@pytest.mark.parametrize(
    ("partitions", "replicas", "owned"),
    [
        (4, 1, [[0, 1, 2, 3]]),
        (4, 2, [[0, 2], [1, 3]]),
        (5, 2, [[0, 2, 4], [1, 3]]),
        (4, 4, [[0], [1], [2], [3]]),
    ],
)
def test_replica_k_owns_the_partitions_p_mod_r_equal_k(
    partitions: int, replicas: int, owned: list[list[int]]
) -> None:
    got = [
        ClassifierSettings(
            bus_partitions=partitions, classifier_replicas=replicas, classifier_replica=k
        ).owned_partitions
        for k in range(replicas)
    ]
    assert got == owned  # every partition has exactly one owner


def test_more_replicas_than_partitions_is_refused_naming_both() -> None:
    with pytest.raises(ValidationError, match="CLASSIFIER_REPLICAS \\(5\\) must not exceed"):
        ClassifierSettings(bus_partitions=4, classifier_replicas=5)


def test_a_replica_index_beyond_the_count_is_refused() -> None:
    with pytest.raises(ValidationError, match="CLASSIFIER_REPLICA must be below"):
        ClassifierSettings(classifier_replicas=2, classifier_replica=2)
