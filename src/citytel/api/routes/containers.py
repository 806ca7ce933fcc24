"""Waste containers: the fullest first, one container, its history."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query, Response
from pydantic_core import to_json

from citytel.api.auth import require
from citytel.api.deps import ContainerAnswersDep, ReadPoolDep, require_offset
from citytel.api.schemas import (
    BucketPublic,
    ContainerPage,
    ContainerPublic,
    ContainerReadings,
    ReadingPublic,
)
from citytel.collection import FillCycle, fill_rate_pct_h, reaches_at
from citytel.errors import InvalidQueryError
from citytel.keys import Scope
from citytel.storage import queries
from citytel.storage.queries import BBox

router = APIRouter(
    prefix="/v1/containers", tags=["containers"], dependencies=[require(Scope.CONTAINERS_READ)]
)

_BUCKET = re.compile(r"^(\d{1,9})(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_BUCKETS = 10_000
MAX_BUCKET = timedelta(days=366)
# A bounding box parameter, as every route that takes one spells it (see parse_bbox).
BBoxQuery = Annotated[
    str | None,
    Query(
        description="min_lon,min_lat,max_lon,max_lat; min_lon > max_lon crosses the antimeridian",
        examples=["-7.65,33.55,-7.55,33.62"],
    ),
]
DEFAULT_RANGE = timedelta(hours=24)
# A container's row as asyncpg gives it to the routes, or psycopg to the planning worker.
ContainerRow = asyncpg.Record | Mapping[str, Any]

FromQuery = Annotated[
    datetime | None, Query(alias="from", description="start, inclusive (default: to - 24 h)")
]
ToQuery = Annotated[datetime | None, Query(alias="to", description="end, exclusive (default: now)")]


def fill_state(row: ContainerRow) -> FillCycle:
    """The fill cycle of a container row."""
    return FillCycle(
        ts=row["measured_at"],
        fill_pct=row["fill_pct"],
        started_at=row["cycle_started_at"],
        start_fill_pct=row["cycle_start_fill_pct"],
        last_rate_pct_h=row["last_cycle_rate_pct_h"],
    )


def container_item(row: ContainerRow) -> dict[str, Any]:
    """The public shape of a container row (:class:`ContainerPublic`), as plain values.

    The dispatch list serializes a hundred of these straight to JSON: building and validating
    as many models was most of its time, and every value comes typed from our own columns.
    """
    state = fill_state(row)
    rate = fill_rate_pct_h(state)
    return {
        "id": row["id"],
        "zone": row["zone"],
        "location": {"lat": row["lat"], "lon": row["lon"]},
        "capacity_l": row["capacity_l"],
        "depth_mm": row["depth_mm"],
        "waste_kind": row["waste_kind"],
        "fill_pct": row["fill_pct"],
        "battery_pct": row["battery_pct"],
        "temperature_c": row["temperature_c"],
        "measured_at": row["measured_at"],
        "last_seen": row["last_seen"],
        "fill_rate_pct_per_h": round(rate, 3) if rate is not None else None,
        "predicted_full_at": reaches_at(state, 100.0),
    }


def container_public(row: ContainerRow) -> ContainerPublic:
    """The public shape of a container row."""
    return ContainerPublic.model_validate(container_item(row))


def parse_bbox(raw: str) -> BBox:
    """``min_lon,min_lat,max_lon,max_lat`` as a box, or InvalidQueryError saying what is wrong."""
    parts = raw.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        message = f"bbox must be four numbers min_lon,min_lat,max_lon,max_lat; got {raw!r}"
        raise InvalidQueryError(message)
    box = BBox(*values)
    if not (-180 <= box.min_lon <= 180 and -180 <= box.max_lon <= 180) or (
        box.min_lon == box.max_lon
    ):
        message = (
            "bbox longitudes must be different and within -180 to 180 "
            "(min_lon > max_lon: a box across the antimeridian)"
        )
        raise InvalidQueryError(message)
    if not (-90 <= box.min_lat < box.max_lat <= 90):
        message = "bbox latitudes must satisfy -90 <= min_lat < max_lat <= 90"
        raise InvalidQueryError(message)
    return box


def parse_bucket(raw: str) -> timedelta:
    """``30s``, ``15m``, ``1h``, ``1d`` as a duration, or InvalidQueryError."""
    match = _BUCKET.match(raw.strip())
    step = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match is not None else None
    if step is None or not timedelta(0) < step <= MAX_BUCKET:
        message = (
            "bucket must be a positive whole number of s, m, h or d up to 366d, like 15m or 1h; "
            f"got {raw[:40]!r}"
        )
        raise InvalidQueryError(message)
    return step


def history_range(
    start: datetime | None, end: datetime | None, bucket: str | None
) -> tuple[datetime, datetime, timedelta | None]:
    """A history query's ``[from, to)`` (default: the last 24 h) and bucket."""
    end = require_offset(end, "to") if end is not None else datetime.now(UTC)
    start = require_offset(start, "from") if start is not None else end - DEFAULT_RANGE
    if start >= end:
        message = f"'from' ({start.isoformat()}) must be before 'to' ({end.isoformat()})"
        raise InvalidQueryError(message)
    step = parse_bucket(bucket) if bucket is not None else None
    if step is not None and (end - start) / step > MAX_BUCKETS:
        message = f"{bucket} buckets over this range make more than {MAX_BUCKETS}; widen the bucket"
        raise InvalidQueryError(message)
    return start, end, step


@router.get("", response_model=ContainerPage)
async def list_containers(
    pool: ReadPoolDep,
    answers: ContainerAnswersDep,
    zone: Annotated[str | None, Query(description="only this zone")] = None,
    min_fill_pct: Annotated[
        float | None, Query(ge=0, le=100, description="only containers at least this full")
    ] = None,
    bbox: BBoxQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """Containers, fullest first, filtered by zone, fill level and bounding box."""
    box = parse_bbox(bbox) if bbox is not None else None

    async def page() -> bytes:
        rows, total = await queries.list_containers(
            pool, zone=zone, min_fill_pct=min_fill_pct, bbox=box, limit=limit, offset=offset
        )
        next_offset = offset + limit if offset + limit < total else None
        # Encoded by pydantic-core as the models would be, without building them: FastAPI would
        # validate the page again and then encode it in Python (response_model documents it).
        return to_json(
            {
                "items": [container_item(r) for r in rows],
                "total": total,
                "limit": limit,
                "offset": offset,
                "next_offset": next_offset,
            }
        )

    # Dispatch screens poll the same few questions: one query per question and moment.
    body = await answers.answer((zone, min_fill_pct, box, limit, offset), page)
    return Response(body, media_type="application/json")


@router.get("/{container_id}", response_model=ContainerPublic, responses={404: {}})
async def get_container(pool: ReadPoolDep, container_id: str) -> ContainerPublic:
    """One container: latest fill, battery, last seen, location and zone."""
    return container_public(await queries.get_container(pool, container_id))


@router.get(
    "/{container_id}/readings",
    response_model=ContainerReadings,
    response_model_exclude_none=True,
    response_model_by_alias=True,
    responses={404: {}},
)
async def container_readings(
    pool: ReadPoolDep,
    container_id: str,
    start: FromQuery = None,
    end: ToQuery = None,
    bucket: Annotated[str | None, Query(description="average per bucket, like 15m, 1h, 1d")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="raw readings at most")] = 1000,
) -> ContainerReadings:
    """A container's fill readings over time, raw or averaged per time bucket."""
    start, end, step = history_range(start, end, bucket)
    rows = await queries.container_readings(
        pool, container_id, start=start, end=end, bucket=step, limit=limit
    )
    result = ContainerReadings(container_id=container_id, start=start, end=end, bucket=bucket)
    if step is None:
        result.readings = [ReadingPublic(**dict(r)) for r in rows]
    else:
        result.buckets = [BucketPublic(**dict(r)) for r in rows]
    return result
