"""Parking: free spots near a point, one spot."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query, Response

from citytel.api.auth import require
from citytel.api.deps import LiveSpotsDep, PoolDep, SettingsDep
from citytel.api.schemas import FreeSpots, Location, SpotPublic
from citytel.api.spot_index import rfc3339
from citytel.errors import InvalidQueryError
from citytel.keys import Scope
from citytel.storage import queries

router = APIRouter(
    prefix="/v1/parking", tags=["parking"], dependencies=[require(Scope.PARKING_READ)]
)


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
    pool: PoolDep,
    settings: SettingsDep,
    live: LiveSpotsDep,
    lat: Annotated[float, Query(ge=-90, le=90, description="latitude, WGS 84")],
    lon: Annotated[float, Query(ge=-180, le=180, description="longitude, WGS 84")],
    radius_m: Annotated[float, Query(gt=0, description="search radius in metres")] = 500,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    category: Annotated[str | None, Query(description="only this category, e.g. disabled")] = None,
) -> Response:
    """The nearest free spots to a point, nearest first, with their distance in metres."""
    if radius_m > settings.api_max_radius_m:
        message = (
            f"radius_m is {radius_m:g}; the maximum is {settings.api_max_radius_m:g} m. "
            "Search a smaller area around the user"
        )
        raise InvalidQueryError(message)
    view_now = live.fresh() if live is not None else None
    if view_now is not None:
        index, as_of = view_now
        items = index.nearest_json(lat, lon, radius_m=radius_m, limit=limit, category=category)
        view = "live"
    else:
        # No live view, or one too old to trust: the database answers (or the 503 says why).
        items, as_of = await queries.free_spots_near_json(
            pool, lat=lat, lon=lon, radius_m=radius_m, limit=limit, category=category
        )
        view = "database"
    # The items are JSON already (the index's, or FREE_SPOTS_NEAR_JSON's); only the envelope
    # is built here.
    body = (
        f'{{"items":{items},"lat":{lat!r},"lon":{lon!r},"radius_m":{radius_m!r},'
        f'"as_of":"{rfc3339(as_of)}"}}'
    )
    return Response(body, media_type="application/json", headers={"X-Citytel-View": view})


@router.get("/spots/{spot_id}", response_model=SpotPublic, responses={404: {}})
async def get_spot(pool: PoolDep, spot_id: str) -> SpotPublic:
    """One parking spot and its status: free, occupied, or unknown before any reading."""
    return spot_public(await queries.get_spot(pool, spot_id))
