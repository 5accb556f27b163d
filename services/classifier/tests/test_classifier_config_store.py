"""StreamConfigStore: resolution order, versions, deletes, invalid entries; the KV watch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from nats.js import JetStreamContext

from classifier.config_store import StreamConfigStore, load_shipped_defaults
from tributary_contracts import (
    STREAM_CONFIGS_BUCKET,
    Namespace,
    StreamConfig,
    ValueConstraints,
    stream_config_key,
)


def config_json(max_value: float) -> bytes:
    return (
        StreamConfig(value_constraints=ValueConstraints(max_value=max_value))
        .model_dump_json()
        .encode()
    )


def max_of(config: StreamConfig | None) -> float | None:
    return None if config is None else config.value_constraints.max_value


@pytest.fixture
def store() -> StreamConfigStore:
    """exact iot/dev-1/temp=1, iot/*/temp=2, iot/*/temperature=3, iot/*/*=4, */*/humidity=5,
    */*/*=6 in the bucket; shipped default for type "cpu_usage"=100, "temperature"=1000."""
    s = StreamConfigStore(defaults={"cpu_usage": shipped(100), "temperature": shipped(1000)})
    s.apply(stream_config_key("iot", "dev-1", "temp"), config_json(1), 11, None)
    s.apply(stream_config_key("iot", "*", "temp"), config_json(2), 12, None)
    s.apply(stream_config_key("iot", "*", "temperature"), config_json(3), 13, None)
    s.apply(stream_config_key("finance", "*", "*"), config_json(4), 14, None)
    s.apply(stream_config_key("*", "*", "humidity"), config_json(5), 15, None)
    return s


def shipped(max_value: float) -> StreamConfig:
    config = StreamConfig(value_constraints=ValueConstraints(max_value=max_value))
    config.version = 0
    return config


RESOLUTION = [
    # (domain, source, stream_id, stream_type) -> max_value of the config applied
    (("iot", "dev-1", "temp", None), 1),  # exact
    (("iot", "dev-1", "temp", "temperature"), 1),  # exact beats every default
    (("iot", "dev-2", "temp", None), 2),  # source wildcard by stream id
    (("iot", "dev-2", "temp", "temperature"), 2),  # stream id default beats stream type
    (("iot", "dev-2", "t2", "temperature"), 3),  # domain default by stream type
    (("iot", "dev-1", "t2", "temperature"), 3),  # by stream type, for a known source too
    (("iot", "dev-2", "t2", None), None),  # no stream type, no domain/global default: nothing
    (("iot", "dev-2", "t2", "pressure"), None),  # unknown type, no shipped default: nothing
    (("finance", "x", "temp", "temperature"), 4),  # domain default beats the global levels
    (("health", "x", "rh", "humidity"), 5),  # global default for the type from the bucket
    (("health", "x", "t", "temperature"), 1000),  # shipped default for the type
    (("health", "x", "c", "cpu_usage"), 100),  # shipped default for the type
    (("health", "x", "c", None), None),  # no type: the shipped defaults never apply
]


def test_bucket_entry_at_the_type_level_overrides_the_shipped_default(
    store: StreamConfigStore,
) -> None:
    assert max_of(store.resolve("health", "x", "c", "cpu_usage")) == 100
    store.apply(stream_config_key("*", "*", "cpu_usage"), config_json(7), 20, None)
    assert (max_of(store.resolve("health", "x", "c", "cpu_usage")), 20) == (
        7,
        store.resolve("health", "x", "c", "cpu_usage").version,  # type: ignore[union-attr]
    )
    store.apply(stream_config_key("*", "*", "cpu_usage"), None, 21, "DEL")
    assert store.resolve("health", "x", "c", "cpu_usage").version == 0  # type: ignore[union-attr]


def test_global_default_applies_last(store: StreamConfigStore) -> None:
    assert store.resolve("health", "x", "c", None) is None
    store.apply(stream_config_key("*", "*", "*"), config_json(6), 30, None)
    assert max_of(store.resolve("health", "x", "c", None)) == 6
    assert max_of(store.resolve("health", "x", "c", "cpu_usage")) == 100  # type level first
    assert max_of(store.resolve("iot", "dev-2", "t2", None)) == 6


def test_shipped_defaults_are_valid_and_versioned_zero() -> None:
    defaults = load_shipped_defaults()
    assert {
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "temperature",
        "humidity",
        "pressure",
        "heart_rate",
        "spo2",
        "blood_pressure",
        "latency_ms",
    } <= set(defaults)
    assert {c.version for c in defaults.values()} == {0}
    cpu = defaults["cpu_usage"].value_constraints
    assert (cpu.min_value, cpu.max_value) == (0, 100)
    assert StreamConfigStore().resolve("any", "s", "x", "cpu_usage") == defaults["cpu_usage"]


@pytest.mark.parametrize(("ids", "expected"), RESOLUTION)
def test_resolve_order(
    store: StreamConfigStore, ids: tuple[str, str, str, str | None], expected: float | None
) -> None:
    assert max_of(store.resolve(*ids)) == expected


def test_config_version_is_the_kv_revision(store: StreamConfigStore) -> None:
    assert [store.resolve("iot", s, "temp").version for s in ("dev-1", "dev-2")] == [11, 12]  # type: ignore[union-attr]


def test_delete_and_purge_remove_a_config(store: StreamConfigStore) -> None:
    store.apply(stream_config_key("iot", "dev-1", "temp"), b"", 20, "DEL")
    assert max_of(store.resolve("iot", "dev-1", "temp")) == 2  # falls back to the default
    store.apply(stream_config_key("iot", "*", "temp"), b"", 21, "PURGE")
    assert store.resolve("iot", "dev-1", "temp") is None
    assert len(store) == 3


@pytest.mark.parametrize(
    "value",
    [b"{not json", b'{"value_constraints": {"min_value": 10, "max_value": 1}}', b'{"bogus": 1}'],
)
def test_invalid_entry_is_ignored_and_keeps_the_last_valid_config(
    store: StreamConfigStore, value: bytes
) -> None:
    store.apply(stream_config_key("iot", "dev-1", "temp"), value, 30, None)
    config = store.resolve("iot", "dev-1", "temp")
    assert (max_of(config), config.version if config else None) == (1, 11)


def test_invalid_key_is_ignored(store: StreamConfigStore) -> None:
    store.apply("not-a-config-key", config_json(9), 31, None)
    store.apply("iot.a.b.c", config_json(9), 32, None)
    assert len(store) == 5


def test_ids_with_any_characters_round_trip_through_the_key() -> None:
    store = StreamConfigStore()
    source, stream = "dev.1 *>é", "BTCUSDT:price/x"
    store.apply(stream_config_key("finance", source, stream), config_json(5), 1, None)
    assert max_of(store.resolve("finance", source, stream)) == 5
    assert store.resolve("finance", "dev", stream) is None


# -- the watch on the real bucket ----------------------------------------------------------


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` is true; fail the test otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


@pytest.mark.integration
async def test_watch_loads_current_configs_and_follows_changes(
    jetstream: JetStreamContext, bus_prefix: str
) -> None:
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(STREAM_CONFIGS_BUCKET))
    exact, default = (
        stream_config_key("iot", "dev-1", "temp"),
        stream_config_key("iot", "*", "temp"),
    )
    first = await kv.put(exact, config_json(1))
    store = StreamConfigStore(kv)
    await store.start(load_timeout=5)
    try:
        # loaded before start() returns
        assert (max_of(store.resolve("iot", "dev-1", "temp")), store.loaded.is_set()) == (1, True)
        assert store.resolve("iot", "dev-1", "temp").version == first  # type: ignore[union-attr]

        second = await kv.put(exact, config_json(2))
        await eventually(lambda: max_of(store.resolve("iot", "dev-1", "temp")) == 2)
        assert store.resolve("iot", "dev-1", "temp").version == second  # type: ignore[union-attr]

        # a broken entry neither crashes the watch nor replaces the config; later ones apply
        await kv.put(exact, b"{broken")
        await kv.put(default, config_json(3))
        await eventually(lambda: max_of(store.resolve("iot", "dev-2", "temp")) == 3)
        assert max_of(store.resolve("iot", "dev-1", "temp")) == 2

        await kv.delete(exact)
        await eventually(lambda: max_of(store.resolve("iot", "dev-1", "temp")) == 3)
    finally:
        await store.stop()


@pytest.mark.integration
async def test_watch_of_an_empty_bucket_is_loaded_at_once(
    jetstream: JetStreamContext, bus_prefix: str
) -> None:
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(STREAM_CONFIGS_BUCKET))
    store = StreamConfigStore(kv)
    await store.start(load_timeout=5)
    try:
        assert (store.loaded.is_set(), len(store)) == (True, 0)
    finally:
        await store.stop()
