"""The HTTP API over real data: answers, ordering, and clear 4xx for bad requests."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from citytel.api.schemas import FreeSpots
from citytel.config import Settings
from tests.integration.conftest import Fleet, serve_api

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


async def set_fill(pool: asyncpg.Pool, container: str, fill: float, ts: datetime = NOW) -> None:
    await pool.execute(
        "INSERT INTO waste_readings (container_id, ts, fill_pct, received_at)"
        " VALUES ($1, $2, $3, $2)",
        container,
        ts,
        fill,
    )
    await pool.execute(
        "INSERT INTO container_latest (container_id, ts, fill_pct, last_seen)"
        " VALUES ($1, $2, $3, $2)"
        " ON CONFLICT (container_id) DO UPDATE SET fill_pct = $3, ts = $2",
        container,
        ts,
        fill,
    )


async def set_spots(pool: asyncpg.Pool, states: dict[str, bool]) -> None:
    await pool.executemany(
        "INSERT INTO spot_latest (spot_id, ts, occupied, last_seen) VALUES ($1, $2, $3, $2)",
        [(spot, NOW, occupied) for spot, occupied in states.items()],
    )


@pytest.fixture(params=["live", "database"])
async def spots_api(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The API answering free-spot searches from its live view, or from the database."""
    live = request.param == "live"
    update = {"api_live_spots": live, "api_live_refresh_ms": 50}
    async with serve_api(settings.model_copy(update=update)) as client:
        # Which view must answer: checked on every search of the test.
        client.headers["x-test-view"] = request.param
        yield client


async def free_spots(
    api: httpx.AsyncClient, pool: asyncpg.Pool, params: dict[str, Any]
) -> httpx.Response:
    """GET /v1/parking/free, from the fixture's view, once it holds all this test committed."""
    committed = await pool.fetchval("SELECT clock_timestamp()")
    view = api.headers["x-test-view"]
    async with asyncio.timeout(10):
        while True:
            response = await api.get("/v1/parking/free", params=params)
            if response.status_code != 200:
                return response
            fresh = datetime.fromisoformat(response.json()["as_of"]) >= committed
            # Before its first read, the live view hands searches to the database.
            if fresh and response.headers["x-citytel-view"] == view:
                return response
            await asyncio.sleep(0.02)


async def test_free_spots_nearest_first_with_distance(
    fleet: Fleet, pool: asyncpg.Pool, spots_api: httpx.AsyncClient
) -> None:
    """Free spots come nearest first with distances; occupied and far ones are left out."""
    # Spots lie 100 m apart eastwards from the query point: spot i is i*100 m away.
    await set_spots(pool, {s: i % 3 == 0 for i, s in enumerate(fleet.spots)})
    response = await free_spots(
        spots_api, pool, {"lat": 33.5731, "lon": -7.5898, "radius_m": 750, "limit": 50}
    )
    assert response.status_code == 200
    items = response.json()["items"]
    expected = [s for i, s in enumerate(fleet.spots) if i % 3 != 0 and i * 100 <= 750]
    assert [item["id"] for item in items] == expected
    distances = [item["distance_m"] for item in items]
    assert distances == sorted(distances)
    assert distances[0] == pytest.approx(100, rel=0.02)
    assert all(item["status"] == "free" for item in items)


def destination(lat: float, lon: float, bearing_deg: float, metres: float) -> tuple[float, float]:
    """The point ``metres`` away on the sphere PostGIS measures on (mean radius 6,371,008.8 m)."""
    radius = 6_371_008.8
    phi, lam, theta = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    delta = metres / radius
    phi2 = math.asin(
        math.sin(phi) * math.cos(delta) + math.cos(phi) * math.sin(delta) * math.cos(theta)
    )
    lam2 = lam + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi),
        math.cos(delta) - math.sin(phi) * math.sin(phi2),
    )
    return math.degrees(phi2), math.degrees(lam2)


@pytest.mark.parametrize("lat", [33.5731, -54.8, 69.65])
async def test_free_spots_edge_of_the_circle_in_every_direction(
    pool: asyncpg.Pool, spots_api: httpx.AsyncClient, lat: float
) -> None:
    """A spot 2 m inside the radius is found in every direction, one 2 m outside never is."""
    lon, radius = -7.5898, 1200.0
    inside, spots = [], []
    for bearing in range(0, 360, 30):
        for metres in (radius - 2, radius + 2):
            spot = f"EDGE-{bearing}-{int(metres)}"
            p_lat, p_lon = destination(lat, lon, bearing, metres)
            spots.append((spot, f"SRID=4326;POINT({p_lon} {p_lat})"))
            if metres < radius:
                inside.append(spot)
    await pool.executemany(
        "INSERT INTO parking_spots (id, location, zone) VALUES ($1, $2::geography, 'edge')", spots
    )
    await set_spots(pool, {spot: False for spot, _ in spots})
    response = await free_spots(
        spots_api, pool, {"lat": lat, "lon": lon, "radius_m": radius, "limit": 200}
    )
    assert response.status_code == 200
    items = response.json()["items"]
    assert sorted(item["id"] for item in items) == sorted(inside)
    assert all(item["distance_m"] == pytest.approx(radius - 2, abs=0.15) for item in items)


async def test_free_spot_has_the_shape_of_a_spot(
    fleet: Fleet, pool: asyncpg.Pool, spots_api: httpx.AsyncClient
) -> None:
    """A free spot reads exactly like the same spot from /v1/parking/spots, plus its distance."""
    spot = fleet.spots[1]
    await pool.execute(
        "INSERT INTO spot_latest (spot_id, ts, occupied, battery_pct, last_seen)"
        " VALUES ($1, $2, false, 87.5, $3)",
        spot,
        NOW - timedelta(minutes=5),
        NOW - timedelta(seconds=30, microseconds=250),
    )
    free = await free_spots(
        spots_api, pool, {"lat": 33.5731, "lon": -7.5898, "radius_m": 500, "limit": 1}
    )
    one = await spots_api.get(f"/v1/parking/spots/{spot}")
    [item] = free.json()["items"]
    distance = item.pop("distance_m")
    assert item == one.json()
    assert distance == pytest.approx(100, rel=0.02)
    assert FreeSpots.model_validate(free.json()).items[0].battery_pct == 87.5


@pytest.mark.parametrize(("lat", "lon"), [(89.999, 179.999), (-89.999, -179.999), (0, 180)])
async def test_free_spots_at_the_edges_of_the_map(
    pool: asyncpg.Pool, spots_api: httpx.AsyncClient, lat: float, lon: float
) -> None:
    """A search circle that crosses a pole or the antimeridian is answered, not a 500."""
    response = await free_spots(spots_api, pool, {"lat": lat, "lon": lon, "radius_m": 5000})
    assert response.status_code == 200
    body = response.json()
    as_of = datetime.fromisoformat(body.pop("as_of"))
    assert body == {"items": [], "lat": lat, "lon": lon, "radius_m": 5000.0}
    assert abs(datetime.now(UTC) - as_of) < timedelta(seconds=10)


async def test_free_spots_limit(
    fleet: Fleet, pool: asyncpg.Pool, spots_api: httpx.AsyncClient
) -> None:
    """limit caps the answer to the nearest few."""
    await set_spots(pool, dict.fromkeys(fleet.spots, False))
    response = await free_spots(
        spots_api, pool, {"lat": 33.5731, "lon": -7.5898, "radius_m": 5000, "limit": 3}
    )
    assert [i["id"] for i in response.json()["items"]] == fleet.spots[:3]


async def test_containers_fullest_first_with_filters_and_pages(
    fleet: Fleet, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    """Containers are sorted fullest first, filtered by fill, zone and bbox, and paginated."""
    for i, container in enumerate(fleet.containers):
        await set_fill(pool, container, float(i * 5))
    body = (await api.get("/v1/containers", params={"min_fill_pct": 80})).json()
    assert [c["fill_pct"] for c in body["items"]] == [95, 90, 85, 80]
    assert body["total"] == 4

    body = (await api.get("/v1/containers", params={"zone": "anfa", "min_fill_pct": 80})).json()
    assert [c["id"] for c in body["items"]] == [fleet.containers[18], fleet.containers[16]]

    page = (await api.get("/v1/containers", params={"limit": 8, "offset": 16})).json()
    assert len(page["items"]) == 4
    assert page["total"] == 20
    assert page["next_offset"] is None
    first = (await api.get("/v1/containers", params={"limit": 8})).json()
    assert first["next_offset"] == 8

    # The first three containers lie west of -7.598.
    box = (await api.get("/v1/containers", params={"bbox": "-7.6005,33.5,-7.5975,33.6"})).json()
    assert sorted(c["id"] for c in box["items"]) == fleet.containers[:3]
    full_in_box = (
        await api.get(
            "/v1/containers", params={"bbox": "-7.6005,33.5,-7.5975,33.6", "min_fill_pct": 5}
        )
    ).json()
    assert [c["id"] for c in full_in_box["items"]] == [fleet.containers[2], fleet.containers[1]]
    assert full_in_box["total"] == 2


async def test_dispatch_list_pages_keep_their_total_and_item_shape(
    fleet: Fleet, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    """With min_fill_pct each page, an empty one too, has the total; items read as the detail."""
    for i, container in enumerate(fleet.containers):
        await set_fill(pool, container, float(i * 5))
    query = {"min_fill_pct": 50, "limit": 3}
    first = (await api.get("/v1/containers", params=query)).json()
    assert [c["fill_pct"] for c in first["items"]] == [95, 90, 85]
    assert (first["total"], first["limit"], first["offset"], first["next_offset"]) == (10, 3, 0, 3)
    last = (await api.get("/v1/containers", params={**query, "offset": 9})).json()
    assert ([c["fill_pct"] for c in last["items"]], last["total"], last["next_offset"]) == (
        [50],
        10,
        None,
    )
    past = (await api.get("/v1/containers", params={**query, "offset": 12})).json()
    assert (past["items"], past["total"]) == ([], 10)
    anfa = (await api.get("/v1/containers", params={**query, "zone": "anfa"})).json()
    assert anfa["total"] == 5
    for item in first["items"]:
        detail = await api.get(f"/v1/containers/{item['id']}")
        assert item == detail.json()


async def test_dispatch_list_answers_again_within_its_cache_time(
    fleet: Fleet, pool: asyncpg.Pool, settings: Settings
) -> None:
    """An identical list request within CITYTEL_API_CONTAINERS_CACHE_S gets the answer already
    made; another question, a container deleted through the API, or a cache time of 0 ask the
    database again."""
    await set_fill(pool, fleet.containers[0], 90.0)
    await set_fill(pool, fleet.containers[2], 70.0)
    query = {"min_fill_pct": 60}
    kept = settings.model_copy(update={"api_containers_cache_s": 60})
    async with serve_api(kept) as api:
        first = (await api.get("/v1/containers", params=query)).json()
        assert [c["id"] for c in first["items"]] == [fleet.containers[0], fleet.containers[2]]
        await set_fill(pool, fleet.containers[1], 95.0)
        assert (await api.get("/v1/containers", params=query)).json() == first
        other = (await api.get("/v1/containers", params={"min_fill_pct": 80})).json()
        assert [c["id"] for c in other["items"]] == [fleet.containers[1], fleet.containers[0]]

        assert (await api.delete(f"/v1/containers/{fleet.containers[2]}")).status_code == 204
        after = (await api.get("/v1/containers", params=query)).json()
        assert [c["id"] for c in after["items"]] == [fleet.containers[1], fleet.containers[0]]
        assert after["total"] == 2

    uncached = settings.model_copy(update={"api_containers_cache_s": 0})
    async with serve_api(uncached) as api:
        before = (await api.get("/v1/containers", params=query)).json()
        await set_fill(pool, fleet.containers[3], 99.0)
        now = (await api.get("/v1/containers", params=query)).json()
        assert (before["total"], now["total"]) == (2, 3)
        assert now["items"][0]["id"] == fleet.containers[3]


async def test_container_detail_and_history(
    fleet: Fleet, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    """One container shows its latest state; its history comes raw or averaged per bucket."""
    container = fleet.containers[3]
    start = NOW.replace(minute=0, second=0) - timedelta(hours=3)
    for minutes, fill in [(0, 10), (30, 20), (60, 30), (90, 50), (120, 70)]:
        await set_fill(pool, container, fill, start + timedelta(minutes=minutes))
    detail = (await api.get(f"/v1/containers/{container}")).json()
    assert detail["fill_pct"] == 70
    assert detail["zone"] == "maarif"
    assert detail["location"]["lat"] == pytest.approx(33.5715)

    params = {"from": start.isoformat(), "to": (start + timedelta(hours=3)).isoformat()}
    raw = (await api.get(f"/v1/containers/{container}/readings", params=params)).json()
    assert [r["fill_pct"] for r in raw["readings"]] == [10, 20, 30, 50, 70]
    hourly = (
        await api.get(f"/v1/containers/{container}/readings", params={**params, "bucket": "1h"})
    ).json()
    assert [(b["fill_pct"], b["readings"]) for b in hourly["buckets"]] == [
        (15, 2),
        (40, 2),
        (70, 1),
    ]


async def test_spot_detail_and_zone_summary(
    fleet: Fleet, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    """A spot shows its status; a zone sums its containers and spots."""
    assert (await api.get(f"/v1/parking/spots/{fleet.spots[0]}")).json()["status"] == "unknown"
    await set_spots(pool, {fleet.spots[0]: True, fleet.spots[1]: False})
    assert (await api.get(f"/v1/parking/spots/{fleet.spots[0]}")).json()["status"] == "occupied"
    await set_fill(pool, fleet.containers[1], 90)
    await set_fill(pool, fleet.containers[3], 30)
    zone = (await api.get("/v1/zones/maarif", params={"threshold_pct": 80})).json()
    assert zone["containers_total"] == 10
    assert zone["containers_reporting"] == 2
    assert zone["mean_fill_pct"] == pytest.approx(60)
    assert zone["containers_over_threshold"] == [{"id": fleet.containers[1], "fill_pct": 90}]
    spots = (await api.get("/v1/zones/sidi-belyout")).json()
    assert (
        spots["spots_total"],
        spots["spots_free"],
        spots["spots_occupied"],
        spots["spots_unknown"],
    ) == (
        20,
        1,
        1,
        18,
    )
    zones = (await api.get("/v1/zones")).json()
    assert {z["zone"] for z in zones} == {"anfa", "maarif", "sidi-belyout"}


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/v1/containers/NOPE", "no container with id 'NOPE'"),
        ("/v1/containers/NOPE/readings", "no container with id 'NOPE'"),
        ("/v1/parking/spots/NOPE", "no parking spot with id 'NOPE'"),
        ("/v1/zones/atlantis", "no zone with id 'atlantis'"),
    ],
)
async def test_unknown_ids_are_404(
    fleet: Fleet, api: httpx.AsyncClient, path: str, words: str
) -> None:
    """An unknown id is a 404 that names what was not found."""
    del fleet
    response = await api.get(path)
    assert response.status_code == 404
    assert words in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params", "words"),
    [
        ("/v1/parking/free", {"lat": 95, "lon": -7.5}, "query parameter 'lat'"),
        ("/v1/parking/free", {"lat": 33.5, "lon": -190}, "query parameter 'lon'"),
        ("/v1/parking/free", {"lon": -7.5}, "query parameter 'lat': Field required"),
        (
            "/v1/parking/free",
            {"lat": 33.5, "lon": -7.5, "radius_m": -5},
            "query parameter 'radius_m'",
        ),
        ("/v1/parking/free", {"lat": 33.5, "lon": -7.5, "radius_m": 50000}, "the maximum is 5000"),
        ("/v1/parking/free", {"lat": "north", "lon": -7.5}, "query parameter 'lat'"),
        ("/v1/parking/free", {"lat": 33.5, "lon": -7.5, "limit": 0}, "query parameter 'limit'"),
        ("/v1/containers", {"min_fill_pct": 150}, "query parameter 'min_fill_pct'"),
        ("/v1/containers", {"bbox": "1,2,3"}, "bbox must be four numbers"),
        ("/v1/containers", {"bbox": "-7.5,33.5,-7.5,33.6"}, "longitudes must be different"),
        ("/v1/containers", {"bbox": "-7.6,33.6,-7.5,33.5"}, "min_lat < max_lat"),
        ("/v1/containers", {"limit": 100000}, "query parameter 'limit'"),
        (
            "/v1/containers/T-WC-000/readings",
            {"from": "2026-05-02T00:00:00Z", "to": "2026-05-01T00:00:00Z"},
            "must be before 'to'",
        ),
        ("/v1/containers/T-WC-000/readings", {"from": "last tuesday"}, "query parameter 'from'"),
        (
            "/v1/containers/T-WC-000/readings",
            {"from": "2026-05-01T00:00:00"},
            "must include a UTC offset",
        ),
        ("/v1/containers/T-WC-000/readings", {"bucket": "1 hour"}, "bucket must be"),
        ("/v1/containers", {"zone": "\x00"}, "NUL character"),
        ("/v1/containers/T-WC-%00", {}, "NUL character"),
        ("/v1/parking/free", {"lat": 33.5, "lon": -7.5, "category": "a\x00"}, "NUL character"),
        ("/v1/collection/round", {"zone": "\x00"}, "NUL character"),
        ("/v1/devices/attention", {"zone": "\x00"}, "NUL character"),
        ("/v1/dead-letters", {"reason": "\x00"}, "NUL character"),
        ("/v1/collection/round", {"start_lat": 33.5}, "give both start_lat and start_lon"),
        ("/v1/collection/round", {"threshold_pct": 0}, "query parameter 'threshold_pct'"),
        ("/v1/collection/round", {"within_h": 500}, "query parameter 'within_h'"),
        ("/v1/collection/round", {"max_stops": 0}, "query parameter 'max_stops'"),
        ("/v1/collection/round", {"bbox": "1,2"}, "bbox must be four numbers"),
        ("/v1/devices/attention", {"kind": "bins"}, "query parameter 'kind'"),
        ("/v1/devices/attention", {"silent_after_h": 0}, "query parameter 'silent_after_h'"),
        (
            "/v1/devices/attention",
            {"battery_below_pct": 101},
            "query parameter 'battery_below_pct'",
        ),
        ("/v1/devices/attention", {"limit": 0}, "query parameter 'limit'"),
        (
            "/v1/containers/T-WC-000/readings",
            {"bucket": "1s", "from": "2026-01-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"},
            "widen the bucket",
        ),
    ],
)
async def test_invalid_parameters_are_422_with_a_reason(
    fleet: Fleet, api: httpx.AsyncClient, path: str, params: dict[str, object], words: str
) -> None:
    """Invalid parameters get a 422 whose detail says which parameter is wrong and how."""
    del fleet
    response = await api.get(path, params=params)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    """/healthz says the process is alive; /readyz checked the database and the broker."""
    assert (await api.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = (await api.get("/readyz")).json()
    assert ready == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
