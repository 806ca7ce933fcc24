"""How the simulated city behaves: containers filling and being emptied, spots turning over.

Pure models without I/O. Each device keeps its own state and is advanced lazily to the moment
it reports, so a fleet of thousands costs nothing between reports.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

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

# Parking: (mean occupancy, daily swing, peak local hour, mean stay in hours) by character.
_PARKING = {
    "centre": (0.55, 0.30, 14.0, 1.5),
    "residential": (0.62, 0.22, 1.0, 6.0),
    "industrial": (0.45, 0.30, 12.0, 4.0),
}
_CATEGORY_USE = {"standard": 1.0, "disabled": 0.6, "delivery": 0.5, "ev_charging": 0.7}
_CATEGORY_STAY = {"standard": 1.0, "disabled": 1.0, "delivery": 0.2, "ev_charging": 1.3}


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
            battery=rng.uniform(55, 100),
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
    """A spot as a two-state process whose arrival rate follows the time of day."""

    spot: Spot
    occupied: bool
    use: float
    stay_h: float
    battery: float
    change_at: datetime

    @classmethod
    def start(cls, spot: Spot, at: datetime, rng: random.Random) -> SpotModel:
        """A spot at ``at``, occupied with the probability its zone and hour give."""
        *_, stay = _PARKING[_character(spot.zone)]
        model = cls(
            spot=spot,
            occupied=False,
            use=_CATEGORY_USE.get(spot.category, 1.0) * rng.uniform(0.85, 1.1),
            stay_h=stay * _CATEGORY_STAY.get(spot.category, 1.0),
            battery=rng.uniform(60, 100),
            change_at=at,
        )
        model.occupied = rng.random() < model.target_occupancy(at)
        model.change_at = model.next_change(at, rng)
        return model

    def target_occupancy(self, at: datetime) -> float:
        """The share of time such a spot is taken at this hour."""
        mean, swing, peak, _ = _PARKING[_character(self.spot.zone)]
        level = mean + swing * math.cos(_OMEGA * (local_hours(at) - peak))
        return min(0.95, max(0.05, level * self.use))

    def next_change(self, at: datetime, rng: random.Random) -> datetime:
        """When the car leaves, or the next one arrives, counting from ``at``."""
        departure_per_h = 1 / self.stay_h
        if self.occupied:
            rate = departure_per_h
        else:
            # Chosen so that, held at this hour, the spot is occupied target_occupancy of the time.
            p = self.target_occupancy(at)
            rate = departure_per_h * p / (1 - p)
        return at + rng.expovariate(rate) * _HOUR

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
