"""Zones: the city's districts at a glance."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from fastapi import APIRouter, Query

from citytel.api.auth import require
from citytel.api.deps import ReadPoolDep
from citytel.api.routes.containers import FromQuery, ToQuery, history_range
from citytel.api.schemas import (
    ForecastPointPublic,
    FullContainer,
    OccupancyBucket,
    ParkingForecast,
    WasteDay,
    WasteKpis,
    WeekHour,
    ZoneOccupancy,
    ZonePublic,
    ZoneSummary,
    ZoneWeek,
)
from citytel.collection import EMPTIED_DROP_PCT
from citytel.errors import InvalidQueryError
from citytel.forecast import (
    DECAY_H,
    STATE_MAX_AGE,
    ForecastPoint,
    TypicalWeek,
    forecast_free_spots,
)
from citytel.keys import Scope
from citytel.storage import queries

router = APIRouter(
    prefix="/v1/zones", tags=["zones"], dependencies=[require(Scope.CONTAINERS_READ)]
)
# A zone's parking forecast is for drivers' apps as much as for operators: parking:read.
parking_router = APIRouter(
    prefix="/v1/zones", tags=["zones"], dependencies=[require(Scope.PARKING_READ)]
)

# How far before a range the reading before a device's first one is looked up (arrivals).
ARRIVALS_LOOK_BACK = timedelta(days=1)
# Overflow time: a reading at 100 % holds until the next one, but no longer than this (a sensor
# gone silent is not a container overflowing for ever).
OVERFLOW_MAX_HOLD = timedelta(hours=24)
MAX_KPI_DAYS = 366
TimeZoneQuery = Annotated[
    str, Query(description="IANA time zone the hours are in", examples=["Africa/Casablanca"])
]


def check_time_zone(tz: str) -> str:
    """``tz`` if it names an IANA time zone, else InvalidQueryError."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        message = f"tz must be an IANA time zone like Africa/Casablanca or UTC; got {tz!r}"
        raise InvalidQueryError(message) from exc
    return tz


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
    """A zone's parking per time bucket: occupied ratio, spots reporting, arrivals, turnover."""
    start, end, step = history_range(start, end, bucket)
    assert step is not None  # noqa: S101 - a bucket is always given here
    rows = await queries.zone_occupancy(pool, zone, start=start, end=end, bucket=step)
    arrivals, spots = await queries.zone_arrivals(
        pool, zone, start=start, end=end, bucket=step, look_back=ARRIVALS_LOOK_BACK
    )
    return ZoneOccupancy(
        zone=zone,
        start=start,
        end=end,
        bucket=bucket,
        buckets=[
            OccupancyBucket(
                **dict(r),
                arrivals=arrivals.get(r["ts"], 0),
                turnover=arrivals.get(r["ts"], 0) / spots if spots else 0.0,
            )
            for r in rows
        ],
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
    tz: TimeZoneQuery = "UTC",
) -> ZoneWeek:
    """A zone's typical week: occupied ratio per hour of the week over the last weeks."""
    check_time_zone(tz)
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


@router.get(
    "/{zone}/waste/kpis",
    response_model=WasteKpis,
    response_model_by_alias=True,
    responses={404: {}},
)
async def zone_waste_kpis(
    pool: ReadPoolDep,
    zone: str,
    start: Annotated[
        date | None, Query(alias="from", description="first day, inclusive (default: to - 7)")
    ] = None,
    end: Annotated[
        date | None, Query(alias="to", description="last day, exclusive (default: tomorrow)")
    ] = None,
    tz: TimeZoneQuery = "UTC",
) -> WasteKpis:
    """A zone's waste KPIs per day: collections, overflow hours, mean fill at collection."""
    zone_info = ZoneInfo(check_time_zone(tz))
    if any(d is not None and not 2 <= d.year <= 9998 for d in (start, end)):
        message = "'from' and 'to' must be days between the years 2 and 9998"
        raise InvalidQueryError(message)
    end = end if end is not None else datetime.now(zone_info).date() + timedelta(days=1)
    start = start if start is not None else end - timedelta(days=7)
    if not start < end:
        message = f"'from' ({start}) must be before 'to' ({end})"
        raise InvalidQueryError(message)
    if (end - start).days > MAX_KPI_DAYS:
        message = f"at most {MAX_KPI_DAYS} days at a time; got {(end - start).days}"
        raise InvalidQueryError(message)
    rows = await queries.zone_waste_kpis(
        pool,
        zone,
        start=datetime.combine(start, datetime.min.time(), zone_info),
        end=datetime.combine(end, datetime.min.time(), zone_info),
        time_zone=tz,
        emptied_drop_pct=EMPTIED_DROP_PCT,
        max_hold=OVERFLOW_MAX_HOLD,
    )
    return WasteKpis(
        zone=zone, start=start, end=end, time_zone=tz, days=[WasteDay(**dict(r)) for r in rows]
    )


async def parking_forecast(
    pool: asyncpg.Pool, zone: str, *, at: datetime, hours: int, weeks: int, time_zone: str
) -> tuple[queries.ParkingAt, list[ForecastPoint]]:
    """A zone's state at ``at`` and its free spots expected each hour ahead, up to ``hours``:
    the API's forecast, which the backtest (bench/forecast.py) runs at past moments."""
    state = await queries.zone_parking_at(
        pool, zone, at=at, max_age=STATE_MAX_AGE, weeks=weeks, time_zone=time_zone
    )
    points = forecast_free_spots(
        at=at,
        spots_known=state.spots_known,
        spots_free=state.spots_free,
        week=TypicalWeek.from_rows([dict(r) for r in state.week], time_zone),
        horizons=[timedelta(hours=h) for h in range(1, hours + 1)],
    )
    return state, points


@parking_router.get("/{zone}/parking/forecast", response_model=ParkingForecast, responses={404: {}})
async def zone_parking_forecast(
    pool: ReadPoolDep,
    zone: str,
    hours: Annotated[int, Query(ge=1, le=48, description="how many hours ahead")] = 6,
    weeks: Annotated[
        int, Query(ge=1, le=52, description="past weeks the typical week is taken over")
    ] = 4,
    tz: TimeZoneQuery = "UTC",
) -> ParkingForecast:
    """Free spots a zone should have each hour ahead: its typical week, corrected by today."""
    check_time_zone(tz)
    now = datetime.now(UTC)
    state, points = await parking_forecast(
        pool, zone, at=now, hours=hours, weeks=weeks, time_zone=tz
    )
    return ParkingForecast(
        zone=zone,
        as_of=now,
        weeks=weeks,
        time_zone=tz,
        decay_hours=DECAY_H,
        spots_total=state.spots_total,
        spots_known=state.spots_known,
        spots_free=state.spots_free,
        points=[ForecastPointPublic(**asdict(p)) for p in points],
    )
