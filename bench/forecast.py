"""Forecast backtest: the parking availability forecast against two naive ones on simulated weeks.

Six weeks of parking readings are simulated with the simulator's own spot model
(``simulators.city.SpotModel``: weekly patterns per kind of zone, noise per day and per part of
day) for one zone of each pattern, and written straight into the database (not through MQTT):
a reading at each change and a heartbeat every 30 minutes, as the simulated sensors send.

Over the last two weeks, every ``STEP`` the forecast is made for that moment by the API's own code
(``citytel.api.routes.zones.parking_forecast``: the state at that moment, the typical week of the
four weeks before it, read by the API's queries) and compared, 1, 3 and 6 hours ahead, with the
true number of free spots then. Two naive forecasts are scored on the same moments: "same as now"
(the free spots at the moment of the forecast) and "same hour last week" (the free spots a week
before the moment forecast). The error is the mean absolute error in free spots per zone.

The forecast's decay time is also swept (the same function with other ``decay_h``), to show why
``citytel.forecast.DECAY_H`` is what it is: 0 is the typical week alone, a very long decay keeps
today's whole deviation.

    python -m bench --only forecast
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.services import Services
from citytel.api.routes.zones import parking_forecast
from citytel.forecast import DECAY_H, TypicalWeek, forecast_free_spots
from citytel.storage import queries
from citytel.storage.migrate import HISTORY_AGGREGATES
from simulators.city import SpotModel, parking_pattern
from simulators.fleet import Spot

log = logging.getLogger("bench")

# One zone of each pattern (simulators.city.parking_pattern).
ZONES = ("sidi-belyout", "anfa", "ain-sebaa", "derb-sultan")
WEEKS = 6
TRAIN_WEEKS = 4
HORIZONS_H = (1, 3, 6)
HEARTBEAT = timedelta(minutes=30)
# The simulator's clock is Casablanca's winter time, a fixed UTC+1 (simulators.city).
TIME_ZONE = "Etc/GMT-1"
DECAYS_H = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 12.0, 1e9)
_WEEK = timedelta(weeks=1)


@dataclass
class SpotHistory:
    """A simulated spot's changes of state, in time order."""

    times: list[datetime]
    states: list[bool]

    def at(self, ts: datetime) -> bool:
        """Whether the spot was occupied at ``ts`` (at or after its first state)."""
        return self.states[bisect.bisect_right(self.times, ts) - 1]


def _simulate(
    spots: list[Spot], start: datetime, end: datetime, seed: int
) -> tuple[list[tuple[Any, ...]], dict[str, SpotHistory]]:
    """Readings (a change or a heartbeat) of every spot in ``[start, end)``, and their truth."""
    rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
    records: list[tuple[Any, ...]] = []
    truth: dict[str, SpotHistory] = {}
    for spot in spots:
        model = SpotModel.start(spot, start, rng)
        history = SpotHistory([start], [model.occupied])
        clock = start
        while clock < end:
            records.append((spot.id, clock, model.occupied, clock))
            due = min(model.change_at, clock + HEARTBEAT)
            if due >= end:
                break
            clock = due
            if model.advance(clock, rng):
                history.times.append(clock)
                history.states.append(model.occupied)
        truth[spot.id] = history
    return records, truth


def _free(truth: list[SpotHistory], ts: datetime) -> int:
    return sum(not spot.at(ts) for spot in truth)


async def _store(pool: asyncpg.Pool, spots: list[Spot], records: list[tuple[Any, ...]]) -> bool:
    """Write the spots and readings; refresh the aggregates if any. Whether there are any."""
    async with pool.acquire() as conn:
        return await _store_with(conn, spots, records)


async def _store_with(conn: Any, spots: list[Spot], records: list[tuple[Any, ...]]) -> bool:
    await conn.executemany(
        "INSERT INTO parking_spots (id, location, zone)"
        " VALUES ($1, ST_SetSRID(ST_MakePoint($2, $3), 4326)::geography, $4)",
        [(s.id, s.lon, s.lat, s.zone) for s in spots],
    )
    await conn.copy_records_to_table(
        "parking_readings", records=records, columns=["spot_id", "ts", "occupied", "received_at"]
    )
    await conn.execute("ANALYZE")
    aggregates = bool(await conn.fetchval(queries.HAS_AGGREGATES))
    if aggregates:
        for view in HISTORY_AGGREGATES:
            await conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
    return aggregates


def _mae(errors: list[float]) -> float:
    return round(sum(errors) / len(errors), 2) if errors else float("nan")


async def _run(url: str, *, spots_per_zone: int, step: timedelta) -> dict[str, Any]:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    start = end - WEEKS * _WEEK
    spots = [
        Spot(
            id=f"BF-{zone}-{i:03d}",
            zone=zone,
            lat=33.57 + i * 1e-5,
            lon=-7.6 + j * 1e-3,
            category="standard",
        )
        for j, zone in enumerate(ZONES)
        for i in range(spots_per_zone)
    ]
    started = time.perf_counter()
    records, truth = _simulate(spots, start, end, seed=12)
    simulated_s = time.perf_counter() - started
    log.info("forecast: %d readings simulated in %.1f s", len(records), simulated_s)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        started = time.perf_counter()
        aggregates = await _store(pool, spots, records)
        stored_s = time.perf_counter() - started
        log.info("forecast: stored in %.1f s", stored_s)
        errors: dict[str, dict[str, list[float]]] = {}
        sweep: dict[float, dict[int, list[float]]] = {
            d: {h: [] for h in HORIZONS_H} for d in DECAYS_H
        }
        moments = 0
        forecast_s = 0.0
        horizon = max(HORIZONS_H)
        for zone in ZONES:
            zone_truth = [truth[s.id] for s in spots if s.zone == zone]
            # Off the hour, so that interpolation within the profile's hours is exercised.
            moment = start + TRAIN_WEEKS * _WEEK + timedelta(minutes=17)
            zone_errors: dict[str, list[float]] = {}
            while moment + timedelta(hours=horizon) <= end:
                t0 = time.perf_counter()
                state, points = await parking_forecast(
                    pool,
                    zone,
                    at=moment,
                    hours=horizon,
                    weeks=TRAIN_WEEKS,
                    time_zone=TIME_ZONE,
                )
                forecast_s += time.perf_counter() - t0
                moments += 1
                week = TypicalWeek.from_rows([dict(r) for r in state.week], TIME_ZONE)
                by_hour = {round(p.hours_ahead): p for p in points}
                for h in HORIZONS_H:
                    target = moment + timedelta(hours=h)
                    actual = _free(zone_truth, target)
                    guesses = {
                        "forecast": by_hour[h].free_spots,
                        "same_as_now": float(state.spots_free),
                        "same_hour_last_week": float(_free(zone_truth, target - _WEEK)),
                    }
                    for name, guess in guesses.items():
                        zone_errors.setdefault(f"{name}_{h}h", []).append(abs(guess - actual))
                    for decay in DECAYS_H:
                        (swept,) = forecast_free_spots(
                            at=moment,
                            spots_known=state.spots_known,
                            spots_free=state.spots_free,
                            week=week,
                            horizons=[timedelta(hours=h)],
                            decay_h=max(decay, 1e-9),
                        )
                        sweep[decay][h].append(abs(swept.free_spots - actual))
                moment += step
            errors[zone] = zone_errors
            log.info("forecast: %s done, %d forecasts so far", zone, moments)
    finally:
        await pool.close()

    table: dict[str, Any] = {}
    for zone, zone_errors in errors.items():
        table[zone] = {
            "pattern": parking_pattern(zone),
            **{key: _mae(values) for key, values in sorted(zone_errors.items())},
        }
    overall: dict[str, float] = {}
    for key in next(iter(errors.values())):
        overall[key] = _mae([e for zone_errors in errors.values() for e in zone_errors[key]])
    table["all_zones"] = overall
    return {
        "store": "timescaledb" if aggregates else "postgres",
        "zones": len(ZONES),
        "spots_per_zone": spots_per_zone,
        "weeks_simulated": WEEKS,
        "weeks_of_history_per_forecast": TRAIN_WEEKS,
        "evaluated_weeks": WEEKS - TRAIN_WEEKS,
        "forecast_every_min": step.total_seconds() / 60,
        "forecasts": moments,
        "readings": len(records),
        "simulated_s": round(simulated_s, 1),
        "stored_s": round(stored_s, 1),
        "forecast_ms_mean": round(forecast_s / moments * 1000, 1) if moments else None,
        "decay_h": DECAY_H,
        "mae_free_spots": table,
        "decay_sweep_mae_all_zones": {
            ("inf" if decay >= 1e8 else f"{decay:g}"): {
                f"{h}h": _mae(values) for h, values in by_h.items()
            }
            for decay, by_h in sweep.items()
        },
    }


def run(services: Services, *, quick: bool = False) -> dict[str, Any]:
    """Simulate the weeks into a database of their own and score the forecasts."""
    url = services.cluster.create_database("citytel_forecast")
    return asyncio.run(
        _run(
            url,
            spots_per_zone=50 if quick else 120,
            step=timedelta(hours=3 if quick else 2),
        )
    )
