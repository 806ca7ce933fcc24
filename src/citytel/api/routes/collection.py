"""Sanitation dispatch: which containers are due, and in what order to empty them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from citytel.api.auth import require
from citytel.api.planning import PlanningGate
from citytel.api.round_planner import FleetUnreadableError, RoundQuestion, plan_collection_round
from citytel.api.routes.containers import BBoxQuery, parse_bbox
from citytel.api.schemas import CollectionRound, Problem
from citytel.config import Settings
from citytel.errors import InvalidQueryError, TransientStorageError
from citytel.keys import Scope
from citytel.storage.replica import ReadReplica

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
) -> Response:
    """The containers due for collection now or within ``within_h`` hours, in a short order."""
    if (start_lat is None) != (start_lon is None):
        message = "give both start_lat and start_lon, or neither (the round then starts at the "
        message += "most urgent container)"
        raise InvalidQueryError(message)
    box = parse_bbox(bbox) if bbox is not None else None
    start = (start_lat, start_lon) if start_lat is not None and start_lon is not None else None
    gate: PlanningGate[bytes] = request.app.state.planning
    replica: ReadReplica = request.app.state.reads
    settings: Settings = request.app.state.settings
    question = RoundQuestion(
        database_url=replica.url(),
        zone=zone,
        box=box,
        threshold_pct=threshold_pct,
        within_h=within_h,
        start=start,
        max_stops=max_stops,
        fleet_kept_s=settings.api_planning_cache_s,
    )
    key = (zone, box, threshold_pct, within_h, start, max_stops)

    async def plan() -> bytes:
        try:
            return await gate.in_worker(plan_collection_round, question)
        except FleetUnreadableError as exc:
            raise TransientStorageError(str(exc)) from None

    # Read, sorted out, ordered and encoded in a worker process (api/round_planner.py).
    return Response(await gate.plan(key, plan), media_type="application/json")
