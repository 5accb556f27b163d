"""The config API (GET|PUT|DELETE /streams/{domain}/{source_id}/{stream_id}/config) against the
real local NATS: replies, and what really is in the stream-configs bucket."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from tributary_access.apikeys import Role, key_id_of
from tributary_contracts import STREAM_CONFIGS_BUCKET, StreamConfig, stream_config_key

pytestmark = pytest.mark.integration

CPU = {
    "stream_type": "cpu_usage",
    "unit": "percent",
    "value_constraints": {"min_value": 0, "max_value": 100, "operational_max": 80},
    "rate_constraints": {"abs_delta": 30, "severity": "warning"},
    "consecutive_violations_required": 3,
    "cooldown_seconds": 60,
}


def path(domain: str, source_id: str, stream_id: str) -> str:
    ids = (quote(i, safe="") for i in (domain, source_id, stream_id))
    return "/streams/{}/{}/{}/config".format(*ids)


class Admin:
    """Config API calls with an admin key."""

    def __init__(self, gateway: Any, key: str) -> None:
        self.gateway = gateway
        self.key = key

    async def request(
        self, method: str, url: str, key: str | None = "admin", **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["X-API-Key"] = self.key if key == "admin" else key
        return await self.gateway.client.request(method, url, headers=headers, **kwargs)

    async def put(self, url: str, body: Any, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", url, json=body, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)


@pytest.fixture
async def admin(gateway: Any) -> Admin:
    return Admin(gateway, await gateway.keys.create(Role.ADMIN, "ops"))


async def stored(gateway: Any, domain: str, source_id: str, stream_id: str) -> Any:
    kv = await gateway.js.key_value(gateway.ns.bucket(STREAM_CONFIGS_BUCKET))
    return await kv.get(stream_config_key(domain, source_id, stream_id))


def expected_json(config: dict[str, Any], version: int) -> dict[str, Any]:
    return {**StreamConfig.model_validate(config).model_dump(mode="json"), "version": version}


async def test_put_stores_the_config_and_replies_with_it_and_its_version(
    admin: Admin, gateway: Any
) -> None:
    reply = await admin.put(path("infrastructure", "server-01", "cpu_usage"), CPU)

    assert reply.status_code == 200, reply.text
    entry = await stored(gateway, "infrastructure", "server-01", "cpu_usage")
    assert reply.json() == expected_json(CPU, entry.revision)
    assert reply.headers["ETag"] == f'"{entry.revision}"'
    assert StreamConfig.model_validate_json(entry.value) == StreamConfig.model_validate(CPU)


async def test_get_returns_the_stored_config_with_its_version(admin: Admin, gateway: Any) -> None:
    put = await admin.put(path("infrastructure", "*", "cpu_usage"), CPU)

    reply = await admin.get(path("infrastructure", "*", "cpu_usage"))

    assert reply.status_code == 200
    assert reply.json() == put.json()
    entry = await stored(gateway, "infrastructure", "*", "cpu_usage")
    assert reply.json()["version"] == entry.revision


async def test_a_second_put_gets_a_higher_version_and_get_sees_it(admin: Admin) -> None:
    url = path("infrastructure", "server-01", "cpu_usage")
    first = (await admin.put(url, CPU)).json()
    changed = {**CPU, "cooldown_seconds": 5}
    second = (await admin.put(url, changed)).json()

    assert second["version"] > first["version"]
    assert (await admin.get(url)).json() == expected_json(changed, second["version"])


async def test_get_of_a_config_never_stored_is_404(admin: Admin) -> None:
    reply = await admin.get(path("infrastructure", "server-01", "nothing"))
    assert reply.status_code == 404
    assert reply.json() == {"error": "no config stored for infrastructure/server-01/nothing"}


async def test_delete_removes_the_config_then_get_and_delete_are_404(
    admin: Admin, gateway: Any
) -> None:
    url = path("infrastructure", "*", "mem")
    await admin.put(url, {})

    reply = await admin.delete(url)

    assert reply.status_code == 204 and reply.content == b""
    assert (await admin.get(url)).status_code == 404
    assert (await admin.delete(url)).status_code == 404
    with pytest.raises(Exception, match="not found"):
        await stored(gateway, "infrastructure", "*", "mem")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"value_constraints": {"max_value": 100, "warning_max": 150}},
            "value_constraints",
            "warning_max (150.0) lies above max_value (100.0)",
        ),
        (
            {"value_constraints": {"operational_min": 50, "operational_max": 10}},
            "value_constraints",
            "operational_min (50.0) must not be greater than operational_max (10.0)",
        ),
        (
            {"consecutive_violations_required": 0},
            "consecutive_violations_required",
            "Input should be greater than or equal to 1",
        ),
        (
            {"rate_constraints": {"abs_delta": -1}},
            "rate_constraints.abs_delta",
            "Input should be greater than 0",
        ),
        (
            {"rate_constraints": {"severity": "fatal"}},
            "rate_constraints.severity",
            "Input should be 'warning', 'critical' or 'anomaly'",
        ),
        ({"colour": "red"}, "colour", "unknown field"),
        ([1, 2], "config", "must be an object (a JSON/YAML mapping)"),
    ],
)
async def test_put_of_an_invalid_config_is_422_naming_the_problem_and_stores_nothing(
    admin: Admin, gateway: Any, body: Any, field: str, message: str
) -> None:
    reply = await admin.put(path("infrastructure", "*", "cpu_usage"), body)

    assert reply.status_code == 422
    assert reply.json()["field"] == field
    assert reply.json()["problems"][0] == {"field": field, "message": message}
    assert reply.json()["error"] == f"{field}: {message}"
    with pytest.raises(Exception, match="not found"):
        await stored(gateway, "infrastructure", "*", "cpu_usage")


async def test_put_of_a_body_that_is_not_json_is_400(admin: Admin) -> None:
    url = path("infrastructure", "*", "cpu_usage")
    reply = await admin.request("PUT", url, content=b"{nope")
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]
    assert (await admin.request("PUT", url, content=b"")).status_code == 400


async def test_ids_are_percent_decoded_and_any_printable_id_works(
    admin: Admin, gateway: Any
) -> None:
    source, stream = "rack.4 unit*7/ü%", "BTCUSDT:price"
    url = path("finance", source, stream)

    assert (await admin.put(url, CPU)).status_code == 200

    entry = await stored(gateway, "finance", source, stream)
    assert StreamConfig.model_validate_json(entry.value).cooldown_seconds == 60
    assert (await admin.get(url)).json()["version"] == entry.revision


async def test_wildcards_make_domain_and_global_defaults(admin: Admin, gateway: Any) -> None:
    for ids in (("infrastructure", "*", "cpu_usage"), ("*", "*", "temperature"), ("*", "*", "*")):
        reply = await admin.put(path(*ids), {"unit": "x"})
        assert reply.status_code == 200, reply.text
        assert (await stored(gateway, *ids)).value
    # a literal "*" in the URL means the same as %2A
    reply = await admin.get("/streams/*/*/temperature/config")
    assert reply.status_code == 200 and reply.json()["unit"] == "x"


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (path("*", "server-01", "cpu"), "domain"),
        (path("Infra", "server-01", "cpu"), "domain"),
        (path("infrastructure", "a\tb", "cpu"), "source_id"),
        (path("infrastructure", "s", "x" * 257), "stream_id"),
        ("/streams/infrastructure//cpu/config", "source_id"),
    ],
)
async def test_invalid_ids_in_the_path_are_422_naming_the_id(
    admin: Admin, url: str, field: str
) -> None:
    reply = await admin.put(url, CPU)
    assert reply.status_code == 422
    assert reply.json()["field"] == field


@pytest.mark.parametrize(
    "url", ["/streams/infrastructure/s/config", "/streams/a/b/c/d/config", "/streams/a/b/c/cfg"]
)
async def test_paths_of_another_shape_are_404(admin: Admin, url: str) -> None:
    reply = await admin.get(url)
    assert reply.status_code == 404
    assert "/streams/{domain}/{source_id}/{stream_id}/config" in reply.json()["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_without_a_key_or_with_an_unknown_one_is_401(admin: Admin, method: str) -> None:
    url = path("infrastructure", "*", "cpu_usage")
    missing = await admin.request(method, url, key=None, json=CPU)
    unknown = await admin.request(method, url, key="trb_unknown", json=CPU)
    assert (missing.status_code, unknown.status_code) == (401, 401)
    assert missing.json() == {"error": "missing X-API-Key header"}


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_an_ingest_key_is_403_and_changes_nothing(
    admin: Admin, gateway: Any, method: str
) -> None:
    url = path("infrastructure", "*", "cpu_usage")
    await admin.put(url, CPU)
    before = await stored(gateway, "infrastructure", "*", "cpu_usage")

    reply = await admin.request(method, url, key=gateway.key, json={"unit": "changed"})

    assert reply.status_code == 403
    assert reply.json() == {
        "error": "API key role 'source_writer' may not change stream configs (needs role admin)"
    }
    after = await stored(gateway, "infrastructure", "*", "cpu_usage")
    assert (after.revision, after.value) == (before.revision, before.value)


async def key_with_role(gateway: Any, role: str) -> str:
    """A key whose stored record names ``role`` (a role no gateway knows: fail closed)."""
    key = await gateway.keys.create(Role.READ_ONLY, "dashboards")
    kv = await gateway.js.key_value(gateway.ns.bucket("api-keys"))
    key_id = key_id_of(key)
    assert key_id is not None
    record = orjson.loads((await kv.get(key_id)).value)
    await kv.put(key_id, orjson.dumps(record | {"role": role}))
    return key


async def test_an_unknown_role_is_403(admin: Admin, gateway: Any) -> None:
    reader = await key_with_role(gateway, "reader")
    reply = await admin.get(path("infrastructure", "*", "cpu"), key=reader)
    assert reply.status_code == 403
    assert reply.json() == {"error": "API key role 'reader' is not one this service knows"}


async def test_if_match_guards_against_overwriting_a_newer_version(admin: Admin) -> None:
    url = path("infrastructure", "server-01", "cpu_usage")
    first = (await admin.put(url, CPU)).json()["version"]
    second = await admin.put(url, {**CPU, "unit": "%"}, headers={"If-Match": f'"{first}"'})
    assert second.status_code == 200

    stale = await admin.put(url, {**CPU, "unit": "lost"}, headers={"If-Match": f'"{first}"'})

    assert stale.status_code == 412
    assert stale.json()["version"] == second.json()["version"]
    assert (await admin.get(url)).json()["unit"] == "%"


async def test_a_value_written_around_the_api_that_is_invalid_is_409_on_get(
    admin: Admin, gateway: Any
) -> None:
    kv = await gateway.js.key_value(gateway.ns.bucket(STREAM_CONFIGS_BUCKET))
    await kv.put(stream_config_key("iot", "a", "t"), b'{"min_value": 1}')
    reply = await admin.get(path("iot", "a", "t"))
    assert reply.status_code == 409
    assert "min_value: unknown field" in reply.json()["error"]
    assert (await admin.delete(path("iot", "a", "t"))).status_code == 204


async def test_config_requests_are_counted_by_method_and_status(admin: Admin) -> None:
    await admin.get(path("infrastructure", "*", "nothing"))
    metrics = (await admin.gateway.client.get("/metrics")).text
    assert 'gateway_http_config_requests_total{method="GET",status="404"}' in metrics
