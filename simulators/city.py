"""How the simulated city behaves: containers filling and being emptied, spots turning over.

Pure models without I/O. Each device keeps its own state and is advanced lazily to the moment
it reports, so a fleet of thousands costs nothing between reports.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Literal

from citytel.formats.native import ParkingPayload, WastePayload
from simulators.fleet import ZONES, ZONES_BY_SLUG, Character, Container, Spot

# Morocco keeps UTC+1 except for about a month around Ramadan; a fixed offset is close enough
# for daily rhythms and avoids depending on the host's time-zone database.
LOCAL_OFFSET = timedelta(hours=1)
_OMEGA = 2 * math.pi / 24
_HOUR = timedelta(hours=1)

# Waste: the rate of filling swings around its daily mean, highest in the evening.
_WASTE_PEAK_HOUR = 19.0
_WASTE_SWING = 0.8
_DAILY_FILL_PCT = {"mixed": 55.0, "organic": 60.0, "recyclable": 30.0, "glass": 12.0}
_BUSY_SITE_SHARE = 0.08  # markets, restaurants, schools: fill two to three times faster
_NEARLY_FULL_SHARE = 0.08

# Parking follows a week, as parking studies find it: business districts fill with commuters on
# weekday mornings, thin out at lunch and empty in the evening; residential streets do the
# opposite; industrial zones work weekday shifts and sleep at the weekend; a market is busiest
# late morning and evening, and on Saturday and Sunday. Friday's midday prayer empties the
# centre and fills the residential streets for an hour or two. Each curve is the share of time a
# spot is taken, per local hour (interpolated between hours), before the spot's own use factor.
Pattern = Literal["business", "residential", "industrial", "market"]
_WEEKDAY, _FRIDAY, _SATURDAY, _SUNDAY = 0, 1, 2, 3
# fmt: off
_WEEK_CURVES: dict[Pattern, tuple[tuple[float, ...], ...]] = {
    "business": (
        (0.18, 0.15, 0.12, 0.12, 0.12, 0.15, 0.25, 0.45, 0.72, 0.86, 0.90, 0.88,
         0.78, 0.80, 0.88, 0.88, 0.84, 0.74, 0.62, 0.55, 0.52, 0.45, 0.35, 0.25),
        (0.18, 0.15, 0.12, 0.12, 0.12, 0.15, 0.25, 0.45, 0.72, 0.86, 0.88, 0.80,
         0.55, 0.50, 0.70, 0.84, 0.82, 0.72, 0.62, 0.58, 0.55, 0.48, 0.38, 0.26),
        (0.20, 0.18, 0.15, 0.12, 0.12, 0.12, 0.15, 0.20, 0.30, 0.45, 0.60, 0.68,
         0.70, 0.68, 0.66, 0.68, 0.70, 0.70, 0.66, 0.60, 0.55, 0.48, 0.38, 0.28),
        (0.22, 0.20, 0.16, 0.12, 0.12, 0.12, 0.12, 0.14, 0.18, 0.25, 0.32, 0.38,
         0.42, 0.42, 0.40, 0.40, 0.42, 0.45, 0.45, 0.42, 0.38, 0.33, 0.28, 0.24),
    ),
    "residential": (
        (0.88, 0.90, 0.90, 0.90, 0.90, 0.88, 0.82, 0.70, 0.55, 0.45, 0.42, 0.42,
         0.45, 0.48, 0.45, 0.45, 0.50, 0.60, 0.72, 0.80, 0.85, 0.87, 0.88, 0.88),
        (0.88, 0.90, 0.90, 0.90, 0.90, 0.88, 0.82, 0.70, 0.55, 0.46, 0.45, 0.50,
         0.62, 0.66, 0.55, 0.48, 0.52, 0.62, 0.72, 0.80, 0.85, 0.87, 0.88, 0.88),
        (0.88, 0.90, 0.90, 0.90, 0.90, 0.90, 0.88, 0.85, 0.80, 0.72, 0.65, 0.60,
         0.60, 0.62, 0.62, 0.60, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.87, 0.88),
        (0.88, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.88, 0.82, 0.75, 0.70,
         0.68, 0.70, 0.72, 0.70, 0.70, 0.72, 0.76, 0.80, 0.84, 0.86, 0.87, 0.88),
    ),
    "industrial": (
        (0.08, 0.08, 0.08, 0.08, 0.10, 0.20, 0.45, 0.75, 0.85, 0.86, 0.86, 0.84,
         0.72, 0.74, 0.84, 0.84, 0.80, 0.60, 0.35, 0.20, 0.14, 0.10, 0.10, 0.08),
        (0.08, 0.08, 0.08, 0.08, 0.10, 0.20, 0.45, 0.75, 0.85, 0.86, 0.84, 0.72,
         0.55, 0.55, 0.74, 0.80, 0.76, 0.56, 0.32, 0.18, 0.12, 0.10, 0.10, 0.08),
        (0.08, 0.08, 0.08, 0.08, 0.08, 0.12, 0.25, 0.45, 0.50, 0.50, 0.50, 0.48,
         0.40, 0.30, 0.22, 0.18, 0.15, 0.12, 0.10, 0.08, 0.08, 0.08, 0.08, 0.08),
        (0.06, 0.06, 0.06, 0.06, 0.06, 0.06, 0.07, 0.08, 0.09, 0.10, 0.10, 0.10,
         0.10, 0.10, 0.10, 0.10, 0.09, 0.08, 0.08, 0.07, 0.07, 0.06, 0.06, 0.06),
    ),
    "market": (
        (0.15, 0.12, 0.10, 0.10, 0.10, 0.12, 0.20, 0.35, 0.55, 0.72, 0.82, 0.86,
         0.84, 0.80, 0.78, 0.80, 0.85, 0.88, 0.88, 0.82, 0.70, 0.50, 0.32, 0.20),
        (0.15, 0.12, 0.10, 0.10, 0.10, 0.12, 0.20, 0.35, 0.55, 0.72, 0.80, 0.75,
         0.58, 0.60, 0.72, 0.80, 0.86, 0.90, 0.90, 0.84, 0.72, 0.52, 0.32, 0.20),
        (0.18, 0.14, 0.10, 0.10, 0.10, 0.12, 0.22, 0.40, 0.65, 0.82, 0.90, 0.92,
         0.92, 0.90, 0.90, 0.90, 0.92, 0.92, 0.90, 0.85, 0.72, 0.52, 0.35, 0.22),
        (0.18, 0.14, 0.10, 0.10, 0.10, 0.12, 0.22, 0.45, 0.72, 0.88, 0.92, 0.92,
         0.88, 0.80, 0.72, 0.70, 0.72, 0.74, 0.72, 0.66, 0.55, 0.42, 0.30, 0.20),
    ),
}
# fmt: on
_PATTERN_OF: dict[Character, Pattern] = {
    "centre": "business",
    "residential": "residential",
    "industrial": "industrial",
}
# Derb Sultan is the city's great market district.
_MARKET_ZONES = frozenset({"derb-sultan"})
# Mean stay in hours: commuters and shoppers in the centre, residents overnight.
_STAY_H: dict[Pattern, float] = {
    "business": 1.5,
    "residential": 6.0,
    "industrial": 4.0,
    "market": 1.0,
}
# Days differ (weather, events, holidays) and so do parts of days: the target of every spot of
# a zone is scaled by a factor drawn per local day and per four-hour block of it.
_DAY_NOISE = 0.07
_BLOCK_NOISE = 0.06
_BLOCK_H = 4
# The arrival rate follows the hour: a free spot's wait is drawn afresh every step (memoryless,
# so this is exact for a rate held constant over each step).
_RATE_STEP_H = 0.25
_MAX_RATE_STEPS = 4 * 24 * 21
_CATEGORY_USE = {"standard": 1.0, "disabled": 0.6, "delivery": 0.5, "ev_charging": 0.7}
_CATEGORY_STAY = {"standard": 1.0, "disabled": 1.0, "delivery": 0.2, "ev_charging": 1.3}


def parking_pattern(zone: str) -> Pattern:
    """The weekly parking pattern of a zone: business, residential, industrial or market."""
    if zone in _MARKET_ZONES:
        return "market"
    return _PATTERN_OF[_character(zone)]


def typical_occupancy(pattern: Pattern, ts: datetime) -> float:
    """The share of time a spot of ``pattern`` is taken at ``ts`` in a typical week."""
    local = ts.astimezone(UTC) + LOCAL_OFFSET
    weekday = local.weekday()
    day = {4: _FRIDAY, 5: _SATURDAY, 6: _SUNDAY}.get(weekday, _WEEKDAY)
    curve = _WEEK_CURVES[pattern][day]
    hour = local.hour + local.minute / 60
    # Between hour centres, across midnight into the next day's curve.
    position = hour - 0.5
    first = math.floor(position)
    weight = position - first
    if first < 0:
        previous = _WEEK_CURVES[pattern][
            {0: _SUNDAY, 5: _FRIDAY, 6: _SATURDAY}.get(weekday, _WEEKDAY)
        ]
        before, after = previous[23], curve[0]
    elif first >= 23:
        following = {3: _FRIDAY, 4: _SATURDAY, 5: _SUNDAY}.get(weekday, _WEEKDAY)
        before, after = curve[23], _WEEK_CURVES[pattern][following][0]
    else:
        before, after = curve[first], curve[first + 1]
    return before * (1 - weight) + after * weight


@cache
def _zone_factor(zone: str, day: int, block: int) -> float:
    """The day's and the block's factor on a zone's occupancy, the same for every spot."""
    daily = random.Random(f"{zone}/{day}").gauss(1.0, _DAY_NOISE)
    part = random.Random(f"{zone}/{day}/{block}").gauss(1.0, _BLOCK_NOISE)
    return max(0.6, min(1.4, daily * part))


def zone_factor(zone: str, ts: datetime) -> float:
    """How much busier than typical the zone is at ``ts`` (1.0: typical)."""
    local = ts.astimezone(UTC) + LOCAL_OFFSET
    day = local.toordinal()
    return _zone_factor(zone, day, local.hour // _BLOCK_H)


def local_hours(ts: datetime) -> float:
    """Hours since the epoch in Casablanca local time; its value modulo 24 is the time of day."""
    return (ts + LOCAL_OFFSET).timestamp() / 3600


def collection_hours(zone: str) -> tuple[float, ...]:
    """Local hours at which a zone's containers are emptied: night rounds, twice in the centre."""
    # Staggered so the trucks do not start everywhere at once.
    index = [z.slug for z in ZONES].index(zone) if zone in ZONES_BY_SLUG else 0
    night = 21.0 + (index % 6) * 0.75
    if _character(zone) == "centre":
        return (night, 5.0 + (index % 3) * 0.5)
    return (night,)


def _character(zone: str) -> Character:
    found = ZONES_BY_SLUG.get(zone)
    return found.character if found else "residential"


def _cycle_integral(h0: float, h1: float, swing: float, peak: float) -> float:
    """Integral over [h0, h1] of ``1 + swing*cos(omega*(h - peak))``, in hours."""
    return (h1 - h0) + swing / _OMEGA * (
        math.sin(_OMEGA * (h1 - peak)) - math.sin(_OMEGA * (h0 - peak))
    )


# One sensor in this many starts with a battery near its end, as in a real fleet some always
# are: the attention list (GET /v1/devices/attention) then has something to show. Chosen from
# the id, not the random stream, so every other simulated value stays as it was.
_LOW_BATTERY_ONE_IN = 50


def _starting_battery(device_id: str, drawn: float) -> float:
    """``drawn``, or for about one device in _LOW_BATTERY_ONE_IN a level of 8 to 17 %."""
    mark = zlib.crc32(device_id.encode())
    return 8.0 + mark % 10 if mark % _LOW_BATTERY_ONE_IN == 0 else drawn


@dataclass(slots=True)
class ContainerModel:
    """A container's true fill (above 100 when overflowing), battery and collection rounds."""

    container: Container
    fill: float
    daily_pct: float
    rounds: tuple[float, ...]
    round_delay_h: float
    battery: float
    drain_per_h: float
    at: datetime

    @classmethod
    def start(cls, container: Container, at: datetime, rng: random.Random) -> ContainerModel:
        """A container at ``at``, a few of them already nearly full."""
        daily = (
            _DAILY_FILL_PCT.get(container.waste_kind, 50.0) * (660 / container.capacity_l) ** 0.3
        )
        if rng.random() < _BUSY_SITE_SHARE:
            daily *= rng.uniform(2.0, 3.0)
        fill = rng.uniform(80, 97) if rng.random() < _NEARLY_FULL_SHARE else rng.uniform(2, 75)
        return cls(
            container=container,
            fill=fill,
            daily_pct=daily * rng.uniform(0.7, 1.3),
            rounds=collection_hours(container.zone),
            round_delay_h=rng.uniform(0, 1.5),
            battery=_starting_battery(container.id, rng.uniform(55, 100)),
            drain_per_h=rng.uniform(0.3, 1.0) / 24,
            at=at,
        )

    def _last_collection(self, h0: float, h1: float) -> float | None:
        latest: float | None = None
        for day in range(math.floor(h0 / 24), math.floor(h1 / 24) + 1):
            for hour in self.rounds:
                collected = day * 24 + hour + self.round_delay_h
                if h0 < collected <= h1 and (latest is None or collected > latest):
                    latest = collected
        return latest

    def advance(self, to: datetime, rng: random.Random) -> None:
        """Fill up to ``to``, emptied by any collection round on the way."""
        h0, h1 = local_hours(self.at), local_hours(to)
        if h1 <= h0:
            return
        collected = self._last_collection(h0, h1)
        if collected is not None:
            self.fill, h0 = rng.uniform(0, 5), collected
        growth = _cycle_integral(h0, h1, _WASTE_SWING, _WASTE_PEAK_HOUR)
        # Past 130 % the lid no longer closes and bags pile up beside the container.
        self.fill = min(130.0, self.fill + self.daily_pct / 24 * growth)
        self.battery = max(1.0, self.battery - self.drain_per_h * (h1 - local_hours(self.at)))
        self.at = to

    def reading(self, ts: datetime, rng: random.Random) -> WastePayload:
        """What the sensor reports at ``ts``: noisy, clipped fill; battery; temperature."""
        measured = min(100.0, max(0.0, self.fill + rng.gauss(0, 1.5)))
        temperature = 18 + 7 * math.cos(_OMEGA * (local_hours(ts) - 15)) + rng.gauss(0, 0.7)
        return WastePayload(
            ts=ts,
            fill_pct=round(measured, 1),
            battery_pct=round(self.battery, 1),
            temperature_c=round(temperature, 1),
        )


@dataclass(slots=True)
class SpotModel:
    """A spot as a two-state process whose arrival rate follows its zone's week."""

    spot: Spot
    occupied: bool
    use: float
    stay_h: float
    battery: float
    change_at: datetime
    pattern: Pattern = "business"

    @classmethod
    def start(cls, spot: Spot, at: datetime, rng: random.Random) -> SpotModel:
        """A spot at ``at``, occupied with the probability its zone and hour give."""
        pattern = parking_pattern(spot.zone)
        model = cls(
            spot=spot,
            occupied=False,
            use=_CATEGORY_USE.get(spot.category, 1.0) * rng.uniform(0.85, 1.1),
            stay_h=_STAY_H[pattern] * _CATEGORY_STAY.get(spot.category, 1.0),
            battery=_starting_battery(spot.id, rng.uniform(60, 100)),
            change_at=at,
            pattern=pattern,
        )
        model.occupied = rng.random() < model.target_occupancy(at)
        model.change_at = model.next_change(at, rng)
        return model

    def target_occupancy(self, at: datetime) -> float:
        """The share of time such a spot is taken at this moment."""
        level = typical_occupancy(self.pattern, at) * zone_factor(self.spot.zone, at)
        return min(0.97, max(0.03, level * self.use))

    def next_change(self, at: datetime, rng: random.Random) -> datetime:
        """When the car leaves, or the next one arrives, counting from ``at``."""
        departure_per_h = 1 / self.stay_h
        if self.occupied:
            return at + rng.expovariate(departure_per_h) * _HOUR
        # Chosen so that, held at this hour, the spot is occupied target_occupancy of the time;
        # drawn step by step, so that the morning rush arrives in the morning.
        step = timedelta(hours=_RATE_STEP_H)
        t = at
        for _ in range(_MAX_RATE_STEPS):
            p = self.target_occupancy(t)
            wait_h = rng.expovariate(departure_per_h * p / (1 - p))
            if wait_h <= _RATE_STEP_H:
                return t + wait_h * _HOUR
            t += step
        return t

    def advance(self, to: datetime, rng: random.Random) -> bool:
        """Apply the change due by ``to``, if any; whether the state changed."""
        if self.change_at > to:
            return False
        self.occupied = not self.occupied
        self.change_at = self.next_change(to, rng)
        self.battery = max(1.0, self.battery - 0.002)
        return True

    def reading(self, ts: datetime) -> ParkingPayload:
        """What the spot reports at ``ts``."""
        return ParkingPayload(ts=ts, occupied=self.occupied, battery_pct=round(self.battery, 1))
