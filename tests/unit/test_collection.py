"""Fill rates, due times and the visiting order of a collection round."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytel.collection import (
    NO_CYCLE,
    FillCycle,
    Stop,
    advance_cycle,
    due_first,
    fill_rate_pct_h,
    plan_round,
    reaches_at,
)
from citytel.geo import distance_m
from simulators.city import ContainerModel
from simulators.fleet import Fleet, generate_fleet

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def state(
    fill: float | None,
    hours_in_cycle: float | None,
    start_fill: float | None = 0.0,
    last_rate: float | None = None,
) -> FillCycle:
    measured = T0 + timedelta(hours=10)
    started = None if hours_in_cycle is None else measured - timedelta(hours=hours_in_cycle)
    return FillCycle(
        ts=None if fill is None else measured,
        fill_pct=fill,
        started_at=started,
        start_fill_pct=start_fill,
        last_rate_pct_h=last_rate,
    )


def test_rate_is_the_mean_of_the_cycle_once_an_hour_old() -> None:
    """40 points in 4 hours is 10 points an hour; a younger cycle falls back to the last one's."""
    assert fill_rate_pct_h(state(50, 4, start_fill=10)) == pytest.approx(10)
    assert fill_rate_pct_h(state(12, 0.5, start_fill=10, last_rate=6)) == 6
    assert fill_rate_pct_h(state(12, 0.5, start_fill=10)) is None
    assert fill_rate_pct_h(state(None, None, last_rate=3)) == 3


def test_reaches_at_projects_the_rate() -> None:
    """At 10 points an hour from 50 %, 80 % is three hours after the measurement."""
    filling = state(50, 4, start_fill=10)
    assert reaches_at(filling, 80) == T0 + timedelta(hours=13)
    assert reaches_at(filling, 50) == T0 + timedelta(hours=10)  # already there
    assert reaches_at(state(85, 0.2), 80) == T0 + timedelta(hours=10)
    assert reaches_at(state(50, 24, start_fill=50), 80) is None  # not filling
    assert reaches_at(state(60, 24, start_fill=70), 80) is None  # compacted, going down
    assert reaches_at(state(None, None, last_rate=5), 80) is None  # never measured


def test_due_first_keeps_the_most_urgent() -> None:
    """Earliest due first (ties by id); the rest are counted as left out."""
    stops = [(Stop(f"C{i}", 0, 0), T0 + timedelta(hours=h)) for i, h in enumerate([3, 1, 2, 1])]
    kept, left_out = due_first(stops, 3)
    assert [s.id for s, _ in kept] == ["C1", "C3", "C2"]
    assert left_out == 1


def line(n: int) -> list[Stop]:
    """``n`` stops 100 m apart heading east along a street of Casablanca."""
    return [Stop(f"C{i:02d}", 33.5731, -7.5898 + i * 0.001076) for i in range(n)]


def test_stops_on_a_street_are_visited_in_order() -> None:
    """Shuffled stops along a line, started from its west end, come back in street order."""
    stops = line(12)
    shuffled = random.Random(3).sample(stops, len(stops))
    planned = plan_round((33.5731, -7.5898 - 0.001076), shuffled)
    assert [s.id for s in planned.stops] == [s.id for s in stops]
    assert planned.legs_m[0] == pytest.approx(100, abs=1)
    assert planned.length_m == pytest.approx(100 + 11 * 100, rel=0.01)


def test_without_a_start_the_round_begins_at_the_first_stop() -> None:
    """No depot: the first (most urgent) stop is where the round starts, with a leg of 0."""
    stops = line(5)
    planned = plan_round(None, [stops[2], stops[0], stops[4], stops[1], stops[3]])
    assert planned.stops[0].id == stops[2].id
    assert planned.legs_m[0] == 0
    assert sorted(s.id for s in planned.stops) == [s.id for s in stops]
    assert plan_round(None, []).stops == []


def round_length(start: tuple[float, float], stops: list[Stop]) -> float:
    points = [start, *((s.lat, s.lon) for s in stops)]
    return sum(distance_m(*a, *b) for a, b in itertools.pairwise(points))


def offsets(max_size: int) -> st.SearchStrategy[list[tuple[float, float]]]:
    return st.lists(
        st.tuples(st.floats(-0.02, 0.02), st.floats(-0.02, 0.02)),
        min_size=1,
        max_size=max_size,
        unique=True,
    )


START = (33.57, -7.6)


def checked_round(offsets: list[tuple[float, float]]) -> tuple[list[Stop], float]:
    """The round through stops at ``offsets`` from START: every stop once, legs adding up."""
    stops = [Stop(f"C{i}", START[0] + a, START[1] + b) for i, (a, b) in enumerate(offsets)]
    planned = plan_round(START, stops)
    assert sorted(s.id for s in planned.stops) == sorted(s.id for s in stops)
    assert planned.length_m == pytest.approx(round_length(START, planned.stops))
    return planned.stops, planned.length_m


@settings(max_examples=40, deadline=None)
@given(offsets(7))
def test_small_rounds_are_the_shortest(offsets: list[tuple[float, float]]) -> None:
    """Up to seven stops, the round is the shortest of every possible order."""
    stops, length = checked_round(offsets)
    best = min(round_length(START, list(p)) for p in itertools.permutations(stops))
    assert length == pytest.approx(best)


@settings(max_examples=25, deadline=None)
@given(offsets(40))
def test_large_rounds_are_two_opt_optima(offsets: list[tuple[float, float]]) -> None:
    """No reversal of any stretch shortens a round of many stops."""
    stops, length = checked_round(offsets)
    for i, k in itertools.combinations(range(len(stops)), 2):
        reversed_part = stops[:i] + stops[i : k + 1][::-1] + stops[k + 1 :]
        assert round_length(START, reversed_part) >= length - 1e-3


def test_heuristic_round_is_near_the_best_on_a_grid() -> None:
    """36 stops on a 6 x 6 grid of 100 m from a corner: the best open path is 35 legs of 100 m."""
    start = (33.5731, -7.5898)
    stops = [
        Stop(f"G{r}{c}", start[0] + r * 0.0008993, start[1] + c * 0.001078)
        for r in range(6)
        for c in range(6)
    ]
    planned = plan_round(start, random.Random(5).sample(stops, len(stops)))
    assert planned.length_m <= 35 * 100 * 1.08


def test_an_emptying_inside_a_batch_starts_the_cycle() -> None:
    """Stored at 90 %, then 5 % and on up to 80 %: the cycle starts at the 5 %, not at 80 %."""
    stored = FillCycle(T0, 90.0, T0 - timedelta(hours=9), 0.0, None)
    later = [(T0 + timedelta(hours=h), fill) for h, fill in [(1, 5.0), (2, 30.0), (9, 80.0)]]
    cycle = advance_cycle(stored, later)
    assert (cycle.started_at, cycle.start_fill_pct) == (T0 + timedelta(hours=1), 5.0)
    assert cycle.last_rate_pct_h == pytest.approx(10)  # 0 -> 90 % in 9 h
    assert (cycle.ts, cycle.fill_pct) == (T0 + timedelta(hours=9), 80.0)


def test_history_and_first_readings() -> None:
    """A reading no newer than the latest is history; the very first reading starts a cycle."""
    stored = FillCycle(T0, 50.0, T0 - timedelta(hours=2), 40.0, 3.0)
    assert advance_cycle(stored, [(T0 - timedelta(hours=1), 1.0), (T0, 2.0)]) == stored
    first = advance_cycle(NO_CYCLE, [(T0, 12.0)])
    assert first == FillCycle(T0, 12.0, T0, 12.0, None)


@settings(max_examples=200, deadline=None)
@given(
    fills=st.lists(st.floats(0, 100), max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    seed=st.integers(0, 1000),
)
def test_batches_count_as_readings_one_by_one(
    fills: list[float], cuts: list[int], seed: int
) -> None:
    """Readings cut into batches, each shuffled, give the cycle of the same readings one by one."""
    readings = [(T0 + timedelta(minutes=17 * i), fill) for i, fill in enumerate(fills)]
    one_by_one = NO_CYCLE
    for reading in readings:
        one_by_one = advance_cycle(one_by_one, [reading])
    grouped, rng = NO_CYCLE, random.Random(seed)
    bounds = [0, *sorted(c for c in cuts if c < len(readings)), len(readings)]
    for lo, hi in itertools.pairwise(bounds):
        batch = readings[lo:hi]
        rng.shuffle(batch)
        grouped = advance_cycle(grouped, batch)
    assert grouped == one_by_one


_FLEET = Fleet.from_geojson(generate_fleet(seed=11, containers=200, spots=0))


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, len(_FLEET.containers) - 1),
    seed=st.integers(0, 10_000),
    every_min=st.integers(5, 90),
)
def test_the_simulated_emptying_patterns_never_give_a_negative_rate(
    index: int, seed: int, every_min: int
) -> None:
    """Three simulated days of a container, emptied by its rounds from any level (glass emptied
    at 10 % too) under sensor noise: its fill rate is never negative, and after each round it
    fills again at a positive rate."""
    rng = random.Random(seed)
    model = ContainerModel.start(_FLEET.containers[index], T0, rng)
    cycle, ts = NO_CYCLE, T0
    while ts < T0 + timedelta(days=3):
        model.advance(ts, rng)
        cycle = advance_cycle(cycle, [(ts, model.reading(ts, rng).fill_pct)])
        rate = fill_rate_pct_h(cycle)
        assert rate is None or rate >= 0, (ts, cycle)
        ts += timedelta(minutes=every_min)


def test_an_emptying_below_the_drop_threshold_starts_a_cycle() -> None:
    """First seen at 12 %, emptied at 14 % to 2 %: a new cycle from 2 %, not a fall of 5 %/h."""
    cycle = advance_cycle(NO_CYCLE, [(T0, 12.0), (T0 + timedelta(hours=2), 14.0)])
    cycle = advance_cycle(cycle, [(T0 + timedelta(hours=3), 2.0)])
    assert (cycle.started_at, cycle.start_fill_pct) == (T0 + timedelta(hours=3), 2.0)
    assert cycle.last_rate_pct_h == pytest.approx(1.0)  # 12 -> 14 % in 2 h
    assert fill_rate_pct_h(cycle) == pytest.approx(1.0)


def test_the_exact_search_covers_its_whole_range() -> None:
    """Eight stops from a depot and nine without one: still the shortest of every order."""
    rng = random.Random(8)
    stops = [
        Stop(f"C{i}", 33.57 + rng.uniform(-0.02, 0.02), -7.6 + rng.uniform(-0.02, 0.02))
        for i in range(9)
    ]
    with_start = plan_round(START, stops[:8])
    best = min(round_length(START, list(p)) for p in itertools.permutations(stops[:8]))
    assert with_start.length_m == pytest.approx(best)
    # Without a depot the round starts at the first stop and visits the other eight.
    first, rest = stops[0], stops[1:]
    without = plan_round(None, stops)
    assert without.stops[0] == first
    best = min(round_length((first.lat, first.lon), list(p)) for p in itertools.permutations(rest))
    assert without.length_m == pytest.approx(best)
