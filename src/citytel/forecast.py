"""Parking availability forecast: free spots a zone should have in the next hours.

The forecast starts from the zone's **typical week** (the occupied ratio per hour of the week over
the last weeks, ``GET /v1/zones/{zone}/occupancy/week``) and corrects it by how far the zone is
from it now. The deviation decays exponentially toward the profile::

    ratio(t + h) = typical(t + h) + (ratio_now - typical(t)) * exp(-h / DECAY_H)

A zone busier than usual now (an event, a market day, rain) stays busier for a while, but the
further ahead, the more the usual week is the better guess: the cars parked now have left after
a few mean stays. ``DECAY_H`` was chosen with the backtest (``python -m bench --only forecast``,
docs/benchmarks.md), which also prints the error of the neighbouring choices.

The typical value at a moment is interpolated linearly between the centres of the hours of the
week around it (an hour's ratio is its mean, which belongs to its middle), across the end of the
week too. Where the profile has no value at the moment the forecast starts or aims at, the
forecast keeps the ratio of now ("same as now").

Free spots are expected among the spots whose state is known now: ``known * (1 - ratio)``.

A known limit: the typical week is the share of readings that said occupied, and sensors send a
reading at each change, so where stays are short it under-states busy hours; the deviation of
now corrects that near the present only (docs/benchmarks.md, the market 6 hours ahead).

Pure functions, no I/O: storage.queries.zone_parking_at reads what they need, and the API and the
backtest both call :func:`forecast_free_spots` with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

# How fast the deviation from the typical week fades, in hours (e-folding time).
DECAY_H = 3.0
# A spot whose last reading is older than this counts as unknown: in-ground sensors send a
# heartbeat at least every few hours, so a day without one is a sensor that is not there.
STATE_MAX_AGE = timedelta(days=1)
_HOURS_PER_WEEK = 7 * 24


@dataclass(frozen=True, slots=True)
class TypicalWeek:
    """Occupied ratio per hour of the week, keyed by (ISO day of week, hour) in ``time_zone``."""

    ratios: Mapping[tuple[int, int], float]
    time_zone: str

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, object]], time_zone: str) -> TypicalWeek:
        """From rows with ``day_of_week``, ``hour`` and ``occupied_ratio`` (ZONE_WEEK's)."""
        ratios: dict[tuple[int, int], float] = {}
        for row in rows:
            day, hour, ratio = row["day_of_week"], row["hour"], row["occupied_ratio"]
            if isinstance(day, int) and isinstance(hour, int) and isinstance(ratio, float):
                ratios[day, hour] = ratio
        return cls(ratios=ratios, time_zone=time_zone)

    def at(self, ts: datetime) -> float | None:
        """The typical occupied ratio at ``ts``, interpolated between hour centres; None where
        either neighbouring hour has no value."""
        local = ts.astimezone(ZoneInfo(self.time_zone))
        hour_of_week = (
            (local.isoweekday() - 1) * 24
            + local.hour
            + (local.minute * 60 + local.second + local.microsecond / 1e6) / 3600
        )
        position = hour_of_week - 0.5
        first = math.floor(position)
        weight = position - first
        before = self._ratio(first % _HOURS_PER_WEEK)
        after = self._ratio((first + 1) % _HOURS_PER_WEEK)
        if before is None or after is None:
            return None
        return before * (1 - weight) + after * weight

    def _ratio(self, hour_of_week: int) -> float | None:
        return self.ratios.get((hour_of_week // 24 + 1, hour_of_week % 24))


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    """The expected state of a zone's spots at one moment ahead."""

    ts: datetime
    hours_ahead: float
    occupied_ratio: float
    typical_occupied_ratio: float | None
    free_spots: float


def forecast_free_spots(
    *,
    at: datetime,
    spots_known: int,
    spots_free: int,
    week: TypicalWeek,
    horizons: Iterable[timedelta],
    decay_h: float = DECAY_H,
) -> list[ForecastPoint]:
    """Free spots expected at ``at + h`` for each horizon ``h``, starting from ``spots_free`` of
    ``spots_known`` at ``at`` (see the module's docstring)."""
    if spots_known == 0:
        return []
    ratio_now = 1 - spots_free / spots_known
    typical_now = week.at(at)
    points = []
    for horizon in horizons:
        ts = at + horizon
        hours = horizon.total_seconds() / 3600
        typical = week.at(ts)
        if typical is None or typical_now is None:
            ratio = ratio_now
        else:
            deviation = ratio_now - typical_now
            ratio = min(1.0, max(0.0, typical + deviation * math.exp(-hours / decay_h)))
        points.append(
            ForecastPoint(
                ts=ts,
                hours_ahead=hours,
                occupied_ratio=ratio,
                typical_occupied_ratio=typical,
                free_spots=spots_known * (1 - ratio),
            )
        )
    return points
