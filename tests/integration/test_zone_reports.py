"""What a city reports per zone: parking turnover, the parking forecast and the waste KPIs,
against hand-computed expectations on either store."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from citytel.api.routes.zones import parking_forecast
from tests.integration.conftest import Fleet
from tests.integration.test_history import (
    DAY,
    INSERT_PARKING,
    INSERT_WASTE,
    at,
    buckets,
    iso,
    refresh,
)

pytestmark = pytest.mark.integration

# The fleet fixture's sidi-belyout has spots 0 to 19; anfa the rest and the even containers.
SIDI_BELYOUT_SPOTS = 20


async def test_turnover_counts_free_to_occupied_transitions(
    pool: asyncpg.Pool, fleet: Fleet, api: httpx.AsyncClient, store: str
) -> None:
    """Arrivals are readings saying occupied after one saying free, the reading before the
    range included; a spot's very first reading is no arrival; turnover is arrivals per spot
    of the zone. Hand-computed, hourly and daily (aggregates on TimescaleDB) and 20 minutes."""
    one, two, elsewhere = fleet.spots[0], fleet.spots[1], fleet.spots[25]
    await pool.executemany(
        INSERT_PARKING,
        [
            (one, at(-1, 23, 50), False),
            (one, at(0, 8, 5), True),  # after the free reading before the range: an arrival
            (one, at(0, 8, 30), False),
            (one, at(0, 8, 50), True),  # arrival
            (one, at(0, 9, 10), True),  # still occupied: a heartbeat
            (two, at(0, 8, 15), True),  # first reading ever: not known to be an arrival
            (two, at(0, 9, 15), False),
            (two, at(0, 9, 40), True),  # arrival
            (elsewhere, at(0, 8, 10), False),
            (elsewhere, at(0, 8, 20), True),  # another zone
        ],
    )
    await refresh(pool, store)
    path = "/v1/zones/sidi-belyout/occupancy"
    hourly = await buckets(
        api, path, **{"from": iso(at(0, 0)), "to": iso(at(1, 0)), "bucket": "1h"}
    )
    assert hourly == [
        {
            "ts": iso(at(0, 8)),
            "occupied_ratio": 5 / 6,  # (2/3 + 1) / 2
            "spots_reporting": 2,
            "readings": 4,
            "arrivals": 2,
            "turnover": 2 / SIDI_BELYOUT_SPOTS,
        },
        {
            "ts": iso(at(0, 9)),
            "occupied_ratio": 3 / 4,  # (1 + 1/2) / 2
            "spots_reporting": 2,
            "readings": 3,
            "arrivals": 1,
            "turnover": 1 / SIDI_BELYOUT_SPOTS,
        },
    ]
    daily = await buckets(api, path, **{"from": iso(at(0, 0)), "to": iso(at(1, 0)), "bucket": "1d"})
    assert [(b["arrivals"], b["turnover"], b["occupied_ratio"]) for b in daily] == [
        (3, 3 / SIDI_BELYOUT_SPOTS, 17 / 24)  # (3/4 + 2/3) / 2
    ]
    # From 08:40: spot one's 08:50 follows its 08:30 reading, before the range, so it counts.
    short = await buckets(
        api, path, **{"from": iso(at(0, 8, 40)), "to": iso(at(0, 10)), "bucket": "20m"}
    )
    assert [(b["ts"], b["arrivals"]) for b in short] == [
        (iso(at(0, 8, 40)), 1),
        (iso(at(0, 9)), 0),
        (iso(at(0, 9, 40)), 1),
    ]


async def test_waste_kpis_per_day(pool: asyncpg.Pool, fleet: Fleet, api: httpx.AsyncClient) -> None:
    """Collections are drops of more than 15 points, with the fill before them; a reading at
    100 % counts as overflowing until the next reading (24 h at most), split at local midnight;
    the reading before the range counts. Hand-computed in two time zones."""
    c0, c1, c2 = fleet.containers[0], fleet.containers[1], fleet.containers[2]  # anfa, maarif
    await pool.executemany(
        INSERT_WASTE,
        [
            (c0, at(-1, 20), 100.0, None, None),
            (c0, at(0, 2), 100.0, None, None),
            (c0, at(0, 5), 10.0, None, None),
            (c0, at(0, 12), 60.0, None, None),
            (c0, at(0, 18), 100.0, None, None),
            (c0, at(1, 3), 5.0, None, None),
            (c0, at(1, 10), 95.0, None, None),
            (c0, at(1, 20), 100.0, None, None),
            (c2, at(0, 9), 50.0, None, None),
            (c2, at(0, 10), 40.0, None, None),  # 10 points down: not an emptying
            (c2, at(0, 11), 20.0, None, None),
            (c1, at(0, 6), 100.0, None, None),  # another zone
            (c1, at(0, 7), 0.0, None, None),
        ],
    )
    day = [(DAY + timedelta(days=d)).date().isoformat() for d in range(4)]
    path = "/v1/zones/anfa/waste/kpis"

    async def kpis(tz: str, days: int) -> list[tuple[object, ...]]:
        response = await api.get(path, params={"from": day[0], "to": day[days], "tz": tz})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["from"], body["to"], body["time_zone"]) == (day[0], day[days], tz)
        return [
            (
                d["day"],
                d["containers_reporting"],
                d["collections"],
                d["overflow_hours"],
                d["mean_fill_at_collection_pct"],
            )
            for d in body["days"]
        ]

    # UTC. Day 0: overflow 00:00-02:00 (from yesterday's 20:00), 02:00-05:00, 18:00-24:00;
    # emptied at 05:00 (from 100) and c2 at 11:00 (from 40). Day 1: overflow 00:00-03:00 and
    # 20:00-24:00; emptied at 03:00 (from 100). Day 2: the 20:00 reading holds 24 h at most.
    assert await kpis("UTC", 3) == [
        (day[0], 2, 2, 2.0 + 3.0 + 6.0, 70.0),
        (day[1], 1, 1, 3.0 + 4.0, 100.0),
        (day[2], 0, 0, 20.0, None),
    ]
    # UTC-5: days start at 05:00 UTC. Day 0: emptied at 05:00 (the 02:00 reading before the
    # range was at 100), c2 at 11:00 and 03:00 next morning; overflow 18:00-03:00. Day 1:
    # overflow 20:00 to the end of the range (05:00 UTC).
    assert await kpis("Etc/GMT+5", 2) == [
        (day[0], 2, 3, 9.0, 80.0),
        (day[1], 1, 0, 9.0, None),
    ]
    assert (await api.get("/v1/zones/nowhere/waste/kpis")).status_code == 404
    for params in (
        {"from": day[1], "to": day[0]},
        {"from": "2020-01-01", "to": "2022-01-01"},
        {"tz": "Mars/Olympus"},
        {"to": "0001-01-03"},
    ):
        assert (await api.get(path, params=params)).status_code == 422, params


async def test_parking_forecast_route_decays_toward_the_typical_week(
    pool: asyncpg.Pool, fleet: Fleet, api: httpx.AsyncClient, store: str
) -> None:
    """With a flat typical week (1 spot of 4 occupied each hour) and 3 of 4 occupied now, the
    expected free spots are 4 * (1 - (1/4 + 1/2 * exp(-h / 3)))."""
    spots = fleet.spots[:4]
    # The API's hour must be this one: too near its end, start in the next.
    left = 3600 - (datetime.now(UTC).minute * 60 + datetime.now(UTC).second)
    if left < 30:
        await asyncio.sleep(left + 1)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    history = [
        (spot, hour - timedelta(hours=h, minutes=-30), spot == spots[0])
        for h in range(1, 7 * 24 + 1)
        for spot in spots
    ]
    now = [(spot, hour, spot != spots[3]) for spot in spots]
    await pool.executemany(INSERT_PARKING, history + now)
    await refresh(pool, store)
    response = await api.get(
        "/v1/zones/sidi-belyout/parking/forecast", params={"hours": 3, "weeks": 1}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["spots_total"], body["spots_known"], body["spots_free"]) == (20, 4, 1)
    assert body["decay_hours"] == 3.0
    points = body["points"]
    assert [p["hours_ahead"] for p in points] == [1.0, 2.0, 3.0]
    assert [p["typical_occupied_ratio"] for p in points] == pytest.approx([0.25] * 3)
    assert [p["free_spots"] for p in points] == pytest.approx(
        [4 * (1 - (0.25 + 0.5 * math.exp(-h / 3))) for h in (1, 2, 3)]
    )
    as_of = datetime.fromisoformat(body["as_of"])
    assert datetime.fromisoformat(points[0]["ts"]) == as_of + timedelta(hours=1)

    assert (await api.get("/v1/zones/nowhere/parking/forecast")).status_code == 404
    for params in ({"hours": 0}, {"hours": 49}, {"tz": "Mars/Olympus"}):
        refused = await api.get("/v1/zones/anfa/parking/forecast", params=params)
        assert refused.status_code == 422, params


async def test_parking_forecast_interpolates_the_typical_week(
    pool: asyncpg.Pool, fleet: Fleet, store: str
) -> None:
    """At a past moment (the backtest's way in), the typical ratio is interpolated between hour
    centres, the deviation of now decays, and an hour without history keeps the ratio of now.
    Every number hand-computed."""
    one, two = fleet.spots[0], fleet.spots[1]
    moment = at(7, 10, 15)
    # Hours of the week before `moment`'s hour: 09 (0), 10 (1/2), 11 (1), 12 (0), 13 (1/2).
    await pool.executemany(
        INSERT_PARKING,
        [
            (one, at(7, 9, 20), False),
            (two, at(7, 9, 20), False),
            (one, at(0, 10, 20), True),
            (two, at(0, 10, 20), False),
            (one, at(0, 11, 20), True),
            (two, at(0, 11, 20), True),
            (one, at(0, 12, 20), False),
            (two, at(0, 12, 20), False),
            (one, at(0, 13, 20), True),
            (two, at(0, 13, 20), False),
            # Now: one of the two taken. Its hour is not part of the typical week yet.
            (one, at(7, 10, 10), True),
            (two, at(7, 10, 10), False),
        ],
    )
    await refresh(pool, store)
    state, points = await parking_forecast(
        pool, "sidi-belyout", at=moment, hours=4, weeks=1, time_zone="UTC"
    )
    assert (state.spots_total, state.spots_known, state.spots_free) == (20, 2, 1)
    # 10:15 lies 3/4 of the way from 09:30 (0) to 10:30 (1/2): 3/8; now is 1/2, so +1/8.
    deviation = 0.5 - 0.375
    typical = [0.875, 0.25, 0.375, None]  # 11:15, 12:15, 13:15; no history for 14:00
    expected = [
        0.5 if t is None else t + deviation * math.exp(-h / 3)
        for h, t in zip((1, 2, 3, 4), typical, strict=True)
    ]
    assert [p.ts for p in points] == [moment + timedelta(hours=h) for h in (1, 2, 3, 4)]
    assert [p.typical_occupied_ratio for p in points] == pytest.approx(typical)
    assert [p.occupied_ratio for p in points] == pytest.approx(expected)
    assert [p.free_spots for p in points] == pytest.approx([2 * (1 - r) for r in expected])
