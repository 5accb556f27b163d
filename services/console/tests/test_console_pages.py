"""The web console's pages in process (the browser test in tests/e2e drives the real fleet):
login by key and cookie, the explorer's chart, the config editor's validation and its admin-only
saving, the jobs page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from console.context import KEY_COOKIE
from tributary_access.apikeys import Role
from tributary_contracts import STREAM_CONFIGS_BUCKET
from tributary_runtime.stream_configs import StreamConfigBucket, StreamScope

pytestmark = pytest.mark.integration

SCOPE = {"domain": "infrastructure", "source_id": "*", "stream_id": "cpu"}


async def login(console: Any, key: str) -> None:
    reply = await console.client.post("/console/login", data={"key": key, "next": "/console/jobs"})
    assert (reply.status_code, reply.headers["location"]) == (303, "/console/jobs")
    assert "httponly" in reply.headers["set-cookie"].lower()
    assert "samesite=strict" in reply.headers["set-cookie"].lower()


async def test_pages_send_a_visitor_without_a_key_to_the_login_page(console: Any) -> None:
    reply = await console.client.get("/console/alerts")

    assert reply.status_code == 303
    assert reply.headers["location"] == "/console/login?next=%2Fconsole%2Falerts"


async def test_login_with_a_wrong_key_says_why_and_sets_no_cookie(console: Any) -> None:
    reply = await console.client.post("/console/login", data={"key": "trb_nope"})

    assert reply.status_code == 401
    assert "malformed API key" in reply.text
    assert KEY_COOKIE not in reply.cookies


async def test_a_logged_in_reader_sees_the_pages(console: Any) -> None:
    await login(console, console.reader)
    now = datetime.now(UTC)
    await console.insert_points(
        [
            ("infrastructure", "server-01", "cpu", now - timedelta(minutes=2), 50.0, "normal"),
            ("infrastructure", "server-01", "cpu", now - timedelta(minutes=1), 90.0, "warning"),
        ]
    )

    pages = {
        path: await console.client.get(path)
        for path in ("/console/", "/console/alerts", "/console/jobs", "/console/configs")
    }
    explorer = await console.client.get(
        "/console/streams",
        params={"domain": "infrastructure", "source_id": "server-01", "stream_id": "cpu"},
    )

    assert {p: r.status_code for p, r in pages.items()} == dict.fromkeys(pages, 200)
    assert "test reader (read_only)" in pages["/console/"].text
    assert "Content-Security-Policy" in explorer.headers
    assert explorer.text.count('class="point cls-normal"') == 1
    assert explorer.text.count('class="point cls-warning"') == 1
    assert "2 points" in explorer.text


async def test_the_explorer_refuses_a_source_outside_the_keys_scope(console: Any) -> None:
    scoped = await console.keys.create(
        Role.SOURCE_WRITER,
        "s1",
        source_ids=["server-01"],
        domains=["infrastructure"],
    )
    await login(console, scoped)

    reply = await console.client.get(
        "/console/streams",
        params={"domain": "infrastructure", "source_id": "server-02", "stream_id": "cpu"},
    )

    assert reply.status_code == 403
    assert "may not read source_id" in reply.text


async def test_a_read_only_key_may_view_but_not_save_a_config(console: Any) -> None:
    await login(console, console.reader)

    view = await console.client.get("/console/configs/edit", params=SCOPE)
    save = await console.client.post(
        "/console/configs/edit", data={**SCOPE, "version": "0", "config": "{}"}
    )

    assert view.status_code == 200 and " readonly" in view.text
    assert save.status_code == 403


async def test_the_editor_names_the_invalid_field_and_stores_nothing(console: Any) -> None:
    await login(console, console.admin)

    reply = await console.client.post(
        "/console/configs/edit",
        data={**SCOPE, "version": "0", "config": '{"value_constraints": {"warning_max": "high"}}'},
    )

    assert reply.status_code == 422
    assert "value_constraints.warning_max" in reply.text
    bucket = StreamConfigBucket(
        await console.js.key_value(console.settings.namespace.bucket(STREAM_CONFIGS_BUCKET))
    )
    assert await bucket.get(StreamScope(**SCOPE)) is None


async def test_the_editor_saves_a_valid_config_for_an_admin(console: Any) -> None:
    await login(console, console.admin)

    reply = await console.client.post(
        "/console/configs/edit",
        data={**SCOPE, "version": "0", "config": '{"value_constraints": {"warning_max": 85}}'},
    )
    stale = await console.client.post(
        "/console/configs/edit",
        data={**SCOPE, "version": "0", "config": '{"value_constraints": {"warning_max": 80}}'},
    )

    assert reply.status_code == 303
    bucket = StreamConfigBucket(
        await console.js.key_value(console.settings.namespace.bucket(STREAM_CONFIGS_BUCKET))
    )
    stored = await bucket.get(StreamScope(**SCOPE))
    assert stored is not None and stored.config is not None
    assert stored.config.value_constraints.warning_max == 85
    assert f"saved={stored.version}" in reply.headers["location"]
    assert stale.status_code == 409 and "changed meanwhile" in stale.text


async def test_a_form_post_from_another_origin_is_refused(console: Any) -> None:
    await login(console, console.admin)

    reply = await console.client.post(
        "/console/configs/edit",
        data={**SCOPE, "version": "0", "config": "{}"},
        headers={"Origin": "http://evil.example"},
    )

    assert reply.status_code == 403


async def test_the_explorer_downsamples_a_range_with_more_points_than_the_chart_holds(
    console: Any,
) -> None:
    await login(console, console.reader)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)
    await console.insert_points(
        [
            (
                "infrastructure",
                "busy",
                "cpu",
                start + timedelta(seconds=i),
                float(i % 100),
                "critical" if i == 250 else "normal",
            )
            for i in range(1000)
        ]
    )

    reply = await console.client.get(
        "/console/streams",
        params={"domain": "infrastructure", "source_id": "busy", "stream_id": "cpu"},
    )

    buckets = reply.text.count('class="point cls-')
    assert 0 < buckets <= console.settings.chart_buckets
    assert f"1,000 points, shown as {buckets} buckets" in reply.text
    assert reply.text.count('class="point cls-critical"') == 1  # the worst class of its bucket
