"""Sensor health for operators: which devices need a technician, and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Query

from citytel.api.auth import require
from citytel.api.deps import ReadPoolDep
from citytel.api.schemas import DeviceAttention, DeviceAttentionPage, DeviceProblem, Location
from citytel.keys import Scope
from citytel.storage import queries

router = APIRouter(prefix="/v1/devices", tags=["devices"], dependencies=[require(Scope.OPS)])

ProblemKind = Literal["fault", "silent", "never_heard", "low_battery"]

# The most pressing first: a sensor that reports nonsense, then one that says nothing, then one
# that will soon stop.
_RANK = {"fault": 0, "never_heard": 1, "silent": 1, "low_battery": 2}
_FAULTS = {
    "tilted": "the level sensor is tilted: its distances are not fill levels",
    "no_echo": "the level sensor hears no echo (blocked, or mounted wrong)",
    "distance_beyond_depth": "the level sensor measures beyond the container's depth",
}


def _hours(delta: timedelta) -> str:
    hours = delta / timedelta(hours=1)
    return f"{hours:.0f} h" if hours < 72 else f"{hours / 24:.0f} days"


@dataclass(frozen=True, slots=True)
class Problem:
    """A reason to attend a device, before it becomes a response model."""

    problem: ProblemKind
    detail: str
    since: datetime | None


def problems_of(
    row: asyncpg.Record, *, now: datetime, silent_since: datetime, battery_below_pct: float
) -> list[Problem]:
    """Why the device in ``row`` is on the list, the most pressing first."""
    found: list[Problem] = []
    if row["fault_at"] is not None:
        detail = _FAULTS.get(row["fault"], row["fault"])
        if row["fault_detail"]:
            detail += f" ({row['fault_detail']})"
        found.append(Problem(problem="fault", detail=detail, since=row["fault_at"]))
    last_seen = row["last_seen"]
    if last_seen is None and row["created_at"] < silent_since:
        detail = f"never heard from since it was registered {_hours(now - row['created_at'])} ago"
        found.append(Problem(problem="never_heard", detail=detail, since=row["created_at"]))
    elif last_seen is not None and last_seen < silent_since:
        detail = f"nothing heard for {_hours(now - last_seen)}"
        found.append(Problem(problem="silent", detail=detail, since=last_seen))
    battery = row["battery_pct"]
    if battery is not None and battery < battery_below_pct:
        detail = f"battery at {battery:g} %, under {battery_below_pct:g} %"
        found.append(Problem(problem="low_battery", detail=detail, since=None))
    return found


def _urgency(problems: list[Problem], row: asyncpg.Record) -> tuple[int, datetime, str, str]:
    worst = min(problems, key=lambda p: _RANK[p.problem])
    since = worst.since or datetime.max.replace(tzinfo=UTC)
    return _RANK[worst.problem], since, row["device_kind"], row["id"]


@router.get("/attention", response_model=DeviceAttentionPage)
async def devices_needing_attention(
    pool: ReadPoolDep,
    kind: Annotated[Literal["waste", "parking"] | None, Query(description="only this kind")] = None,
    zone: Annotated[str | None, Query(description="only this zone")] = None,
    silent_after_h: Annotated[
        float, Query(gt=0, le=24 * 90, description="silent: nothing heard for this many hours")
    ] = 24,
    battery_below_pct: Annotated[
        float, Query(ge=0, le=100, description="low battery: under this level")
    ] = 20,
    faults_within_h: Annotated[
        float, Query(gt=0, le=24 * 90, description="faults reported in the last this many hours")
    ] = 24,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> DeviceAttentionPage:
    """Devices that are silent, low on battery or reporting a fault, the most pressing first."""
    now = datetime.now(UTC)
    silent_since = now - timedelta(hours=silent_after_h)
    rows = await queries.devices_needing_attention(
        pool,
        kind=kind,
        zone=zone,
        faults_since=now - timedelta(hours=faults_within_h),
        silent_since=silent_since,
        battery_below_pct=battery_below_pct,
    )
    # Problems are worked out for every match (the order needs them), response models only for
    # the page: a fleet whose spots were registered before their sensors can match by the ten
    # thousand.
    ranked = []
    for row in rows:
        problems = problems_of(
            row, now=now, silent_since=silent_since, battery_below_pct=battery_below_pct
        )
        # The query and problems_of() state the same conditions; a row without a problem would
        # be a disagreement between the two, and is left out rather than shown without a reason.
        if problems:
            ranked.append((_urgency(problems, row), row, problems))
    ranked.sort(key=lambda item: item[0])
    items = [
        DeviceAttention(
            device_kind=row["device_kind"],
            id=row["id"],
            zone=row["zone"],
            location=Location(lat=row["lat"], lon=row["lon"]),
            last_seen=row["last_seen"],
            battery_pct=row["battery_pct"],
            problems=[
                DeviceProblem(problem=p.problem, detail=p.detail, since=p.since) for p in problems
            ],
        )
        for _, row, problems in ranked[offset : offset + limit]
    ]
    next_offset = offset + limit if offset + limit < len(ranked) else None
    return DeviceAttentionPage(
        items=items, total=len(ranked), limit=limit, offset=offset, next_offset=next_offset
    )
