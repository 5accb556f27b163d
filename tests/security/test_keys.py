"""API key administration on gateway-http and the CLI: a key is shown once, never listed or
logged; revocation and rotation with an overlap period take effect on every transport."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from tests.security.conftest import Fleet
from tributary_access.apikeys import key_id_of
from tributary_operator import keys_cli
from tributary_operator.cli import build_parser
from tributary_runtime.settings import ServiceSettings

pytestmark = pytest.mark.integration


async def test_rotation_keeps_the_old_key_valid_for_the_overlap_only(fleet: Fleet) -> None:
    admin = {"X-API-Key": fleet.keys.admin}
    old = (await fleet.http.post("/keys", headers=admin, json={
        "role": "source_writer", "source_ids": ["src-a"], "domains": ["infrastructure"],
    })).json()
    rotated = await fleet.http.post(f"/keys/{old['key_id']}/rotate", headers=admin,
                                    json={"overlap_seconds": 1.5})
    assert rotated.status_code == 201
    new = rotated.json()
    assert (new["role"], new["source_ids"], new["rotated_from"]) == (
        "source_writer", ["src-a"], old["key_id"])
    assert new["previous"]["status"] == "rotating"

    during = [(await fleet.ingest(k)).status_code for k in (old["key"], new["key"])]
    await asyncio.sleep(1.6)
    after = [(await fleet.ingest(k)).status_code for k in (old["key"], new["key"])]
    ws_old, ws_new = [await fleet.ws_connect(k) for k in (old["key"], new["key"])]
    csv_old = await fleet.upload(old["key"])

    assert during == [202, 202]
    assert after == [401, 202]
    assert (ws_old["code"], ws_new["type"], csv_old.status_code) == (
        "unauthorized", "connected", 401)
    assert "expired" in ws_old["reason"] and "expired" in csv_old.json()["error"]
    again = await fleet.http.post(f"/keys/{old['key_id']}/rotate", headers=admin)
    assert again.status_code == 409


async def test_revocation_is_immediate_on_every_transport(fleet: Fleet) -> None:
    admin = {"X-API-Key": fleet.keys.admin}
    made = (await fleet.http.post("/keys", headers=admin, json={"role": "admin"})).json()
    assert (await fleet.ingest(made["key"])).status_code == 202

    revoked = await fleet.http.delete(f"/keys/{made['key_id']}", headers=admin)

    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert (await fleet.ingest(made["key"])).status_code == 401
    assert (await fleet.ws_connect(made["key"]))["code"] == "unauthorized"
    assert (await fleet.upload(made["key"])).status_code == 401
    assert (await fleet.http.delete(f"/keys/{made['key_id']}", headers=admin)).status_code == 409


async def test_listing_never_shows_a_secret_or_hash(fleet: Fleet) -> None:
    admin = {"X-API-Key": fleet.keys.admin}
    made = (await fleet.http.post("/keys", headers=admin, json={"role": "read_only"})).json()
    listing = await fleet.http.get("/keys", headers=admin)
    one = await fleet.http.get(f"/keys/{made['key_id']}", headers=admin)

    text = listing.text + one.text
    assert made["key_id"] in text and listing.headers["Cache-Control"] == "no-store"
    for key in (made["key"], fleet.keys.admin, fleet.keys.writer):
        assert key.split("_", 2)[2] not in text
    assert "secret_sha256" not in text
    ids = {k["key_id"] for k in listing.json()["keys"]}
    assert {key_id_of(fleet.keys.admin), key_id_of(fleet.keys.reader), made["key_id"]} <= ids


async def test_bad_create_requests_name_the_field(fleet: Fleet) -> None:
    admin = {"X-API-Key": fleet.keys.admin}
    cases = {
        "role must be one of admin, source_writer, read_only": {"role": "root"},
        "a source_writer key needs source_ids and domains": {"role": "source_writer"},
        "source_ids applies to role source_writer only": {"role": "admin", "source_ids": ["a"]},
        "unknown field(s) colour": {"role": "admin", "colour": 1},
    }
    for message, body in cases.items():
        reply = await fleet.http.post("/keys", headers=admin, json=body)
        assert reply.status_code == 422 and message in reply.json()["error"], (body, reply.text)


async def test_keys_never_appear_in_logs(fleet: Fleet, capfd: Any) -> None:
    wrong_secret = f"trb_{key_id_of(fleet.keys.admin)}_" + "W" * 43
    for key in (wrong_secret, fleet.keys.revoked, fleet.keys.reader):
        await fleet.ingest(key)
        await fleet.ws_connect(key, source="src-z")
        await fleet.upload(key)
    await fleet.http.post("/keys", headers={"X-API-Key": fleet.keys.admin},
                          json={"role": "admin"})
    await asyncio.sleep(0.2)  # background audit publishes and their logs
    out, err = capfd.readouterr()
    for key in (wrong_secret, fleet.keys.revoked, fleet.keys.reader, fleet.keys.admin):
        secret = key.split("_", 2)[2]
        assert secret not in out and secret not in err


async def test_cli_create_list_revoke_rotate(
    servers: Any, bus_prefix: str, jetstream: Any
) -> None:
    """The ``tributary keys`` commands, run in-process (argument parsing included)."""
    settings = ServiceSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix)

    async def cli(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await keys_cli.run(settings, build_parser().parse_args(["keys", *args]), out, err)
        return code, out.getvalue(), err.getvalue()

    code, out, _ = await cli("create", "--role", "read_only", "--name", "ci")
    key = out.strip().splitlines()[-1]
    key_id = key_id_of(key)
    assert code == 0 and key_id is not None
    code, out, _ = await cli("rotate", key_id, "--overlap-seconds", "0")
    new_key = out.strip().splitlines()[-1]
    _, listing, listing_err = await cli("list")
    revoked = await cli("revoke", key_id_of(new_key) or "")
    again = await cli("revoke", key_id_of(new_key) or "")
    writer = await cli("create", "--role", "source_writer")

    assert code == 0 and key_id_of(new_key) not in (None, key_id)
    assert f"{key_id}  read_only" in listing and "expired" in listing
    assert key.split("_", 2)[2] not in listing + listing_err
    assert revoked[0] == 0 and "revoked" in revoked[1]
    assert again[0] == 1 and "already revoked" in again[2]
    assert writer[0] == 2 and "needs --source and --domain" in writer[2]
