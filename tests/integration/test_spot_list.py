"""GET /v1/parking/spots: every spot with its status, filtered and paged."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration


async def test_spots_listed_by_zone_box_and_page(
    api: httpx.AsyncClient, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    """Zone and box narrow the list; pages cover it once, by id; statuses are the stored ones."""
    await pool.execute(
        "INSERT INTO spot_latest (spot_id, ts, occupied, last_seen)"
        " VALUES ($1, now(), true, now())",
        fleet.spots[0],
    )
    first = (await api.get("/v1/parking/spots", params={"limit": 15})).json()
    assert (first["total"], first["next_offset"]) == (40, 15)
    pages = [first]
    while pages[-1]["next_offset"] is not None:
        params = {"limit": 15, "offset": pages[-1]["next_offset"]}
        pages.append((await api.get("/v1/parking/spots", params=params)).json())
    listed = [s["id"] for page in pages for s in page["items"]]
    assert listed == sorted(fleet.spots)
    statuses = {s["id"]: s["status"] for page in pages for s in page["items"]}
    assert statuses[fleet.spots[0]] == "occupied"
    assert {statuses[s] for s in fleet.spots[1:]} == {"unknown"}

    zone = (await api.get("/v1/parking/spots", params={"zone": "anfa"})).json()
    assert [s["id"] for s in zone["items"]] == fleet.spots[20:]
    # The spots lie on a line eastwards from -7.5898, 0.001076 degrees apart.
    box = "-7.5899,33.573,-7.5865,33.5732"
    boxed = (await api.get("/v1/parking/spots", params={"bbox": box})).json()
    assert [s["id"] for s in boxed["items"]] == fleet.spots[:4]
    assert (await api.get("/v1/parking/spots", params={"bbox": "1,2"})).status_code == 422
