"""Distances on the sphere PostGIS measures on, so that Python and SQL answers agree."""

from __future__ import annotations

import math

# PostGIS's sphere for ST_Distance(geography, geography, false): the mean radius (2a + b) / 3 of
# the WGS 84 ellipsoid.
EARTH_RADIUS_M = 6_371_008.771415059


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points (haversine)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlam = math.radians(lon2 - lon1) / 2
    h = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlam) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
