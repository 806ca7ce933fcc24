"""The API's live parking view: the database's answers, kept fresh, never silently stale."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from citytel.config import Settings
from citytel.domain import DEFAULT_GATEWAY, DecodedMessage, DeviceKind, ParkingReading
from citytel.storage.fleet import UPSERT_SPOTS
from citytel.storage.writer import store_decoded
from tests.integration.conftest import Fleet, publish_raw, serve_api, wait_until
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
HERE = {"lat": 33.5731, "lon": -7.5898}


def live_settings(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={"api_live_refresh_ms": 50, **update})


async def answer(
    api: httpx.AsyncClient, pool: asyncpg.Pool, *, view: str = "live", **params: Any
) -> dict[str, Any]:
    """The free-spot answer from ``view`` once it holds everything committed so far."""
    committed = await pool.fetchval("SELECT clock_timestamp()")
    async with asyncio.timeout(10):
        while True:
            response = await api.get("/v1/parking/free", params={**HERE, **params})
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            # Before its first read, the live view hands over to the database.
            fresh = datetime.fromisoformat(body["as_of"]) >= committed
            if fresh and response.headers["x-citytel-view"] == view:
                return body
            await asyncio.sleep(0.02)


async def mark_free(pool: asyncpg.Pool, spot: str) -> None:
    """A reading that says ``spot`` is free, written straight to its latest state."""
    await pool.execute(
        "INSERT INTO spot_latest (spot_id, ts, occupied, last_seen) VALUES ($1, $2, false, $2)",
        spot,
        NOW,
    )


def ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["items"]]


def parking(spot: str, ts: datetime, *, occupied: bool) -> DecodedMessage:
    reading = ParkingReading(spot_id=spot, ts=ts, occupied=occupied)
    return DecodedMessage(
        kind=DeviceKind.PARKING,
        device_id=spot,
        readings=(reading,),
        topic=f"t/gw/parking/{spot}",
        payload=b"{}",
        received_at=ts,
    )


async def test_live_answers_equal_the_database(settings: Settings, pool: asyncpg.Pool) -> None:
    """Over 1,500 scattered spots, 150 random searches give the database's answer exactly."""
    rng = random.Random(11)
    spots = [
        (
            f"R-{i:04d}",
            -7.62 + rng.uniform(0, 0.06),
            33.55 + rng.uniform(0, 0.05),
            rng.choice(["anfa", "maarif"]),
            "disabled" if rng.random() < 0.15 else "standard",
            DEFAULT_GATEWAY,
        )
        for i in range(1500)
    ]
    await pool.execute(UPSERT_SPOTS, *(list(column) for column in zip(*spots, strict=True)))
    states = [(s[0], rng.random()) for s in spots]
    await pool.executemany(
        "INSERT INTO spot_latest (spot_id, ts, occupied, battery_pct, last_seen)"
        " VALUES ($1, $2, $3, $4, $5)",
        [
            (spot, NOW - timedelta(seconds=r * 1000), r < 0.55, None if r < 0.7 else r * 100, NOW)
            for spot, r in states
            if r > 0.05  # a few never heard from: neither free nor occupied
        ],
    )
    async with (
        serve_api(live_settings(settings)) as live,
        serve_api(settings.model_copy(update={"api_live_spots": False})) as database,
    ):
        for _ in range(150):
            params: dict[str, Any] = {
                "lat": 33.55 + rng.uniform(0, 0.05),
                "lon": -7.62 + rng.uniform(0, 0.06),
                "radius_m": rng.choice([150, 400, 800, 2500]),
                "limit": rng.choice([1, 5, 20, 100]),
            }
            if rng.random() < 0.2:
                params["category"] = "disabled"
            from_memory = await answer(live, pool, **params)
            from_sql = await answer(database, pool, view="database", **params)
            assert ids(from_memory) == ids(from_sql), params
            for mine, theirs in zip(from_memory["items"], from_sql["items"], strict=True):
                assert mine.pop("distance_m") == pytest.approx(theirs.pop("distance_m"), abs=0.11)
                assert mine == theirs


async def test_live_view_follows_ingestion(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool, ingest: Any
) -> None:
    """Readings published over MQTT free a spot and take it again in the live answer."""
    await ingest()
    spot = fleet.spots[2]
    topic = f"{settings.mqtt_topic_root}/default/parking/{spot}"

    def reading(ts: datetime, *, occupied: bool) -> tuple[str, bytes]:
        return topic, json.dumps({"ts": ts.isoformat(), "occupied": occupied}).encode()

    async with serve_api(live_settings(settings)) as api:
        assert ids(await answer(api, pool)) == []
        await asyncio.to_thread(publish_raw, settings, [reading(NOW, occupied=False)])
        await wait_until(lambda: _free_in(api, spot))
        await asyncio.to_thread(
            publish_raw, settings, [reading(NOW + timedelta(seconds=30), occupied=True)]
        )
        await wait_until(lambda: _gone_from(api, spot))
        # A late reading saying free does not free it again.
        await asyncio.to_thread(
            publish_raw, settings, [reading(NOW + timedelta(seconds=10), occupied=False)]
        )
        await wait_until(
            lambda: _reading_stored(pool, spot, NOW + timedelta(seconds=10)), within=10
        )
        assert ids(await answer(api, pool)) == []


async def _free_in(api: httpx.AsyncClient, spot: str) -> bool:
    body = (await api.get("/v1/parking/free", params=HERE)).json()
    return spot in ids(body)


async def _gone_from(api: httpx.AsyncClient, spot: str) -> bool:
    return not await _free_in(api, spot)


async def _reading_stored(pool: asyncpg.Pool, spot: str, ts: datetime) -> bool:
    found = await pool.fetchval(
        "SELECT 1 FROM parking_readings WHERE spot_id = $1 AND ts = $2", spot, ts
    )
    return found is not None


async def test_a_long_transaction_is_not_missed(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    """A write committed long after later writes were read still reaches the live view."""
    slow, quick, busy = fleet.spots[1], fleet.spots[3], fleet.spots[5]
    # A reading at the same time, committed first, creates the hypertable chunk both writes go
    # to: a chunk created inside the open transaction would make the other writer wait for it.
    async with pool.acquire() as conn, conn.transaction():
        await store_decoded(conn, [parking(busy, NOW, occupied=True)], [])
    async with serve_api(live_settings(settings)) as api:
        assert ids(await answer(api, pool)) == []
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await store_decoded(conn, [parking(slow, NOW, occupied=False)], [])
            # Meanwhile another batch commits and the view reads past it, several times.
            async with pool.acquire() as other, other.transaction():
                await store_decoded(other, [parking(quick, NOW, occupied=False)], [])
            assert ids(await answer(api, pool)) == [quick]
            await asyncio.sleep(0.3)
            assert ids(await answer(api, pool)) == [quick]
            await transaction.commit()
        assert ids(await answer(api, pool)) == [slow, quick]


async def test_registry_changes_reach_the_live_view(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    """A spot moved by a fleet import moves at the next refresh, with no full read meanwhile."""
    moved = fleet.spots[1]
    await mark_free(pool, moved)
    async with serve_api(live_settings(settings, api_live_resync_s=3600)) as api:
        assert ids(await answer(api, pool, radius_m=500)) == [moved]
        # 3 km north: out of a 500 m search, still in a 5 km one.
        await pool.execute(
            UPSERT_SPOTS, [moved], [-7.5898], [33.6001], ["anfa"], ["standard"], [DEFAULT_GATEWAY]
        )
        assert ids(await answer(api, pool, radius_m=500)) == []
        body = await answer(api, pool, radius_m=5000)
        assert ids(body) == [moved]
        assert body["items"][0]["distance_m"] == pytest.approx(3000, abs=30)


async def test_deleted_spots_leave_at_the_next_full_read(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    """A deletion leaves no row to find: the periodic full read is what drops the spot."""
    deleted = fleet.spots[2]
    await mark_free(pool, deleted)
    async with serve_api(live_settings(settings, api_live_resync_s=0.5)) as api:
        assert ids(await answer(api, pool)) == [deleted]
        await pool.execute("DELETE FROM parking_spots WHERE id = $1", deleted)
        await wait_until(lambda: _gone_from(api, deleted), within=10)


async def test_stale_view_is_never_served(
    settings: Settings, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    """With the database cut off, answers stop (503) once the view is older than allowed."""
    await mark_free(pool, fleet.spots[1])
    direct = urlsplit(settings.database_url.get_secret_value())
    proxy = TcpProxy(direct.port or 5432)
    await proxy.start()
    through = direct._replace(netloc=f"{direct.netloc.rsplit(':', 1)[0]}:{proxy.port}").geturl()
    update = {"database_url": SecretStr(through), "api_live_max_staleness_s": 1.0}
    try:
        async with serve_api(live_settings(settings, **update)) as api:
            before = await answer(api, pool)
            assert ids(before) == [fleet.spots[1]]
            await proxy.cut()
            served_as_of = [datetime.fromisoformat(before["as_of"])]

            async def refused() -> bool:
                response = await api.get("/v1/parking/free", params=HERE)
                if response.status_code == 200:
                    # Still served from memory: only within the staleness bound.
                    as_of = datetime.fromisoformat(response.json()["as_of"])
                    assert datetime.now(UTC) - as_of < timedelta(seconds=1.5)
                    served_as_of.append(as_of)
                    return False
                assert response.status_code == 503
                assert "retry shortly" in response.json()["detail"]
                return True

            await wait_until(refused, within=15)
            # Refused only once the newest view served was past the bound (1 s). Counted from
            # that view, not from the cut: its refresh may have been a while before the cut.
            assert datetime.now(UTC) - max(served_as_of) >= timedelta(seconds=0.9)
            await proxy.start()

            async def served() -> bool:
                response = await api.get("/v1/parking/free", params=HERE)
                return response.status_code == 200

            await wait_until(served, within=15)
            assert ids(await answer(api, pool)) == [fleet.spots[1]]
    finally:
        await proxy.cut()
