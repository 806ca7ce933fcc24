"""Parking: free spots near a point, one spot."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query, Response

from citytel.api.auth import require
from citytel.api.deps import LiveSpotsDep, ReadPoolDep, SettingsDep
from citytel.api.live_spots import LiveSpots
from citytel.api.routes.containers import BBoxQuery, parse_bbox
from citytel.api.schemas import FreeSpots, Location, SpotPage, SpotPublic
from citytel.api.spot_index import rfc3339
from citytel.config import Settings
from citytel.errors import InvalidQueryError
from citytel.keys import Scope
from citytel.storage import queries

router = APIRouter(
    prefix="/v1/parking", tags=["parking"], dependencies=[require(Scope.PARKING_READ)]
)

# The free-spot search's parameters, shared with its stream (routes/events.py).
Lat = Annotated[float, Query(ge=-90, le=90, description="latitude, WGS 84")]
Lon = Annotated[float, Query(ge=-180, le=180, description="longitude, WGS 84")]
RadiusM = Annotated[float, Query(gt=0, description="search radius in metres")]
Category = Annotated[str | None, Query(description="only this category, e.g. disabled")]


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


def check_radius(settings: Settings, radius_m: float) -> None:
    """Refuse a search radius over ``CITYTEL_API_MAX_RADIUS_M``."""
    if radius_m > settings.api_max_radius_m:
        message = (
            f"radius_m is {radius_m:g}; the maximum is {settings.api_max_radius_m:g} m. "
            "Search a smaller area around the user"
        )
        raise InvalidQueryError(message)


async def nearest_free(
    pool: asyncpg.Pool,
    live: LiveSpots | None,
    *,
    lat: float,
    lon: float,
    radius_m: float,
    limit: int,
    category: str | None,
) -> tuple[str, datetime, str]:
    """The free-spot items as a JSON array, as of when, and which view answered."""
    view_now = live.fresh() if live is not None else None
    if view_now is not None:
        index, as_of = view_now
        items = index.nearest_json(lat, lon, radius_m=radius_m, limit=limit, category=category)
        return items, as_of, "live"
    # No live view, or one too old to trust: the database answers (or the 503 says why).
    items, as_of = await queries.free_spots_near_json(
        pool, lat=lat, lon=lon, radius_m=radius_m, limit=limit, category=category
    )
    return items, as_of, "database"


def free_spots_json(items: str, *, lat: float, lon: float, radius_m: float, as_of: datetime) -> str:
    """The ``FreeSpots`` envelope around items that are JSON already."""
    return (
        f'{{"items":{items},"lat":{lat!r},"lon":{lon!r},"radius_m":{radius_m!r},'
        f'"as_of":"{rfc3339(as_of)}"}}'
    )


@router.get(
    "/free",
    response_model=FreeSpots,  # the model documents; the route serialises
    responses={
        200: {
            "headers": {
                "X-Citytel-View": {
                    "description": "live: answered from the API's in-memory view; "
                    "database: by the database (no view, or one too old)",
                    "schema": {"type": "string", "enum": ["live", "database"]},
                }
            }
        }
    },
)
async def free_spots(
    pool: ReadPoolDep,
    settings: SettingsDep,
    live: LiveSpotsDep,
    lat: Lat,
    lon: Lon,
    radius_m: RadiusM = 500,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    category: Category = None,
) -> Response:
    """The nearest free spots to a point, nearest first, with their distance in metres."""
    check_radius(settings, radius_m)
    items, as_of, view = await nearest_free(
        pool, live, lat=lat, lon=lon, radius_m=radius_m, limit=limit, category=category
    )
    # The items are JSON already (the index's, or FREE_SPOTS_NEAR_JSON's); only the envelope
    # is built here.
    body = free_spots_json(items, lat=lat, lon=lon, radius_m=radius_m, as_of=as_of)
    return Response(body, media_type="application/json", headers={"X-Citytel-View": view})


@router.get("/spots", response_model=SpotPage)
async def list_spots(
    pool: ReadPoolDep,
    zone: Annotated[str | None, Query(description="only this zone")] = None,
    bbox: BBoxQuery = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> SpotPage:
    """Parking spots with their status, by id, filtered by zone and bounding box."""
    box = parse_bbox(bbox) if bbox is not None else None
    rows, total = await queries.list_spots(pool, zone=zone, bbox=box, limit=limit, offset=offset)
    next_offset = offset + limit if offset + limit < total else None
    return SpotPage(
        items=[spot_public(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=next_offset,
    )


@router.get("/spots/{spot_id}", response_model=SpotPublic, responses={404: {}})
async def get_spot(pool: ReadPoolDep, spot_id: str) -> SpotPublic:
    """One parking spot and its status: free, occupied, or unknown before any reading."""
    return spot_public(await queries.get_spot(pool, spot_id))
