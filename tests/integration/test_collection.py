"""Fill forecasts and collection rounds from readings that went through ingestion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from citytel.config import Settings
from tests.integration.conftest import Fleet, RunningIngest, publish_raw, serve_api, wait_until

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def hours(h: float) -> datetime:
    return NOW + timedelta(hours=h)


# (container index, hours from NOW, fill %), published step by step in this order.
HISTORY = [
    [(0, -6, 10.0), (2, -10, 20.0), (3, -5, 50.0), (6, -6, 12.0)],
    [(0, -3, 40.0), (2, -3, 90.0), (6, -4, 14.0)],
    [(2, -2, 5.0), (6, -3, 2.0)],  # emptied: 85 points down; 12 points, from nearly empty
    [(0, 0, 70.0), (1, 0, 85.0), (2, 0, 20.0), (3, 0, 50.0), (6, -1, 4.0)],
    [(0, -4, 95.0)],  # a late reading: history only
]


@pytest.fixture
async def history(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> Fleet:
    """The readings of HISTORY, published over MQTT and stored one step after the other."""
    await ingest()
    stored = 0
    for step in HISTORY:
        messages = [
            (
                f"{settings.mqtt_topic_root}/default/waste/{fleet.containers[i]}",
                json.dumps({"ts": hours(h).isoformat(), "fill_pct": fill}).encode(),
            )
            for i, h, fill in step
        ]
        await asyncio.to_thread(publish_raw, settings, messages)
        stored += len(step)

        async def all_stored(expected: int = stored) -> bool:
            count: int = await pool.fetchval("SELECT count(*) FROM waste_readings")
            return count == expected

        await wait_until(all_stored)
    return fleet


async def test_fill_rate_and_forecast(history: Fleet, api: httpx.AsyncClient) -> None:
    """The rate is the mean since the last emptying; full is forecast at that rate."""
    filling = (await api.get(f"/v1/containers/{history.containers[0]}")).json()
    assert filling["fill_pct"] == 70
    assert filling["fill_rate_pct_per_h"] == pytest.approx(10)  # 10 -> 70 % in 6 h
    assert datetime.fromisoformat(filling["predicted_full_at"]) == hours(3)

    emptied = (await api.get(f"/v1/containers/{history.containers[2]}")).json()
    assert emptied["fill_rate_pct_per_h"] == pytest.approx(7.5)  # 5 -> 20 % in 2 h
    assert datetime.fromisoformat(emptied["predicted_full_at"]) == hours(80 / 7.5)

    idle = (await api.get(f"/v1/containers/{history.containers[3]}")).json()
    assert idle["fill_rate_pct_per_h"] == 0
    assert idle["predicted_full_at"] is None

    nearly_empty = (await api.get(f"/v1/containers/{history.containers[6]}")).json()
    assert nearly_empty["fill_rate_pct_per_h"] == pytest.approx(1)  # 2 -> 4 % in 2 h
    assert datetime.fromisoformat(nearly_empty["predicted_full_at"]) == hours(-1 + 96)

    never = (await api.get(f"/v1/containers/{history.containers[5]}")).json()
    assert never["fill_rate_pct_per_h"] is None
    assert never["predicted_full_at"] is None


async def test_the_emptied_cycle_leaves_its_rate(history: Fleet, pool: asyncpg.Pool) -> None:
    """The cycle that ended with the emptying is remembered: 20 -> 90 % in 7 h."""
    row = await pool.fetchrow(
        "SELECT cycle_started_at, cycle_start_fill_pct, last_cycle_rate_pct_h"
        " FROM container_latest WHERE container_id = $1",
        history.containers[2],
    )
    assert row is not None
    assert row["cycle_started_at"] == hours(-2)
    assert row["cycle_start_fill_pct"] == 5
    assert row["last_cycle_rate_pct_h"] == pytest.approx(10)


async def test_an_emptying_inside_one_message_starts_the_cycle(
    settings: Settings,
    fleet: Fleet,
    pool: asyncpg.Pool,
    api: httpx.AsyncClient,
    ingest: Callable[[], Awaitable[RunningIngest]],
) -> None:
    """Four readings in one message, emptied in the middle: counted as if they came one by one."""
    await ingest()
    container = fleet.containers[7]
    history = [(-6, 20.0), (-3, 80.0), (-2, 5.0), (-1, 12.0)]
    payload = json.dumps([{"ts": hours(h).isoformat(), "fill_pct": f} for h, f in history])
    topic = f"{settings.mqtt_topic_root}/default/waste/{container}"
    await asyncio.to_thread(publish_raw, settings, [(topic, payload.encode())])

    async def stored() -> bool:
        count: int = await pool.fetchval("SELECT count(*) FROM waste_readings")
        return count == len(history)

    await wait_until(stored)
    row = await pool.fetchrow(
        "SELECT cycle_started_at, cycle_start_fill_pct, last_cycle_rate_pct_h"
        " FROM container_latest WHERE container_id = $1",
        container,
    )
    assert row is not None
    assert (row["cycle_started_at"], row["cycle_start_fill_pct"]) == (hours(-2), 5)
    assert row["last_cycle_rate_pct_h"] == pytest.approx(20)  # 20 -> 80 % in 3 h
    body = (await api.get(f"/v1/containers/{container}")).json()
    assert body["fill_rate_pct_per_h"] == pytest.approx(7)  # 5 -> 12 % in 1 h


async def rounds(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get("/v1/collection/round", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stop_ids(body: dict[str, Any]) -> list[str]:
    return [stop["container"]["id"] for stop in body["stops"]]


async def test_due_now_and_soon(history: Fleet, api: httpx.AsyncClient) -> None:
    """Due now is what is over the threshold; a horizon adds what will be, never the idle one."""
    c = history.containers
    now = await rounds(api, threshold_pct=80)
    assert stop_ids(now) == [c[1]]
    assert now["stops"][0]["leg_m"] == 0
    soon = await rounds(api, threshold_pct=80, within_h=2)
    assert set(stop_ids(soon)) == {c[0], c[1]}
    due = {s["container"]["id"]: datetime.fromisoformat(s["due_at"]) for s in soon["stops"]}
    assert due[c[0]] == hours(1)  # 70 -> 80 % at 10 points an hour
    later = await rounds(api, threshold_pct=80, within_h=12)
    assert set(stop_ids(later)) == {c[0], c[1], c[2]}
    assert later["left_out"] == 0


@pytest.mark.parametrize(("kept_s", "seen"), [(60.0, False), (0.0, True)])
async def test_rounds_share_the_fleet_state_as_long_as_a_plan(
    history: Fleet, settings: Settings, pool: asyncpg.Pool, kept_s: float, seen: bool
) -> None:
    """Rounds of other thresholds within CITYTEL_API_PLANNING_CACHE_S plan from one read."""
    c = history.containers
    kept = settings.model_copy(update={"api_planning_cache_s": kept_s})
    async with serve_api(kept) as client:
        assert stop_ids(await rounds(client, threshold_pct=80)) == [c[1]]
        await pool.execute(
            "UPDATE container_latest SET fill_pct = 95 WHERE container_id = $1", c[3]
        )
        later = stop_ids(await rounds(client, threshold_pct=81))
    assert (c[3] in later) is seen
    assert c[1] in later


async def test_the_round_follows_the_streets_not_the_urgency(
    history: Fleet, api: httpx.AsyncClient
) -> None:
    """From either end of the line the containers stand on, they are visited in line order."""
    c = history.containers
    # The fleet's containers stand on a line: container i at (-7.60 + i/1000, 33.57 + i/2000).
    west = await rounds(api, within_h=12, start_lat=33.5695, start_lon=-7.601)
    assert stop_ids(west) == [c[0], c[1], c[2]]
    east = await rounds(api, within_h=12, start_lat=33.58, start_lon=-7.58)
    assert stop_ids(east) == [c[2], c[1], c[0]]
    legs = [s["leg_m"] for s in east["stops"]]
    assert east["length_m"] == pytest.approx(sum(legs), abs=0.5)
    assert east["stops"][-1]["cumulative_m"] == pytest.approx(east["length_m"], abs=0.5)
    assert east["start"] == {"lat": 33.58, "lon": -7.58}


async def test_max_stops_keeps_the_most_urgent(history: Fleet, api: httpx.AsyncClient) -> None:
    """With room for one stop, the container already due is the one kept."""
    body = await rounds(api, within_h=12, max_stops=1)
    assert stop_ids(body) == [history.containers[1]]
    assert body["left_out"] == 2
