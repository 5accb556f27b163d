"""``tributary keys import``: legacy key records (SHA-256, role, scopes, enabled) brought over
so the old key texts keep working with the same roles on HTTP, WebSocket and CSV, listed,
revocable, rotatable and audited like any key."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import SCOPED_DOMAIN, SCOPED_SOURCE, Fleet
from tests.streams import stored_messages
from tributary_access.key_admin import parse_legacy_key
from tributary_contracts import AUDIT, AuditEvent
from tributary_operator import keys_cli
from tributary_operator.cli import build_parser
from tributary_runtime.settings import ServiceSettings

pytestmark = pytest.mark.integration

ADMIN_TEXT = "legacy-admin-4f1c9e0b7d2a"  # the legacy system's keys: any text, no id in it
WRITER_TEXT = "legacy-writer-8a7b6c5d4e3f"
READER_TEXT = "legacy-reader-0a1b2c3d4e5f"
DISABLED_TEXT = "legacy-disabled-99"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


EXPORT = (
    "id,key_hash,role,allowed_source_ids,allowed_domains,is_active,client_name\n"
    f"1,{sha(ADMIN_TEXT)},ADMIN,,,1,ops console\n"
    f"2,{sha(WRITER_TEXT).upper()},SOURCE_WRITER,{SCOPED_SOURCE},{SCOPED_DOMAIN},1,plant\n"
    f"3,{sha(READER_TEXT)},READ_ONLY,,,true,grafana\n"
    f"4,{sha(DISABLED_TEXT)},ADMIN,,,0,old laptop\n"
)


@pytest.fixture
def cli(fleet: Fleet, servers: Any, bus_prefix: str) -> Any:
    settings = ServiceSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix)

    async def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await keys_cli.run(settings, build_parser().parse_args(["keys", *args]), out, err)
        return code, out.getvalue(), err.getvalue()

    return run


async def test_imported_legacy_keys_work_with_their_roles_on_every_transport(
    fleet: Fleet, cli: Any, tmp_path: Path
) -> None:
    export = tmp_path / "api_keys.csv"
    export.write_text(EXPORT)

    code, out, err = await cli("import", str(export))
    again = await cli("import", str(export))

    assert code == 0, err
    assert out.splitlines()[-1] == "4 imported, 0 skipped"
    assert again[0] == 0 and again[1].splitlines()[-1] == "0 imported, 4 skipped"
    # the same roles and scopes as in the legacy table
    assert (await fleet.ingest(ADMIN_TEXT, domain="finance", source="x")).status_code == 202
    assert (await fleet.ingest(WRITER_TEXT)).status_code == 202
    assert (await fleet.ingest(WRITER_TEXT, source="other")).status_code == 403
    assert (await fleet.ingest(READER_TEXT)).status_code == 403
    assert (await fleet.ingest(DISABLED_TEXT)).status_code == 401
    assert (await fleet.ingest("legacy-never-imported")).status_code == 401
    assert (await fleet.ws_connect(WRITER_TEXT))["type"] == "connected"
    assert (await fleet.upload(WRITER_TEXT)).status_code == 202
    reader = await fleet.http.get(
        f"/streams/{SCOPED_DOMAIN}/*/cpu/config", headers={"X-API-Key": READER_TEXT}
    )
    assert reader.status_code in (200, 404)  # read allowed (404: no config stored)


async def test_imported_keys_are_listed_revocable_and_audited(
    fleet: Fleet, cli: Any, tmp_path: Path
) -> None:
    export = tmp_path / "keys.json"
    export.write_text(f'[{{"key_hash": "{sha(ADMIN_TEXT)}", "role": "admin", "name": "ops"}}]')
    assert (await cli("import", str(export)))[0] == 0

    listing = await fleet.http.get("/keys", headers={"X-API-Key": fleet.keys.admin})
    [imported] = [k for k in listing.json()["keys"] if k["origin"] == "legacy"]
    assert (imported["role"], imported["status"], imported["name"]) == ("admin", "active", "ops")
    assert "secret_sha256" not in imported
    _, cli_listing, _ = await cli("list")
    assert f"{imported['key_id']}  admin" in cli_listing and "origin=legacy" in cli_listing

    revoked = await cli("revoke", imported["key_id"])
    assert revoked[0] == 0
    assert (await fleet.ingest(ADMIN_TEXT)).status_code == 401

    events = [
        AuditEvent.model_validate_json(m.data)
        for m in await stored_messages(fleet.js, fleet.ns.stream(AUDIT))
    ]
    actions = [(e.action, e.target) for e in events if e.target == imported["key_id"]]
    assert actions == [("key_imported", imported["key_id"]), ("key_revoked", imported["key_id"])]


async def test_import_checks_every_row_before_storing_anything(
    fleet: Fleet, cli: Any, tmp_path: Path
) -> None:
    export = tmp_path / "bad.csv"
    export.write_text(
        "key_hash,role,source_ids\n"
        f"{sha(ADMIN_TEXT)},ADMIN,\n"
        "not-a-hash,ADMIN,\n"
        f"{sha(WRITER_TEXT)},SOURCE_WRITER,\n"
        f"{sha(READER_TEXT)},SUPERUSER,\n"
    )
    code, _, err = await cli("import", str(export))
    assert code == 2
    assert "row 2: key hash must be 64 hex digits" in err
    assert "row 3: a SOURCE_WRITER key needs its source id(s)" in err
    assert "row 4: role 'SUPERUSER' is not one of ADMIN, SOURCE_WRITER, READ_ONLY" in err
    assert (await fleet.ingest(ADMIN_TEXT)).status_code == 401  # nothing was stored
    assert (await cli("import", "--dry-run", str(tmp_path / "missing.csv")))[0] == 2


def test_legacy_rows_map_roles_scopes_and_enabled() -> None:
    row = {
        "KEY_HASH": sha("k").upper(),
        "Role": "source_writer",
        "source_ids": '["a","b"]',
        "domains": "infrastructure;finance",
        "enabled": "false",
        "id": "7",
    }
    key = parse_legacy_key(row)
    assert (
        key.secret_sha256,
        key.role.value,
        key.source_ids,
        key.domains,
        key.enabled,
        key.name,
    ) == (
        sha("k"),
        "source_writer",
        ["a", "b"],
        ["infrastructure", "finance"],
        False,
        "(legacy id 7)",
    )
