"""An in-memory index of free parking spots: the nearest ones to a point, without the database.

"Where is a free spot near me, right now?" is the read the mobile apps make all day. Each API
process keeps every spot's latest state here, refreshed from the database by
:mod:`citytel.api.live_spots`, and answers from memory: the spots are laid on a grid of cells
and searched ring by ring outwards from the query point, stopping as soon as no unvisited cell
can hold anything nearer than what was found.

Distances are great-circle distances on the sphere PostGIS measures on with
``ST_Distance(geography, geography, false)`` (the WGS 84 mean radius), so the answer is the one
the SQL query gives. This module does no I/O.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from citytel.geo import EARTH_RADIUS_M

# About 110 m north-south: in a dense district the nearest twenty lie within two rings.
CELL_DEG = 0.001
# Keeps the longitude span finite at a pole (where it is clamped to the whole circle anyway).
_MIN_COS_LAT = 1e-12
# Past this many cells of the box per occupied cell, reading the occupied cells beats the rings.
_SPARSE = 16
# Rounding of the ring bound: a spot exactly on it is still visited.
_BOUND_SLACK = 0.999


def rfc3339(value: datetime) -> str:
    """A time as the API writes it: UTC, ``Z``, microseconds only when there are some."""
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


@dataclass(frozen=True, slots=True)
class SpotState:
    """A spot of the registry with its latest state, as the database has it."""

    id: str
    zone: str
    category: str
    lat: float
    lon: float
    occupied: bool | None
    status_since: datetime | None
    battery_pct: float | None
    last_seen: datetime | None

    @property
    def free(self) -> bool:
        """Known to be free: a reading said so. A spot never heard from is not offered."""
        return self.occupied is False


class _Indexed:
    """A free spot on the grid, with what the distance needs precomputed."""

    __slots__ = ("_head", "cell", "cos_phi", "lam", "phi", "spot")

    def __init__(self, spot: SpotState) -> None:
        self.spot = spot
        self.cell = _cell(spot.lat, spot.lon)
        self.phi = math.radians(spot.lat)
        self.lam = math.radians(spot.lon)
        self.cos_phi = math.cos(self.phi)
        self._head: str | None = None

    @property
    def head(self) -> str:
        """The item's JSON up to its distance: built on first use, once per change."""
        if self._head is None:
            self._head = _head(self.spot)
        return self._head


def _head(spot: SpotState) -> str:
    since = rfc3339(spot.status_since) if spot.status_since else None
    seen = rfc3339(spot.last_seen) if spot.last_seen else None
    fields = {
        "id": spot.id,
        "zone": spot.zone,
        "category": spot.category,
        "location": {"lat": spot.lat, "lon": spot.lon},
        "status": "free",
        "status_since": since,
        "battery_pct": spot.battery_pct,
        "last_seen": seen,
    }
    return json.dumps(fields, separators=(",", ":"))[:-1]


def _cell(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG)


class FreeSpotIndex:
    """The free spots on a grid, and the nearest-first search over them."""

    def __init__(self) -> None:
        self._free: dict[str, _Indexed] = {}
        self._cells: dict[tuple[int, int], dict[str, _Indexed]] = {}
        self._categories: Counter[str] = Counter()
        # The rows and columns that have ever held a spot: a search box is cut to them, so that a
        # search far from every spot costs nothing. Never shrinks, which only makes it generous.
        self._extent: _Box | None = None

    def __len__(self) -> int:
        return len(self._free)

    def apply(self, spots: Iterable[SpotState]) -> None:
        """Take each spot's current state: a free one is (re)placed, any other is removed."""
        for spot in spots:
            self.remove(spot.id)
            if spot.free:
                self._put(spot)

    def remove(self, spot_id: str) -> None:
        """Forget a spot (occupied, unknown, or gone from the registry)."""
        entry = self._free.pop(spot_id, None)
        if entry is None:
            return
        cell = self._cells[entry.cell]
        del cell[spot_id]
        if not cell:
            del self._cells[entry.cell]
        self._categories[entry.spot.category] -= 1

    def _put(self, spot: SpotState) -> None:
        entry = _Indexed(spot)
        self._free[spot.id] = entry
        self._cells.setdefault(entry.cell, {})[spot.id] = entry
        self._categories[spot.category] += 1
        y, x = entry.cell
        e = self._extent
        if e is None or not e.holds(y, x):
            self._extent = (
                _Box(y, y, x, x)
                if e is None
                else _Box(min(e.y0, y), max(e.y1, y), min(e.x0, x), max(e.x1, x))
            )

    def nearest(
        self,
        lat: float,
        lon: float,
        *,
        radius_m: float,
        limit: int,
        category: str | None = None,
    ) -> list[tuple[float, SpotState]]:
        """Free spots in ``radius_m`` of a point, nearest first (ties by id), ``limit`` at most."""
        return [(d, e.spot) for d, e in self._search(lat, lon, radius_m, limit, category)]

    def nearest_json(
        self,
        lat: float,
        lon: float,
        *,
        radius_m: float,
        limit: int,
        category: str | None = None,
    ) -> str:
        """:meth:`nearest` as the JSON array of the API's ``FreeSpot`` items."""
        found = self._search(lat, lon, radius_m, limit, category)
        return "[" + ",".join(f'{e.head},"distance_m":{round(d, 1)!r}}}' for d, e in found) + "]"

    def _search(
        self, lat: float, lon: float, radius_m: float, limit: int, category: str | None
    ) -> list[tuple[float, _Indexed]]:
        extent = self._extent
        if extent is None or (category is not None and self._categories[category] <= 0):
            return []
        # The search box, as in the SQL query: latitude rows are R * dphi apart everywhere;
        # longitude columns are narrowest at the box's edge nearest a pole.
        span_lat = math.degrees(radius_m / EARTH_RADIUS_M)
        cos_lat = max(math.cos(math.radians(min(90.0, abs(lat) + span_lat))), _MIN_COS_LAT)
        # A circle over a pole spans every longitude; one across the antimeridian is cut there,
        # as in the SQL query.
        span_lon = min(360.0, math.degrees(radius_m / (EARTH_RADIUS_M * cos_lat)))
        box = _Box(
            y0=math.floor((lat - span_lat) / CELL_DEG),
            y1=math.floor((lat + span_lat) / CELL_DEG),
            x0=math.floor((lon - span_lon) / CELL_DEG),
            x1=math.floor((lon + span_lon) / CELL_DEG),
        ).cut_to(extent)
        if box is None:
            return []
        cy, cx = _cell(lat, lon)
        # (distance, id, entry): ids are unique, so entries are never compared.
        found: list[tuple[float, str, _Indexed]] = []

        phi0, lam0 = math.radians(lat), math.radians(lon)
        cos_phi0 = math.cos(phi0)
        # Haversine, inlined with each spot's precomputed terms: this loop is the hot path.
        sin, asin, sqrt, diameter = math.sin, math.asin, math.sqrt, 2 * EARTH_RADIUS_M

        def visit(entries: Iterable[_Indexed]) -> None:
            for entry in entries:
                if category is not None and entry.spot.category != category:
                    continue
                h = (
                    sin((entry.phi - phi0) / 2) ** 2
                    + cos_phi0 * entry.cos_phi * sin((entry.lam - lam0) / 2) ** 2
                )
                d = diameter * asin(min(1.0, sqrt(h)))
                if d <= radius_m:
                    found.append((d, entry.spot.id, entry))

        if box.cells > _SPARSE * len(self._cells):
            # A wide box over few occupied cells (near a pole, say): reading them all is cheaper.
            for (y, x), entries in self._cells.items():
                if box.holds(y, x):
                    visit(entries.values())
        else:
            # A cell k rings out lies beyond k - 1 whole cells: no nearer than that many cell
            # widths (the narrower of the two, on the great circle).
            cell_m = EARTH_RADIUS_M * math.radians(CELL_DEG) * cos_lat
            for ring, cells in _rings(cy, cx, box):
                if len(found) >= limit:
                    found = heapq.nsmallest(limit, found)
                    if found[-1][0] < _BOUND_SLACK * (ring - 1) * cell_m:
                        break
                for cell in cells:
                    members = self._cells.get(cell)
                    if members:
                        visit(members.values())
        return [(d, entry) for d, _, entry in heapq.nsmallest(limit, found)]


@dataclass(frozen=True, slots=True)
class _Box:
    """A rectangle of grid cells, bounds included."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def cells(self) -> int:
        return (self.y1 - self.y0 + 1) * (self.x1 - self.x0 + 1)

    def holds(self, y: int, x: int) -> bool:
        return self.y0 <= y <= self.y1 and self.x0 <= x <= self.x1

    def cut_to(self, other: _Box) -> _Box | None:
        """The part of this box inside ``other``; None when they do not meet."""
        y0, y1 = max(self.y0, other.y0), min(self.y1, other.y1)
        x0, x1 = max(self.x0, other.x0), min(self.x1, other.x1)
        return _Box(y0, y1, x0, x1) if y0 <= y1 and x0 <= x1 else None


def _rings(cy: int, cx: int, box: _Box) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """The cells of the box ring by ring outwards from (cy, cx), which may lie outside it:
    (ring number, cells), from the first ring that meets the box."""
    first = max(0, box.y0 - cy, cy - box.y1, box.x0 - cx, cx - box.x1)
    last = max(cy - box.y0, box.y1 - cy, cx - box.x0, box.x1 - cx)
    for k in range(first, last + 1):
        cells: list[tuple[int, int]] = []
        for y in range(max(cy - k, box.y0), min(cy + k, box.y1) + 1):
            if abs(y - cy) == k:
                xs: Iterable[int] = range(max(cx - k, box.x0), min(cx + k, box.x1) + 1)
            else:
                xs = [x for x in (cx - k, cx + k) if box.x0 <= x <= box.x1]
            cells.extend((y, x) for x in xs)
        yield k, cells
