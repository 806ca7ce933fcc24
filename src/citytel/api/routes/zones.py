"""Zones: the city's districts at a glance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Query

from citytel.api.auth import require
from citytel.api.deps import ReadPoolDep
from citytel.api.routes.containers import FromQuery, ToQuery, history_range
from citytel.api.schemas import (
    FullContainer,
    OccupancyBucket,
    WeekHour,
    ZoneOccupancy,
    ZonePublic,
    ZoneSummary,
    ZoneWeek,
)
from citytel.errors import InvalidQueryError
from citytel.keys import Scope
from citytel.storage import queries

router = APIRouter(
    prefix="/v1/zones", tags=["zones"], dependencies=[require(Scope.CONTAINERS_READ)]
)


@router.get("", response_model=list[ZonePublic])
async def list_zones(pool: ReadPoolDep) -> list[ZonePublic]:
    """Every zone with its number of containers and spots."""
    return [ZonePublic(**dict(r)) for r in await queries.list_zones(pool)]


@router.get("/{zone}", response_model=ZoneSummary, responses={404: {}})
async def zone_summary(
    pool: ReadPoolDep,
    zone: str,
    threshold_pct: Annotated[
        float, Query(ge=0, le=100, description="containers at least this full are listed")
    ] = 80,
) -> ZoneSummary:
    """Containers over a threshold, mean fill, and free and total spots of one zone."""
    summary = await queries.zone_summary(pool, zone, threshold_pct=threshold_pct)
    containers, spots = summary.containers, summary.spots
    return ZoneSummary(
        zone=zone,
        threshold_pct=threshold_pct,
        containers_total=containers["containers_total"],
        containers_reporting=containers["containers_reporting"],
        mean_fill_pct=containers["mean_fill_pct"],
        containers_over_threshold=[
            FullContainer(id=r["id"], fill_pct=r["fill_pct"]) for r in summary.full
        ],
        spots_total=spots["spots_total"],
        spots_free=spots["spots_free"],
        spots_occupied=spots["spots_occupied"],
        spots_unknown=spots["spots_unknown"],
    )


@router.get(
    "/{zone}/occupancy",
    response_model=ZoneOccupancy,
    response_model_by_alias=True,
    responses={404: {}},
)
async def zone_occupancy(
    pool: ReadPoolDep,
    zone: str,
    start: FromQuery = None,
    end: ToQuery = None,
    bucket: Annotated[str, Query(description="time bucket, like 15m, 1h, 1d")] = "1h",
) -> ZoneOccupancy:
    """A zone's parking occupancy per time bucket: occupied ratio, spots reporting, readings."""
    start, end, step = history_range(start, end, bucket)
    assert step is not None  # noqa: S101 - a bucket is always given here
    rows = await queries.zone_occupancy(pool, zone, start=start, end=end, bucket=step)
    return ZoneOccupancy(
        zone=zone,
        start=start,
        end=end,
        bucket=bucket,
        buckets=[OccupancyBucket(**dict(r)) for r in rows],
    )


@router.get(
    "/{zone}/occupancy/week",
    response_model=ZoneWeek,
    response_model_by_alias=True,
    responses={404: {}},
)
async def zone_week(
    pool: ReadPoolDep,
    zone: str,
    weeks: Annotated[int, Query(ge=1, le=52, description="how many past weeks")] = 4,
    tz: Annotated[
        str, Query(description="IANA time zone the hours are in", examples=["Africa/Casablanca"])
    ] = "UTC",
) -> ZoneWeek:
    """A zone's typical week: occupied ratio per hour of the week over the last weeks."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        message = f"tz must be an IANA time zone like Africa/Casablanca or UTC; got {tz!r}"
        raise InvalidQueryError(message) from exc
    # Whole past hours only, so that the hourly aggregate answers.
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(weeks=weeks)
    rows = await queries.zone_week(pool, zone, start=start, end=end, time_zone=tz)
    return ZoneWeek(
        zone=zone,
        weeks=weeks,
        time_zone=tz,
        start=start,
        end=end,
        hours=[WeekHour(**dict(r)) for r in rows],
    )
