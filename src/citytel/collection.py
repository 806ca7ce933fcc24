"""Waste collection: how fast each container fills, when it will be due, and a round to empty them.

Pure functions, no I/O; :mod:`citytel.api.routes.collection` feeds them from the database.

A container's **fill cycle** starts when it is emptied (:func:`advance_cycle`, which
``storage/writer.py`` applies as readings are stored): a reading more than ``EMPTIED_DROP_PCT``
points below the one before it (a full or partial emptying), or any reading below the level the
cycle started at. The second rule catches what the first misses: a container emptied while
nearly empty (glass at 12 % emptied to 2 % drops by less than the threshold), a fill that
settles, and a cycle whose first reading was a high one of the sensor's noise. So within a
cycle no reading is below its start, and no rate is negative. Its **fill rate** is the mean rate
of the current cycle once the cycle is an hour old, before that the mean rate of the previous
cycle. A mean over the whole cycle uses only its two ends, so the centimetre-scale jitter of
ultrasonic readings does not add up, and it is the rate that matters for dispatch: how long
until full at the pace since the last collection. Starting at a low reading biases it up by at
most the sensor's noise over the cycle's length (a point or two over a day: under 0.1 %/h).

The **round** is an open path from the start through every due container, on great-circle
distances: the shortest one for up to nine points (the start and eight stops, or nine stops
without a start: an exact search), else nearest neighbour improved by 2-opt (reverse a stretch)
and or-opt (move one to three stops elsewhere) until no move shortens it or ten passes are done.
That is a good visiting order, not a road route: hand it to a routing engine (OSRM, Valhalla,
VROOM) for turn-by-turn driving.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from citytel.geo import distance_m

# A reading this many points below the one before: the container was emptied.
EMPTIED_DROP_PCT = 15.0
# A cycle younger than this says too little about its rate.
MIN_CYCLE = timedelta(hours=1)
# Up to this many points (the start included) the round is the shortest there is: an exact
# search over subsets takes a few milliseconds. Beyond, a heuristic.
_EXACT_UP_TO = 9
# Slower than this, a container is not filling (it would take over four months from empty).
MIN_RATE_PCT_H = 0.03


@dataclass(frozen=True, slots=True)
class FillCycle:
    """Where a container's fill cycle stands, as its latest state keeps it."""

    ts: datetime | None  # the newest fill measurement taken into account
    fill_pct: float | None
    started_at: datetime | None
    start_fill_pct: float | None
    last_rate_pct_h: float | None


NO_CYCLE = FillCycle(None, None, None, None, None)


def advance_cycle(cycle: FillCycle, readings: Iterable[tuple[datetime, float]]) -> FillCycle:
    """The cycle after ``readings`` (ts, fill_pct), taken in time order.

    A reading no newer than the cycle's latest is history only. Each reading more than
    ``EMPTIED_DROP_PCT`` points below the one before it, or below the cycle's start, ends the
    cycle, which leaves its mean rate if it lasted ``MIN_CYCLE``, and starts a new one: so several
    readings stored together count exactly as if they had come one by one.
    """
    for ts, fill in sorted(readings):
        if cycle.ts is not None and ts <= cycle.ts:
            continue
        if cycle.started_at is None or cycle.fill_pct is None or cycle.start_fill_pct is None:
            cycle = FillCycle(ts, fill, ts, fill, cycle.last_rate_pct_h)
        elif fill < cycle.fill_pct - EMPTIED_DROP_PCT or fill < cycle.start_fill_pct:
            rate = cycle.last_rate_pct_h
            if cycle.ts is not None and cycle.ts - cycle.started_at >= MIN_CYCLE:
                hours = (cycle.ts - cycle.started_at) / timedelta(hours=1)
                rate = (cycle.fill_pct - cycle.start_fill_pct) / hours
            cycle = FillCycle(ts, fill, ts, fill, rate)
        else:
            cycle = FillCycle(
                ts, fill, cycle.started_at, cycle.start_fill_pct, cycle.last_rate_pct_h
            )
    return cycle


def fill_rate_pct_h(cycle: FillCycle) -> float | None:
    """The rate the container fills at, in percentage points per hour; None when unknown."""
    if (
        cycle.fill_pct is not None
        and cycle.ts is not None
        and cycle.started_at is not None
        and cycle.start_fill_pct is not None
        and cycle.ts - cycle.started_at >= MIN_CYCLE
    ):
        hours = (cycle.ts - cycle.started_at) / timedelta(hours=1)
        return (cycle.fill_pct - cycle.start_fill_pct) / hours
    return cycle.last_rate_pct_h


def reaches_at(cycle: FillCycle, pct: float) -> datetime | None:
    """When the fill level reaches ``pct`` at the current rate: the measurement time if it
    already has, None when unknown or not filling."""
    if cycle.fill_pct is None or cycle.ts is None:
        return None
    if cycle.fill_pct >= pct:
        return cycle.ts
    rate = fill_rate_pct_h(cycle)
    if rate is None or rate < MIN_RATE_PCT_H:
        return None
    return cycle.ts + timedelta(hours=(pct - cycle.fill_pct) / rate)


@dataclass(frozen=True, slots=True)
class Stop:
    """A place to visit: an id and a point."""

    id: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Round:
    """Stops in visiting order, with the length of each leg (from the start, or the stop before)."""

    stops: list[Stop]
    legs_m: list[float]

    @property
    def length_m(self) -> float:
        """The whole round, start to last stop."""
        return sum(self.legs_m)


def plan_round(
    start: tuple[float, float] | None, stops: Sequence[Stop], *, max_passes: int = 10
) -> Round:
    """A short order to visit ``stops`` from ``start`` (or from the first stop when None).

    The round is open: it ends at its last stop. Improvement stops after ``max_passes`` passes.
    """
    if not stops:
        return Round([], [])
    offset = 1 if start is not None else 0
    points = ([start] if start is not None else []) + [(s.lat, s.lon) for s in stops]
    dist = [[distance_m(*p, *q) for q in points] for p in points]
    if len(points) <= _EXACT_UP_TO:
        order = _shortest_path(dist)
    else:
        order = _nearest_neighbour(dist)
        _improve(order, dist, max_passes)
    legs = [dist[a][b] for a, b in itertools.pairwise(order)]
    if start is None:
        legs.insert(0, 0.0)  # the round starts at its first stop
    return Round([stops[i - offset] for i in order[offset:]], legs)


def _nearest_neighbour(dist: list[list[float]]) -> list[int]:
    """From point 0, always on to the nearest point not yet visited."""
    left = set(range(1, len(dist)))
    order = [0]
    while left:
        here = dist[order[-1]]
        step = min(left, key=lambda j: (here[j], j))
        left.remove(step)
        order.append(step)
    return order


def _improve(order: list[int], dist: list[list[float]], max_passes: int) -> None:
    """2-opt and or-opt moves on an open path that starts at order[0], while they shorten it."""
    for _ in range(max_passes):
        improved = _two_opt_pass(order, dist)
        improved = _or_opt_pass(order, dist) or improved
        if not improved:
            return


def _two_opt_pass(order: list[int], dist: list[list[float]]) -> bool:
    """Reverse every stretch whose reversal shortens the path; True if one did."""
    n, improved = len(order), False
    for i in range(1, n - 1):
        for k in range(i + 1, n):
            a, b, c = order[i - 1], order[i], order[k]
            d = order[k + 1] if k + 1 < n else None
            before = dist[a][b] + (dist[c][d] if d is not None else 0.0)
            after = dist[a][c] + (dist[b][d] if d is not None else 0.0)
            if after < before - 1e-6:
                order[i : k + 1] = reversed(order[i : k + 1])
                improved = True
    return improved


def _or_opt_pass(order: list[int], dist: list[list[float]]) -> bool:
    """Move runs of one to three stops elsewhere (either way round) where that is shorter."""
    improved = False
    for size in (1, 2, 3):
        i = 1
        while i + size <= len(order):
            if _move_run(order, dist, i, size):
                improved = True
            i += 1
    return improved


def _move_run(order: list[int], dist: list[list[float]], i: int, size: int) -> bool:
    """Move order[i : i + size] to the place (and direction) that shortens the path most."""
    run = order[i : i + size]
    rest = order[:i] + order[i + size :]
    prev, after = order[i - 1], order[i + size] if i + size < len(order) else None
    saved = dist[prev][run[0]]
    if after is not None:
        saved += dist[run[-1]][after] - dist[prev][after]
    best_cost, best_place = saved - 1e-6, None
    for j in range(1, len(rest) + 1):
        p, q = rest[j - 1], rest[j] if j < len(rest) else None
        for first, last, forward in ((run[0], run[-1], True), (run[-1], run[0], False)):
            cost = dist[p][first] + (dist[last][q] - dist[p][q] if q is not None else 0.0)
            if cost < best_cost:
                best_cost, best_place = cost, (j, forward)
    if best_place is None:
        return False
    j, forward = best_place
    order[:] = rest[:j] + (run if forward else run[::-1]) + rest[j:]
    return True


def _shortest_path(dist: list[list[float]]) -> list[int]:
    """The shortest open path from point 0 through all the others (Held-Karp, small inputs)."""
    n = len(dist)
    if n <= 2:
        return list(range(n))
    others = n - 1
    full = (1 << others) - 1
    # best[mask][j]: the shortest path from 0 through the points of mask, ending at point j + 1.
    best = [[math.inf] * others for _ in range(1 << others)]
    came = [[-1] * others for _ in range(1 << others)]
    for j in range(others):
        best[1 << j][j] = dist[0][j + 1]
    for mask in range(1, full + 1):
        for j in range(others):
            here = best[mask][j]
            if here == math.inf or not mask & (1 << j):
                continue
            for k in range(others):
                if mask & (1 << k):
                    continue
                nxt = mask | (1 << k)
                length = here + dist[j + 1][k + 1]
                if length < best[nxt][k]:
                    best[nxt][k], came[nxt][k] = length, j
    end = min(range(others), key=lambda j: best[full][j])
    path, mask = [], full
    while end != -1:
        path.append(end + 1)
        end, mask = came[mask][end], mask & ~(1 << end)
    return [0, *reversed(path)]


def due_first(
    candidates: Sequence[tuple[Stop, datetime]], max_stops: int
) -> tuple[list[tuple[Stop, datetime]], int]:
    """The ``max_stops`` most urgent (earliest due) candidates, and how many were left out."""
    ordered = sorted(candidates, key=lambda c: (c[1], c[0].id))
    return ordered[:max_stops], max(0, len(ordered) - max_stops)
