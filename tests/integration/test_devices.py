"""The operators' list of devices that need attention: silent, low battery, faulty."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


@pytest.fixture
async def troubled(fleet: Fleet, pool: asyncpg.Pool) -> Fleet:
    """A few containers and spots in trouble, the rest well, all registered three days ago."""
    c, s = fleet.containers, fleet.spots
    await pool.execute("UPDATE containers SET created_at = $1", ago(72))
    await pool.execute("UPDATE parking_spots SET created_at = $1", ago(72))
    latest = [
        (c[0], ago(30), 40.0, 80.0),  # silent for 30 h
        (c[1], ago(1), 40.0, 12.0),  # battery low
        (c[2], ago(5), 40.0, 70.0),  # tilted after its last measurement
        (c[3], ago(1), 40.0, 70.0),  # tilted before its last measurement: fixed since
        *((cid, ago(0.5), 40.0, 90.0) for cid in c[4:]),
    ]
    await pool.executemany(
        "INSERT INTO container_latest (container_id, ts, fill_pct, battery_pct, last_seen)"
        " VALUES ($1, $2, $3, $4, $2)",
        latest,
    )
    await pool.executemany(
        "INSERT INTO device_events (device_kind, device_id, ts, event, received_at)"
        " VALUES ('waste', $1, $2, 'tilted', $2)",
        [(c[2], ago(2)), (c[3], ago(3)), (c[4], ago(48))],  # c[4]'s is too old to count
    )
    # Every spot but the first has spoken; the first never has.
    await pool.executemany(
        "INSERT INTO spot_latest (spot_id, ts, occupied, battery_pct, last_seen)"
        " VALUES ($1, $2, false, 95, $2)",
        [(spot, ago(0.2)) for spot in s[1:]],
    )
    return fleet


async def attention(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get("/v1/devices/attention", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_pressing_first_each_with_its_reason(
    troubled: Fleet, api: httpx.AsyncClient
) -> None:
    """Faults first, then the silent and the never heard (longest first), then batteries."""
    c, s = troubled.containers, troubled.spots
    body = await attention(api)
    listed = [(item["id"], [p["problem"] for p in item["problems"]]) for item in body["items"]]
    assert listed == [
        (c[2], ["fault"]),
        (s[0], ["never_heard"]),
        (c[0], ["silent"]),
        (c[1], ["low_battery"]),
    ]
    assert body["total"] == 4
    fault = body["items"][0]["problems"][0]
    assert "tilted" in fault["detail"]
    assert datetime.fromisoformat(fault["since"]) == ago(2)
    assert body["items"][2]["problems"][0]["detail"] == "nothing heard for 30 h"
    assert body["items"][3]["problems"][0]["detail"] == "battery at 12 %, under 20 %"


async def test_filters_and_thresholds(troubled: Fleet, api: httpx.AsyncClient) -> None:
    """Kind, zone and every threshold narrow or widen the list as they say."""
    c, s = troubled.containers, troubled.spots
    assert [i["id"] for i in (await attention(api, kind="parking"))["items"]] == [s[0]]
    waste = await attention(api, kind="waste", silent_after_h=48, battery_below_pct=10)
    assert [i["id"] for i in waste["items"]] == [c[2]]
    older = await attention(api, kind="waste", faults_within_h=72)
    assert [i["id"] for i in older["items"]][:1] == [c[2]]  # c[4]'s old fault: measured since
    assert c[4] not in [i["id"] for i in older["items"]]
    # The fleet's even containers are in anfa, the odd ones in maarif.
    anfa = await attention(api, zone="anfa", kind="waste")
    assert [i["id"] for i in anfa["items"]] == [c[2], c[0]]
    page = await attention(api, limit=3)
    assert len(page["items"]) == 3
    assert page["next_offset"] == 3
    assert (await attention(api, limit=3, offset=3))["next_offset"] is None


@pytest.mark.usefixtures("fleet")
async def test_a_newly_registered_device_is_not_yet_silent(api: httpx.AsyncClient) -> None:
    """Devices registered minutes ago and never heard from are not on the list yet."""
    body = await attention(api)
    assert body["items"] == []
    assert body["total"] == 0
