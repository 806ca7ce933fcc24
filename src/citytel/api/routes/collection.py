"""Sanitation dispatch: which containers are due, and in what order to empty them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from citytel.api.answers import AnswerCache
from citytel.api.auth import require
from citytel.api.deps import ReadPoolDep
from citytel.api.planning import PlanningGate
from citytel.api.routes.containers import BBoxQuery, container_public, fill_state, parse_bbox
from citytel.api.schemas import CollectionRound, CollectionStop, Location, Problem
from citytel.collection import Round, Stop, due_first, plan_round, reaches_at
from citytel.errors import InvalidQueryError
from citytel.keys import Scope
from citytel.storage import queries
from citytel.storage.queries import Candidates

router = APIRouter(
    prefix="/v1/collection", tags=["collection"], dependencies=[require(Scope.CONTAINERS_READ)]
)


@router.get(
    "/round",
    response_model=CollectionRound,
    responses={
        429: {
            "model": Problem,
            "description": "rounds are being planned at capacity: retry after Retry-After seconds",
        }
    },
)
async def collection_round(
    request: Request,
    pool: ReadPoolDep,
    zone: Annotated[str | None, Query(description="only this zone")] = None,
    bbox: BBoxQuery = None,
    threshold_pct: Annotated[
        float, Query(gt=0, le=100, description="a container is due once this full")
    ] = 80,
    within_h: Annotated[
        float,
        Query(ge=0, le=168, description="also those predicted to be due within this many hours"),
    ] = 0,
    start_lat: Annotated[
        float | None, Query(ge=-90, le=90, description="where the round starts (a depot)")
    ] = None,
    start_lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    max_stops: Annotated[int, Query(ge=1, le=200, description="the most urgent ones first")] = 100,
) -> CollectionRound:
    """The containers due for collection now or within ``within_h`` hours, in a short order."""
    if (start_lat is None) != (start_lon is None):
        message = "give both start_lat and start_lon, or neither (the round then starts at the "
        message += "most urgent container)"
        raise InvalidQueryError(message)
    box = parse_bbox(bbox) if bbox is not None else None
    start = (start_lat, start_lon) if start_lat is not None and start_lon is not None else None
    gate: PlanningGate[CollectionRound] = request.app.state.planning
    candidates: AnswerCache[Candidates] = request.app.state.round_candidates
    key = (zone, box, threshold_pct, within_h, start, max_stops)

    async def fleet_state() -> Candidates:
        return await candidates.answer(
            (zone, box), lambda: queries.collection_candidates(pool, zone=zone, bbox=box)
        )

    return await gate.plan(
        key, lambda: _plan(gate, fleet_state, zone, threshold_pct, within_h, start, max_stops)
    )


async def _plan(
    gate: PlanningGate[CollectionRound],
    fleet_state: Callable[[], Awaitable[Candidates]],
    zone: str | None,
    threshold_pct: float,
    within_h: float,
    start: tuple[float, float] | None,
    max_stops: int,
) -> CollectionRound:
    rows, now = await fleet_state()
    horizon = now + timedelta(hours=within_h)

    def select() -> tuple[list[tuple[Stop, datetime]], int]:
        due = []
        for row in rows:
            due_at = reaches_at(fill_state(row), threshold_pct)
            if due_at is not None and due_at <= horizon:
                due.append((Stop(row["id"], row["lat"], row["lon"]), due_at))
        return due_first(due, max_stops)

    # Sorting out a city's containers takes tens of milliseconds: in a thread. Ordering up to
    # 200 stops takes a few tenths of a second of CPU: in a worker process (api/planning.py).
    selected, left_out = await asyncio.to_thread(select)
    planned: Round = await gate.in_worker(plan_round, start, [stop for stop, _ in selected])
    due_at_of = {stop.id: due_at for stop, due_at in selected}
    by_id = {row["id"]: row for row in rows}
    stops, travelled = [], 0.0
    for order, (stop, leg) in enumerate(zip(planned.stops, planned.legs_m, strict=True), 1):
        travelled += leg
        stops.append(
            CollectionStop(
                order=order,
                container=container_public(by_id[stop.id]),
                due_at=due_at_of[stop.id],
                leg_m=round(leg, 1),
                cumulative_m=round(travelled, 1),
            )
        )
    return CollectionRound(
        generated_at=now,
        zone=zone,
        threshold_pct=threshold_pct,
        within_h=within_h,
        start=Location(lat=start[0], lon=start[1]) if start is not None else None,
        stops=stops,
        length_m=round(planned.length_m, 1),
        left_out=left_out,
    )
