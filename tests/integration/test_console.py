"""The operations console in a real headless Chromium, against a real server fed by MQTT ingest.

Every request the page makes is recorded and any to another host is refused and fails the test;
so does any console error. What is checked is what a person sees: features drawn on the map,
the colour of a container's circle read back from the canvas, the numbered round, the lists.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, Request, Route, async_playwright

from citytel.config import Settings
from citytel.keys import Scope
from tests.integration.conftest import Fleet, create_key, serve_api, wait_until
from tests.integration.test_events import fill, parked, publish, push_settings

# One browser at a time when the suite runs on several workers: each draws WebGL in software.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("browser")]

# Set to a path to keep the screenshot the first test takes (the README's picture).
SCREENSHOT = os.environ.get("CITYTEL_CONSOLE_SCREENSHOT")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, drawing WebGL in software."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed: scripts/bootstrap.sh installs it (apt: chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"],
        )
        yield launched
        await launched.close()


@dataclass
class Watched:
    """A page, the requests it made, and what went wrong in it."""

    page: Page
    requests: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # The Authorization header of each API request ("" when none was sent).
    authorization: dict[str, str] = field(default_factory=dict)

    def assert_clean(self) -> None:
        assert self.refused == [], "requests outside the service"
        assert self.errors == [], "errors in the page"


async def open_console(browser: Browser, api: httpx.AsyncClient) -> Watched:
    """The console page, loaded, its map drawn; requests to any other host refused."""
    watched = await open_page(browser, api, "/")
    await watched.page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
    await map_idle(watched.page)
    return watched


async def open_page(browser: Browser, api: httpx.AsyncClient, path: str) -> Watched:
    """A page of the service, its requests recorded and any to another host refused."""
    service = urlsplit(str(api.base_url)).netloc
    context = await browser.new_context(
        accept_downloads=True, viewport={"width": 1400, "height": 900}
    )
    page = await context.new_page()
    watched = Watched(page)

    async def only_the_service(route: Route, request: Request) -> None:
        watched.requests.append(request.url)
        if "/v1/" in request.url:
            watched.authorization[request.url] = await request.header_value("authorization") or ""
        where = urlsplit(request.url)
        if where.scheme in ("data", "blob") or where.netloc == service:
            await route.continue_()
        else:
            watched.refused.append(request.url)
            await route.abort()

    await page.route("**/*", only_the_service)
    # The key the API client sends, as an operator pastes it (kept for the session, and left
    # alone when the page sets another).
    key = api.headers.get("authorization", "").removeprefix("Bearer ")
    await page.add_init_script(
        f"if (!sessionStorage.getItem('citytel.apiKey')) "
        f"sessionStorage.setItem('citytel.apiKey', {json.dumps(key)});"
    )
    page.on("console", lambda m: watched.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watched.errors.append(str(e)))
    await page.goto(str(api.base_url) + path)
    return watched


async def map_idle(page: Page) -> None:
    await page.wait_for_function(
        "window.citytelMap && window.citytelMap.loaded() && !window.citytelMap.isMoving()",
        timeout=20_000,
    )


async def rendered_ids(page: Page, layer: str) -> set[str]:
    ids = await page.evaluate(
        "layer => window.citytelMap.queryRenderedFeatures({layers: [layer]})"
        ".map(f => f.properties.id)",
        layer,
    )
    return set(ids)


async def colour_at(page: Page, container: str) -> str:
    """The colour drawn at the centre of a container's circle, as #rrggbb."""
    colour: str = await page.evaluate(
        """id => {
            const map = window.citytelMap;
            const c = window.citytelConsole.containers.get(id);
            const at = map.project([c.location.lon, c.location.lat]);
            const canvas = map.getCanvas();
            const scale = canvas.width / canvas.clientWidth;
            const copy = document.createElement("canvas");
            copy.width = canvas.width; copy.height = canvas.height;
            const ctx = copy.getContext("2d");
            ctx.drawImage(canvas, 0, 0);
            const x = Math.round(at.x * scale), y = Math.round(at.y * scale);
            const [r, g, b] = ctx.getImageData(x, y, 1, 1).data;
            return "#" + [r, g, b].map(v => v.toString(16).padStart(2, "0")).join("");
        }""",
        container,
    )
    return colour


async def legend_colour(page: Page, fill_pct: float) -> str:
    """The colour the legend gives a fill level."""
    colour: str = await page.evaluate(
        """fill => [...document.querySelectorAll('#legend li[data-from]')]
            .filter(li => li.dataset.from !== '' && fill >= Number(li.dataset.from))
            .map(li => li.dataset.colour).pop()""",
        fill_pct,
    )
    return colour


async def streaming(page: Page) -> bool:
    """Whether the page says its event stream is live."""
    return "stream live" in (await page.text_content("#freshness") or "")


async def stored(pool: asyncpg.Pool, fills: int, spots: int = 0) -> bool:
    """Whether ingest has stored this many fill and parking readings."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM waste_readings) AS w,"
        " (SELECT count(*) FROM parking_readings) AS p"
    )
    assert row is not None
    return (row["w"], row["p"]) == (fills, spots)


def close(a: str, b: str, tolerance: int = 12) -> bool:
    """Two #rrggbb colours within ``tolerance`` per channel (antialiasing, colour management)."""
    return all(abs(int(a[i : i + 2], 16) - int(b[i : i + 2], 16)) <= tolerance for i in (1, 3, 5))


async def test_console_draws_the_fleet_and_follows_a_reading(
    settings: Settings, fleet: Fleet, ingest: Any, pool: asyncpg.Pool, browser: Browser
) -> None:
    """Every container and spot is drawn; a reading over MQTT recolours its container, no reload."""
    await ingest()
    settings = push_settings(settings)
    target = fleet.containers[6]
    fills = (fill(settings, c, 10.0 + 4 * i) for i, c in enumerate(fleet.containers))
    await publish(settings, *fills)
    spots_taken = (parked(settings, s, occupied=i % 3 == 0) for i, s in enumerate(fleet.spots))
    await publish(settings, *spots_taken)
    await wait_until(lambda: stored(pool, 20, 40))
    async with serve_api(settings) as api:
        containers = (await api.get("/v1/containers", params={"limit": 1000})).json()
        spots = (await api.get("/v1/parking/spots")).json()
        watched = await open_console(browser, api)
        page = watched.page
        assert await rendered_ids(page, "containers") == {c["id"] for c in containers["items"]}
        assert await rendered_ids(page, "spots") == {s["id"] for s in spots["items"]}
        before = await colour_at(page, target)
        assert close(before, await legend_colour(page, 34.0)), before
        if SCREENSHOT:
            await page.screenshot(path=SCREENSHOT)

        await publish(settings, fill(settings, target, 96.0))
        expected = await legend_colour(page, 96.0)

        async def recoloured() -> bool:
            return close(await colour_at(page, target), expected)

        await wait_until(recoloured, within=15, every=0.2)
        assert (await page.evaluate("() => performance.getEntriesByType('navigation').length")) == 1
        assert "stream live" in (await page.text_content("#freshness") or "")
        watched.assert_clean()
        await page.context.close()


async def test_dispatch_draws_the_round_and_exports_it(
    settings: Settings, fleet: Fleet, ingest: Any, pool: asyncpg.Pool, browser: Browser
) -> None:
    """Choosing a zone draws the API's round, numbered, and exports it as GeoJSON."""
    await ingest()
    settings = push_settings(settings)
    due = [fleet.containers[i] for i in (1, 5, 9)]  # in maarif
    await publish(settings, *(fill(settings, c, 85.0 + i) for i, c in enumerate(due)))
    await wait_until(lambda: stored(pool, 3))
    async with serve_api(settings) as api:
        round_ = (await api.get("/v1/collection/round", params={"zone": "maarif"})).json()
        stops = [s["container"]["id"] for s in round_["stops"]]
        assert sorted(stops) == sorted(due)
        watched = await open_console(browser, api)
        page = watched.page
        await page.click("#tab-dispatch")
        await page.select_option("#round-zone", "maarif")
        await page.click("#round-form button[type=submit]")
        await page.wait_for_function("document.querySelectorAll('.stop-marker').length === 3")
        markers = await page.eval_on_selector_all(".stop-marker", "ms => ms.map(m => m.title)")
        assert markers == [f"stop {i}: {c}" for i, c in enumerate(stops, start=1)]
        listed = await page.eval_on_selector_all(
            "#round-stops li", "items => items.map(i => i.dataset.key)"
        )
        assert listed == stops
        async with page.expect_download() as download_info:
            await page.click("#round-export")
        download = await download_info.value
        exported = json.loads(await asyncio.to_thread(Path(await download.path()).read_text))
        points = [f["properties"] for f in exported["features"] if f["geometry"]["type"] == "Point"]
        assert [(p["order"], p["container"]) for p in points] == list(enumerate(stops, start=1))
        watched.assert_clean()
        await page.context.close()


async def test_lists_work_from_the_keyboard(
    settings: Settings, fleet: Fleet, ingest: Any, pool: asyncpg.Pool, browser: Browser
) -> None:
    """Arrow keys move through the fullest containers; Enter opens one with its stored history."""
    await ingest()
    settings = push_settings(settings)
    second = fleet.containers[3]
    await publish(settings, fill(settings, fleet.containers[2], 90.0))
    await publish(settings, fill(settings, second, 40.0), fill(settings, second, 50.0))
    await wait_until(lambda: stored(pool, 3))
    async with serve_api(settings) as api:
        watched = await open_console(browser, api)
        page = watched.page
        await page.focus("#containers li:first-child")
        await page.keyboard.press("ArrowDown")
        focused = await page.evaluate("() => document.activeElement.dataset.key")
        assert focused == second
        await page.keyboard.press("Enter")
        await page.wait_for_selector(f"#panel[data-id='{second}']")
        assert await page.get_attribute("#panel", "data-readings") == "2"
        assert await page.locator("#panel svg polyline").count() == 1
        first = api.headers["authorization"]
        assert set(watched.authorization.values()) == {first}

        # A pasted key is sent with every API call, the event stream included.
        other = await create_key(settings.database_url.get_secret_value(), Scope.ADMIN)
        await page.fill("#api-key", other)
        watched.authorization.clear()
        async with page.expect_navigation():
            await page.press("#api-key", "Enter")
        await page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
        await wait_until(lambda: streaming(page), within=20)
        assert any("/v1/events" in url for url in watched.authorization)
        assert set(watched.authorization.values()) == {f"Bearer {other}"}
        watched.assert_clean()
        await page.context.close()


@pytest.mark.parametrize(
    ("path", "operation", "pattern"),
    [("/docs", ".opblock", "^operations-"), ("/redoc", "[id^='tag/']", "/operation/[^/]+$")],
)
async def test_the_api_docs_render_offline(
    settings: Settings, browser: Browser, path: str, operation: str, pattern: str
) -> None:
    """Swagger UI and ReDoc draw every operation of the API from the service's own assets."""
    async with serve_api(settings) as api:
        schema = (await api.get("/openapi.json")).json()
        operations = sum(
            method in {"get", "put", "post", "delete", "patch"}
            for route in schema["paths"].values()
            for method in route
        )
        watched = await open_page(browser, api, path)
        await watched.page.wait_for_selector(operation, timeout=20_000)
        # Told apart by their ids: ReDoc wraps each operation's section in a second one.
        drawn = await watched.page.evaluate(
            "([operation, pattern]) => new Set([...document.querySelectorAll(operation)]"
            ".map(e => e.id).filter(id => new RegExp(pattern).test(id))).size",
            [operation, pattern],
        )
        assert operations > 10
        assert drawn == operations
        watched.assert_clean()
        await watched.page.context.close()
