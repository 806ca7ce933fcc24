"""Parking: free spots near a point, one spot."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query

from citytel.api.deps import PoolDep, SettingsDep
from citytel.api.schemas import FreeSpot, FreeSpots, Location, SpotPublic
from citytel.errors import InvalidQueryError
from citytel.storage import queries

router = APIRouter(prefix="/v1/parking", tags=["parking"])


def _status(row: asyncpg.Record) -> str:
    if row["occupied"] is None:
        return "unknown"
    return "occupied" if row["occupied"] else "free"


def spot_public(row: asyncpg.Record) -> SpotPublic:
    """The public shape of a spot row."""
    return SpotPublic(
        id=row["id"],
        zone=row["zone"],
        category=row["category"],
        location=Location(lat=row["lat"], lon=row["lon"]),
        status=_status(row),  # type: ignore[arg-type]
        status_since=row["status_since"],
        battery_pct=row["battery_pct"],
        last_seen=row["last_seen"],
    )


@router.get("/free", response_model=FreeSpots)
async def free_spots(
    pool: PoolDep,
    settings: SettingsDep,
    lat: Annotated[float, Query(ge=-90, le=90, description="latitude, WGS 84")],
    lon: Annotated[float, Query(ge=-180, le=180, description="longitude, WGS 84")],
    radius_m: Annotated[float, Query(gt=0, description="search radius in metres")] = 500,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    category: Annotated[str | None, Query(description="only this category, e.g. disabled")] = None,
) -> FreeSpots:
    """The nearest free spots to a point, nearest first, with their distance in metres."""
    if radius_m > settings.api_max_radius_m:
        message = (
            f"radius_m is {radius_m:g}; the maximum is {settings.api_max_radius_m:g} m. "
            "Search a smaller area around the user"
        )
        raise InvalidQueryError(message)
    rows = await queries.free_spots_near(
        pool, lat=lat, lon=lon, radius_m=radius_m, limit=limit, category=category
    )
    # Built once, straight from the rows: this is the hottest route of the API.
    items = [
        FreeSpot(
            id=r["id"],
            zone=r["zone"],
            category=r["category"],
            location=Location(lat=r["lat"], lon=r["lon"]),
            status="free",
            status_since=r["status_since"],
            battery_pct=r["battery_pct"],
            last_seen=r["last_seen"],
            distance_m=round(r["distance_m"], 1),
        )
        for r in rows
    ]
    return FreeSpots(items=items, lat=lat, lon=lon, radius_m=radius_m)


@router.get("/spots/{spot_id}", response_model=SpotPublic, responses={404: {}})
async def get_spot(pool: PoolDep, spot_id: str) -> SpotPublic:
    """One parking spot and its status: free, occupied, or unknown before any reading."""
    return spot_public(await queries.get_spot(pool, spot_id))
