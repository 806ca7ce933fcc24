"""The in-memory free-spot index against a brute-force search over the same spots."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytel.api.schemas import FreeSpot
from citytel.api.spot_index import FreeSpotIndex, SpotState, rfc3339
from citytel.geo import distance_m

NOW = datetime(2026, 11, 22, 8, 15, tzinfo=UTC)


def spot(
    i: int, lat: float, lon: float, *, occupied: bool | None = False, category: str = "standard"
) -> SpotState:
    return SpotState(
        id=f"S-{i:05d}",
        zone="maarif",
        category=category,
        lat=lat,
        lon=lon,
        occupied=occupied,
        status_since=None if occupied is None else NOW - timedelta(minutes=i % 50),
        battery_pct=None if i % 4 == 0 else 50 + i % 50,
        last_seen=None if occupied is None else NOW,
    )


def brute_force(
    spots: list[SpotState],
    lat: float,
    lon: float,
    radius_m: float,
    limit: int,
    category: str | None = None,
) -> list[tuple[float, str]]:
    found = [
        (distance_m(lat, lon, s.lat, s.lon), s.id)
        for s in spots
        if s.free and (category is None or s.category == category)
    ]
    return sorted(f for f in found if f[0] <= radius_m)[:limit]


def city(count: int, seed: int, *, lat: float = 33.57, lon: float = -7.6) -> list[SpotState]:
    """``count`` spots scattered over about 10 km, a third occupied, a tenth never heard from."""
    rng = random.Random(seed)
    spots = []
    for i in range(count):
        state = rng.random()
        occupied = None if state < 0.1 else state < 0.4
        category = "disabled" if rng.random() < 0.1 else "standard"
        spots.append(
            spot(
                i,
                lat + rng.uniform(-0.05, 0.05),
                lon + rng.uniform(-0.05, 0.05),
                occupied=occupied,
                category=category,
            )
        )
    return spots


@pytest.mark.parametrize(("radius_m", "limit"), [(100, 20), (500, 20), (800, 5), (5000, 200)])
def test_nearest_equals_brute_force_in_a_city(radius_m: float, limit: int) -> None:
    """Over 3,000 scattered spots, every answer is exactly the brute-force one, in order."""
    spots = city(3000, seed=limit)
    index = FreeSpotIndex()
    index.apply(spots)
    rng = random.Random(7)
    for _ in range(200):
        lat, lon = 33.57 + rng.uniform(-0.06, 0.06), -7.6 + rng.uniform(-0.06, 0.06)
        category = rng.choice([None, None, "disabled"])
        got = index.nearest(lat, lon, radius_m=radius_m, limit=limit, category=category)
        want = brute_force(spots, lat, lon, radius_m, limit, category)
        assert [(round(d, 6), s.id) for d, s in got] == [(round(d, 6), i) for d, i in want]


@settings(max_examples=150, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.floats(-89.99, 89.99), st.floats(-179.99, 179.99)), min_size=1, max_size=60
    ),
    # Not across the antimeridian: a search circle is cut there (as the SQL query's is).
    query=st.tuples(st.floats(-89.99, 89.99), st.floats(-179.5, 179.5)),
    radius_m=st.floats(1, 5000),
    limit=st.integers(1, 30),
    near=st.booleans(),
)
def test_nearest_equals_brute_force_anywhere(
    points: list[tuple[float, float]],
    query: tuple[float, float],
    radius_m: float,
    limit: int,
    near: bool,
) -> None:
    """Anywhere on the globe, poles and antimeridian included, the index misses nothing."""
    lat0, lon0 = query
    if near:
        # Put the spots around the query point, or most cases would find nothing at all.
        points = [
            (max(-89.999, min(89.999, lat0 + dlat / 2000)), lon0 + dlon / 2000)
            for dlat, dlon in points
        ]
        points = [(la, max(-180.0, min(180.0, lo))) for la, lo in points]
    spots = [spot(i, la, lo) for i, (la, lo) in enumerate(points)]
    index = FreeSpotIndex()
    index.apply(spots)
    got = index.nearest(lat0, lon0, radius_m=radius_m, limit=limit)
    want = brute_force(spots, lat0, lon0, radius_m, limit)
    assert [s.id for _, s in got] == [i for _, i in want]


def test_state_changes_move_spots_in_and_out() -> None:
    """An occupied or unknown spot leaves the index, a freed one comes back, a moved one moves."""
    index = FreeSpotIndex()
    a, b = spot(1, 33.57, -7.6), spot(2, 33.571, -7.6)
    index.apply([a, b])
    assert [s.id for _, s in index.nearest(33.57, -7.6, radius_m=500, limit=5)] == [a.id, b.id]
    index.apply([spot(1, 33.57, -7.6, occupied=True)])
    assert [s.id for _, s in index.nearest(33.57, -7.6, radius_m=500, limit=5)] == [b.id]
    index.apply([spot(2, 33.57, -7.6, occupied=None)])
    assert index.nearest(33.57, -7.6, radius_m=500, limit=5) == []
    index.apply([spot(1, 33.60, -7.6)])  # freed, and moved 3.3 km north
    assert index.nearest(33.57, -7.6, radius_m=500, limit=5) == []
    [(d, moved)] = index.nearest(33.57, -7.6, radius_m=5000, limit=5)
    assert moved.id == a.id
    assert d == pytest.approx(3335.8, abs=1)
    index.remove(a.id)
    index.remove("never-there")
    assert len(index) == 0


def test_ties_are_broken_by_id() -> None:
    """Spots at the same place come in id order, and limit keeps the smallest ids."""
    index = FreeSpotIndex()
    index.apply([spot(i, 33.57, -7.6) for i in (5, 3, 9, 1)])
    found = index.nearest(33.5701, -7.6, radius_m=100, limit=3)
    assert [s.id for _, s in found] == ["S-00001", "S-00003", "S-00005"]


def test_json_items_are_free_spots() -> None:
    """The JSON answer parses as the API's FreeSpot items, distance rounded to 0.1 m."""
    index = FreeSpotIndex()
    one = SpotState(
        id="CAS-PS-00042",
        zone="anfa",
        category="disabled",
        lat=33.5731,
        lon=-7.5898,
        occupied=False,
        status_since=NOW - timedelta(microseconds=250),
        battery_pct=100.0,
        last_seen=NOW,
    )
    index.apply([one])
    [item] = json.loads(index.nearest_json(33.5741, -7.5898, radius_m=500, limit=1))
    parsed = FreeSpot.model_validate(item)
    assert parsed.id == one.id
    assert parsed.status == "free"
    assert parsed.location.lat == one.lat
    assert parsed.status_since == one.status_since
    assert item["status_since"] == "2026-11-22T08:14:59.999750Z"
    assert item["last_seen"] == "2026-11-22T08:15:00Z"
    assert item["distance_m"] == round(distance_m(33.5741, -7.5898, one.lat, one.lon), 1)
    assert json.loads(index.nearest_json(0, 0, radius_m=500, limit=1)) == []


def test_rfc3339_converts_to_utc() -> None:
    """Times in another offset are written in UTC."""
    plus_one = datetime(2026, 11, 22, 10, 15, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(plus_one) == "2026-11-22T09:15:00Z"


def test_searches_away_from_every_spot_and_unknown_categories() -> None:
    """Far from all spots, or for a category no free spot has: nothing, and no cell walked."""
    index = FreeSpotIndex()
    assert index.nearest(33.57, -7.6, radius_m=5000, limit=20) == []
    index.apply(city(500, seed=3))
    assert index.nearest(88.0, 10.0, radius_m=5000, limit=20) == []
    assert index.nearest(33.57, -7.6, radius_m=5000, limit=20, category="taxi") == []
    # Just outside the city's edge, the circle still reaches in.
    edge = spot(9999, 33.62, -7.6)
    index.apply([edge])
    [(d, found)] = index.nearest(33.623, -7.6, radius_m=400, limit=1)
    assert found.id == edge.id
    assert d == pytest.approx(333.6, abs=0.5)
