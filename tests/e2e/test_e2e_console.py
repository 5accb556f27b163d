"""The web console in a real browser (Debian's Chromium, driven by Playwright) against the real
fleet as processes: log in with a key, see a point ingested a moment before, edit a config and
see the next point's class change, watch a CSV job reach 100 %. Screenshots of each page go to
docs/console/*.png (the console README shows them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import ROOT, FleetProcess

CHROMIUM = Path("/usr/bin/chromium")
# Never a browser of Playwright's own: Debian's, with nothing that phones home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "docs" / "console"
DOMAIN, SOURCE, STREAM = "infrastructure", "console-demo", "cpu_usage"
WAIT_SECONDS = 60.0
CONFIG_GRACE_SECONDS = 1.0  # a config change reaches the classifier by a KV watch (ms here)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (install.sh)"),
]


@pytest.fixture(scope="module")
def fleet(servers: object) -> Iterator[FleetProcess]:
    """The services the console shows: HTTP and CSV ingest, classifier, writer, console."""
    yield from fleet_for_test(servers, skip=("gateway-ws", "gateway-mqtt", "ml-batch"))


async def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def post_points(fleet: FleetProcess, *points: tuple[datetime, float]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(
            f"{fleet.url('gateway-http')}/ingest/data",
            json={
                "source_id": SOURCE,
                "domain": DOMAIN,
                "data_points": [
                    {"stream_id": STREAM, "value": value, "timestamp": at.isoformat()}
                    for at, value in points
                ],
            },
            headers={"X-API-Key": fleet.admin_key},
        )
    assert reply.status_code == 202, reply.text


async def reload_until(page: Any, url: str, selector: str, what: str) -> Any:
    """Load ``url`` again until ``selector`` matches (bounded), then return its locator."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        await page.goto(url)
        found = page.locator(selector)
        if await found.count():
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not show within {WAIT_SECONDS}s on {url}")
        await asyncio.sleep(0.5)


def explorer_url(base: str, now: datetime) -> str:
    return f"{base}/console/streams?" + urlencode(
        {
            "domain": DOMAIN,
            "source_id": SOURCE,
            "stream_id": STREAM,
            "from": (now - timedelta(seconds=100)).isoformat(),
            "to": (now + timedelta(seconds=40)).isoformat(),
        }
    )


def point_row(value: str, cls: str) -> str:
    return f'table.points tr:has(td:text-is("{value}")):has(.badge:text-is("{cls}"))'


async def test_console_in_a_browser(fleet: FleetProcess) -> None:
    from playwright.async_api import async_playwright

    base = fleet.url("console")
    # `make run` (fleet.py) prints where the console is.
    assert any(f"console          {base}/console/" in line for line in fleet.lines)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(WAIT_SECONDS * 1000)

            # Log in with a key: a page without the cookie sends the visitor to the login form.
            await page.goto(f"{base}/console/")
            assert page.url.startswith(f"{base}/console/login")
            await shot(page, "login")
            await page.fill("input[name=key]", fleet.admin_key)
            await page.click("button:text('Log in')")
            await page.wait_for_url(f"{base}/console/")
            assert "local fleet admin (admin)" in await page.inner_text("header")

            # Fleet status: every service started shows up (scraped in the background).
            await reload_until(
                page,
                f"{base}/console/",
                'tr:has(td:text-is("writer-postgres")) .up',
                "writer-postgres as up",
            )
            await reload_until(
                page,
                f"{base}/console/",
                'tr:has(td:text-is("classifier")) .up',
                "classifier as up",
            )

            # A point ingested a moment before shows in the stream explorer, classified.
            history = [
                (now - timedelta(seconds=5 * i), 30.5 + (i % 7) * 2.0) for i in range(18, 0, -1)
            ]
            await post_points(fleet, *history, (now, 42.0))
            await reload_until(
                page, explorer_url(base, now), point_row("42", "normal"), "the ingested point"
            )

            # The config editor validates with StreamConfig, then saves (admin key).
            editor = f"{base}/console/configs/edit?" + urlencode(
                {"domain": DOMAIN, "source_id": SOURCE, "stream_id": STREAM}
            )
            await page.goto(editor)
            await page.fill(
                "textarea[name=config]", '{"value_constraints": {"operational_max": "high"}}'
            )
            await page.click("button:text('Save')")
            problems = await page.inner_text("ul.problems")
            assert "value_constraints.operational_max" in problems
            await page.fill(
                "textarea[name=config]",
                '{\n  "unit": "%",\n  "value_constraints": {"min_value": 0, "max_value": 100,'
                ' "operational_max": 70, "alert_max": 90},\n'
                '  "consecutive_violations_required": 1, "cooldown_seconds": 0\n}',
            )
            await page.click("button:text('Save')")
            assert "saved as version" in await page.inner_text("p.saved")
            await shot(page, "config-editor")

            # The next point is classified by the new config: 75 is a warning now, 95 critical.
            await asyncio.sleep(CONFIG_GRACE_SECONDS)
            await post_points(fleet, (now + timedelta(seconds=5), 75.0))
            later = [
                (now + timedelta(seconds=5 * i), v) for i, v in enumerate((95, 97, 64, 55, 96), 2)
            ]
            await post_points(fleet, *later)
            await reload_until(
                page,
                explorer_url(base, now),
                point_row("75", "warning"),
                "the next point as a warning",
            )
            await reload_until(
                page, explorer_url(base, now), point_row("95", "critical"), "the critical point"
            )
            await reload_until(
                page,
                explorer_url(base, now),
                "svg.chart rect.alert-span",
                "the alert span on the chart",
            )
            assert await page.locator("svg.chart circle.cls-warning").count() == 1
            assert await console_sessions(fleet) == {"tributary_reader"}
            assert await page.locator("svg.chart circle.cls-critical").count() == 3
            await shot(page, "explorer")

            await reload_until(
                page,
                f"{base}/console/alerts",
                f'table.alerts tr:has(a:text("{SOURCE}")):has(.badge:text-is("critical"))'
                ':has(td:text-is("open"))',
                "the critical alert",
            )
            await shot(page, "alerts")

            await page.goto(f"{base}/console/configs")
            assert await page.locator(f'a:text("{DOMAIN}/{SOURCE}/{STREAM}")').count() == 1
            await shot(page, "configs")

            # A CSV job's progress, live on the jobs page (its script polls the API), to 100 %.
            await page.goto(f"{base}/console/jobs")
            job_id = await upload_csv(fleet, rows=4000)
            done = page.locator(f'.progress[data-job="{job_id}"] .pct:text-is("100.0 %")')
            await done.wait_for()
            row = page.locator(f'tr:has(.progress[data-job="{job_id}"])')
            assert await row.locator(".status").inner_text() == "completed"
            assert await row.locator(".published").inner_text() == "8,000"
            await shot(page, "csv-jobs")

            await page.goto(f"{base}/console/")
            await shot(page, "fleet")
        finally:
            await browser.close()


async def console_sessions(fleet: FleetProcess) -> set[str]:
    """The PostgreSQL roles of the console's open sessions (it reads as the read-only role)."""
    conn = await asyncpg.connect(fleet.postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT usename FROM pg_stat_activity"
            " WHERE application_name = 'tributary-console' AND datname = current_database()"
        )
    finally:
        await conn.close()
    return {r["usename"] for r in rows}


async def upload_csv(fleet: FleetProcess, rows: int) -> str:
    start = time.time() - rows - 60
    lines = ["timestamp,temperature,humidity"] + [
        f"{start + i:.0f},{20 + (i % 50) / 10:.1f},{50 + (i % 30) / 10:.1f}" for i in range(rows)
    ]
    async with httpx.AsyncClient(timeout=60) as client:
        reply = await client.post(
            f"{fleet.url('csv-importer')}/ingest/csv",
            files={"file": ("weather.csv", ("\n".join(lines) + "\n").encode(), "text/csv")},
            data={"domain": DOMAIN, "source_id": "weather-station-7"},
            headers={"X-API-Key": fleet.admin_key},
        )
    assert reply.status_code == 202, reply.text
    return str(reply.json()["job_id"])
