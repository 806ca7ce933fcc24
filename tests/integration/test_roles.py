"""Least privilege in PostgreSQL: ingest and the API under their own roles (0012_roles.sql)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr

from citytel.config import Settings
from citytel.ingest.pipeline import run_ingest
from citytel.storage.fleet import import_fleet
from citytel.storage.gateways import add_gateway
from citytel.storage.migrate import migrate
from simulators.fleet import Fleet as SimFleet
from simulators.stream import ground_truth
from tests.integration.conftest import (
    assert_stored_exactly,
    feature,
    publish_raw,
    publish_stream,
    serve_api,
    stream,
    wait_until,
)

pytestmark = pytest.mark.integration

INGEST_PASSWORD = "ingest-role-test"  # noqa: S105 - a test cluster's role
API_PASSWORD = "api-role-test"  # noqa: S105


def as_role(url: str, role: str, password: str) -> str:
    """``url`` logging in as ``role``."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


@dataclass
class Roles:
    ingest_url: str
    api_url: str


@pytest.fixture
def roles(database_url: str) -> Roles:
    """This test's database with the role passwords set, as `citytel migrate` sets them."""
    migrate(
        Settings(
            database_ingest_password=SecretStr(INGEST_PASSWORD),
            database_api_password=SecretStr(API_PASSWORD),
        ),
        database_url=database_url,
    )
    return Roles(
        ingest_url=as_role(database_url, "citytel_ingest", INGEST_PASSWORD),
        api_url=as_role(database_url, "citytel_api", API_PASSWORD),
    )


@pytest.fixture
async def api_conn(roles: Roles) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(roles.api_url)
    yield conn
    await conn.close()


@pytest.fixture
async def ingest_conn(roles: Roles) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(roles.ingest_url)
    yield conn
    await conn.close()


async def test_the_api_role_cannot_write_readings(api_conn: asyncpg.Connection) -> None:
    """The API's role reads readings but may not insert, change or delete one."""
    assert await api_conn.fetchval("SELECT count(*) FROM waste_readings") == 0
    for statement in (
        "INSERT INTO waste_readings (container_id, ts, fill_pct, received_at)"
        " VALUES ('x', now(), 1, now())",
        "INSERT INTO parking_readings (spot_id, ts, occupied, received_at)"
        " VALUES ('x', now(), true, now())",
        "UPDATE container_latest SET fill_pct = 100",
        "DELETE FROM waste_readings",
        # The audit table is append-only for the API.
        "UPDATE audit SET actor = 'x'",
        "DELETE FROM audit",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute(statement)


async def test_provisioning_works_under_the_api_role(settings: Settings, roles: Roles) -> None:
    """Every provisioning route, and its audit row, works with the API role's grants."""
    api_settings = settings.model_copy(update={"database_url": SecretStr(roles.api_url)})
    container = feature("waste_container", "-", -7.6, 33.57, "anfa", capacity_l=240, depth_mm=900)
    container["properties"].update(gateway="gw-role", device_model="dragino-ldds75")
    container["properties"]["dev_eui"] = "A84041000181C2D1"
    spot = feature("parking_spot", "R-2", -7.59, 33.57, "anfa")
    async with serve_api(api_settings) as client:
        calls = [
            await client.post("/v1/gateways", json={"id": "gw-role"}),
            await client.put("/v1/containers/R-1", json=container),
            await client.post("/v1/fleet", json={"type": "FeatureCollection", "features": [spot]}),
            await client.delete("/v1/parking/spots/R-2"),
            await client.delete("/v1/containers/R-1"),
            await client.post("/v1/gateways/gw-role/disable"),
        ]
        assert [c.status_code for c in calls] == [201, 200, 200, 204, 204, 200], [
            c.text for c in calls
        ]
        audited = (await client.get("/v1/audit")).json()["items"]
    assert len(audited) == len(calls)


async def test_the_ingest_role_reads_only_what_it_is_granted(
    pool: asyncpg.Pool, ingest_conn: asyncpg.Connection
) -> None:
    """API keys and any table added later are unreadable to ingest; the registry is read-only."""
    await pool.execute("CREATE TABLE api_keys_later (id bigint PRIMARY KEY, secret_hash bytea)")
    for statement in (
        "SELECT * FROM api_keys",
        "SELECT * FROM api_keys_later",
        "SELECT password_hash FROM gateways",
        "UPDATE containers SET zone = 'x'",
        "DELETE FROM dead_letters",
        "DELETE FROM waste_readings",
        "UPDATE gateways SET enabled = true",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await ingest_conn.execute(statement)
    assert await ingest_conn.fetchval("SELECT count(*) FROM containers") == 0


async def test_ingest_and_api_work_under_their_roles(
    settings: Settings,
    roles: Roles,
    sim_fleet: SimFleet,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """The pipeline stores under citytel_ingest; the API serves and replays under citytel_api."""
    stop, subscribed = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_ingest(settings, stop=stop, subscribed=subscribed, database_url=roles.ingest_url)
    )
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        messages = stream(settings, sim_fleet, 500, rate=20_000)
        truth = ground_truth(messages)
        await asyncio.to_thread(publish_stream, settings, messages)
        container = sim_fleet.containers[0].id
        moved = f"{settings.mqtt_topic_root}/gw-new/waste/{container}"
        reading = json.dumps({"ts": datetime.now(UTC).isoformat(), "fill_pct": 42.5}).encode()
        await asyncio.to_thread(publish_raw, settings, [(moved, reading)])

        async def all_handled() -> bool:
            stored = await pool.fetchval(
                "SELECT (SELECT count(*) FROM waste_readings)"
                " + (SELECT count(*) FROM parking_readings)"
            )
            letters = await pool.fetchval("SELECT count(*) FROM dead_letters")
            return bool(stored >= len(truth.readings) and letters == 1)

        await wait_until(all_handled, within=60)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
    await assert_stored_exactly(pool, truth)

    # The device moved to another gateway: rebind it, then replay through the API's role.
    await add_gateway(pool, "gw-new")
    path = tmp_path / "moved.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {
                            "type": "Point",
                            "coordinates": [
                                sim_fleet.containers[0].lon,
                                sim_fleet.containers[0].lat,
                            ],
                        },
                        "properties": {
                            "kind": "waste_container",
                            "id": container,
                            "zone": sim_fleet.containers[0].zone,
                            "capacity_l": sim_fleet.containers[0].capacity_l,
                            "depth_mm": sim_fleet.containers[0].depth_mm or 1200,
                            "gateway": "gw-new",
                        },
                    }
                ],
            }
        )
    )
    await import_fleet(pool, path)
    api_settings = settings.model_copy(update={"database_url": SecretStr(roles.api_url)})
    async with serve_api(api_settings) as client:
        listed = (await client.get("/v1/dead-letters", params={"reason": "wrong_gateway"})).json()
        assert listed["total"] == 1
        assert (await client.get(f"/v1/containers/{container}")).status_code == 200
        result = await client.post("/v1/dead-letters/replay", json={"reason": "wrong_gateway"})
        assert result.status_code == 200, result.text
        assert (result.json()["resolved"], result.json()["still_dead"]) == (1, 0)
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert await pool.fetchval(
        "SELECT fill_pct FROM waste_readings WHERE container_id = $1 AND fill_pct = 42.5",
        container,
    )
