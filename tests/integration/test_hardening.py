"""Requests a review found to break the API: too large, out of range, or wide boxes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from citytel.config import Settings
from tests.integration.conftest import serve_api

pytestmark = pytest.mark.integration

BIG = str(2**64)


async def test_body_over_the_cap_is_refused_before_it_is_read(settings: Settings) -> None:
    """413 naming the setting, for a declared length and for a chunked body alike."""
    capped = settings.model_copy(update={"api_max_body_bytes": 4096})
    body = b'{"ids": [' + b"1," * 40_000 + b"1]}"
    async with serve_api(capped) as api:
        declared = await api.post(
            "/v1/dead-letters/replay", content=body, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert "CITYTEL_API_MAX_BODY_BYTES" in declared.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 1024):
                yield body[start : start + 1024]

        streamed = await api.post(
            "/v1/dead-letters/replay",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413
        small = await api.post("/v1/dead-letters/replay", json={"ids": [1, 2, 3]})
        assert small.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    [
        ("GET", f"/v1/dead-letters/{BIG}", {}, None),
        ("POST", f"/v1/dead-letters/{BIG}/replay", {}, None),
        ("GET", "/v1/dead-letters/-1", {}, None),
        ("GET", "/v1/dead-letters", {"offset": BIG}, None),
        ("POST", "/v1/dead-letters/replay", {}, {"ids": [int(BIG)]}),
        ("GET", "/v1/containers", {"offset": BIG}, None),
        ("GET", "/v1/devices/attention", {"offset": BIG}, None),
        ("GET", "/v1/containers/T-WC-000/readings", {"bucket": "9" * 30 + "d"}, None),
        ("GET", "/v1/containers/T-WC-000/readings", {"bucket": "99999999999d"}, None),
        ("GET", "/v1/containers/T-WC-000/readings", {"to": "0001-01-01T00:00:00Z"}, None),
        (
            "GET",
            "/v1/containers/T-WC-000/readings",
            {"from": "0001-01-01T00:00:00+01:00", "to": "0001-01-02T00:00:00Z"},
            None,
        ),
        (
            "GET",
            "/v1/containers/T-WC-000/readings",
            {"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:59:59-01:00"},
            None,
        ),
        (
            "GET",
            "/v1/containers/T-WC-000/readings",
            {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59Z", "bucket": "1d"},
            None,
        ),
        ("GET", "/v1/dead-letters", {"since": "0001-01-01T00:00:00+01:00"}, None),
        ("GET", "/v1/dead-letters", {"until": "9999-12-31T23:59:59-01:00"}, None),
        ("POST", "/v1/dead-letters/replay", {}, {"since": "0001-01-01T00:00:00+01:00"}),
    ],
)
@pytest.mark.usefixtures("fleet")
async def test_out_of_range_values_are_422_not_500(
    api: httpx.AsyncClient,
    method: str,
    path: str,
    params: dict[str, str],
    body: object,
) -> None:
    """Numbers past 64 bits, huge buckets, dates at the ends of the calendar: a 422 saying so."""
    response = await api.request(method, path, params=params, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


async def set_fill(pool: asyncpg.Pool, container: str, lon: float, lat: float) -> None:
    await pool.execute(
        "UPDATE containers SET location = ST_SetSRID(ST_MakePoint($2, $3), 4326)::geography"
        " WHERE id = $1",
        container,
        lon,
        lat,
    )


# Containers spread around the world: (id, lon, lat).
PLACES = [
    ("T-WC-000", -7.6, 33.57),  # Casablanca
    ("T-WC-001", 151.2, -33.87),  # Sydney
    ("T-WC-002", -122.4, 37.77),  # San Francisco
    ("T-WC-003", 179.5, 0.0),  # just west of the antimeridian
    ("T-WC-004", -179.5, 0.0),  # just east of it
    ("T-WC-005", 0.0, 89.5),  # near the pole
    ("T-WC-006", 100.0, 10.0),
]


def inside(box: tuple[float, float, float, float], lon: float, lat: float) -> bool:
    min_lon, min_lat, max_lon, max_lat = box
    in_lat = min_lat <= lat <= max_lat
    if min_lon <= max_lon:
        return in_lat and min_lon <= lon <= max_lon
    return in_lat and (lon >= min_lon or lon <= max_lon)


BOXES = [
    (-180.0, -90.0, 180.0, 90.0),  # the whole world
    (-179.0, -89.0, 179.0, 89.0),  # nearly
    (0.0, -10.0, 179.9, 10.0),  # wider than a hemisphere, east
    (-170.0, -60.0, 20.0, 60.0),  # wider than a hemisphere, west
    (-10.0, 30.0, 0.0, 40.0),  # a city-sized region
    (-7.7, 33.5, -7.5, 33.6),  # a district
    (170.0, -5.0, -170.0, 5.0),  # across the antimeridian
    (90.0, -90.0, -90.0, 90.0),  # across it, and wider than a hemisphere
    (-180.0, 80.0, 180.0, 90.0),  # a polar cap
]


@pytest.mark.parametrize("box", BOXES, ids=[",".join(f"{v:g}" for v in b) for b in BOXES])
@pytest.mark.usefixtures("fleet")
async def test_bbox_of_any_width(
    pool: asyncpg.Pool, api: httpx.AsyncClient, box: tuple[float, ...]
) -> None:
    """A box holds exactly the containers inside it, whatever its width; min_lon > max_lon
    crosses the antimeridian."""
    for ident, lon, lat in PLACES:
        await set_fill(pool, ident, lon, lat)
    await pool.execute("DELETE FROM containers WHERE id <> ALL($1::text[])", [p[0] for p in PLACES])
    expected = {ident for ident, lon, lat in PLACES if inside(box, lon, lat)}  # type: ignore[arg-type]
    bbox = ",".join(str(v) for v in box)
    listed = await api.get("/v1/containers", params={"bbox": bbox, "limit": 1000})
    assert listed.status_code == 200, listed.text
    assert {c["id"] for c in listed.json()["items"]} == expected
    assert listed.json()["total"] == len(expected)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_asset_from_the_api(api: httpx.AsyncClient, page: str) -> None:
    """/docs and /redoc name no other host, and every script, style and icon they use is served."""
    html = (await api.get(page)).text
    assert "http://" not in html
    assert "https://" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert asset.startswith("/static/docs/"), asset
        served = await api.get(asset)
        assert served.status_code == 200, asset
        assert served.content, asset
