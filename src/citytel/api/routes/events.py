"""Push over Server-Sent Events: changes as they are committed, and free spots as they change.

Starlette's own ``StreamingResponse`` carries the streams: the SSE framing is a few lines, and
what matters here (event ids, resuming, a reset when resuming is impossible, keep-alives that
also find clients gone) is ours either way, so no further dependency is needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from citytel.api.auth import require
from citytel.api.deps import LiveSpotsDep, SettingsDep
from citytel.api.events import EVENT_KINDS, ChangeFeed, EventHub, Resume
from citytel.api.routes.containers import BBoxQuery, parse_bbox
from citytel.api.routes.parking import (
    Category,
    Lat,
    Lon,
    RadiusM,
    check_radius,
    free_spots_json,
    nearest_free,
)
from citytel.api.signal import Signal
from citytel.api.spot_index import rfc3339
from citytel.errors import InvalidQueryError, StorageError, TransientStorageError
from citytel.keys import Scope
from citytel.storage.queries import BBox

router = APIRouter(tags=["push"])

# How long a client waits before reconnecting after the stream broke (ms), sent once.
_RETRY_MS = 2000
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "an endless event stream"}
}


def _frame(event: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def _feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed | None = request.app.state.change_feed
    if feed is None:
        message = "the event stream is switched off on this server (CITYTEL_API_EVENTS=false)"
        raise InvalidQueryError(message)
    return feed


def _kinds(raw: str | None) -> frozenset[str]:
    if raw is None:
        return frozenset(EVENT_KINDS)
    kinds = frozenset(k.strip() for k in raw.split(",") if k.strip())
    unknown = sorted(kinds - set(EVENT_KINDS))
    if unknown or not kinds:
        message = f"kind must be a comma-separated list of {', '.join(EVENT_KINDS)}; got {raw!r}"
        raise InvalidQueryError(message)
    return kinds


async def _changes(
    request: Request,
    feed: ChangeFeed,
    start: Resume,
    filters: tuple[frozenset[str], str | None, BBox | None],
    keepalive_s: float,
) -> AsyncIterator[str]:
    hub: EventHub = feed.hub
    hub.subscribers += 1
    try:
        as_of = rfc3339(feed.as_of) if feed.as_of is not None else None
        yield f"retry: {_RETRY_MS}\n\n"
        if start.lost is not None:
            reset = {"reason": start.lost, "resync": "read the current state again"}
            yield _frame("reset", json.dumps(reset), hub.event_id(start.seq))
        yield _frame("ready", json.dumps({"as_of": as_of}), hub.event_id(start.seq))
        seq = start.seq
        while True:
            events, lost = hub.after(seq)
            if lost is not None:
                reset = {
                    "reason": "this client fell behind: older events are no longer retained",
                    "resync": "read the current state again",
                }
                yield _frame("reset", json.dumps(reset), hub.event_id(lost - 1))
            for event in events:
                if event.matches(*filters):
                    yield _frame(event.kind, event.data, hub.event_id(event.seq))
            if events:
                seq = events[-1].seq
                continue
            if not await hub.published.wait(keepalive_s):
                if await request.is_disconnected():
                    return
                yield ": keepalive\n\n"
    finally:
        hub.subscribers -= 1


# The operations feed (every kind of change) is dispatch's and operators' to read; the free-spot
# stream is the parking app's, open to anonymous callers where the parking routes are.
@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses=_SSE_DOC,
    dependencies=[require(Scope.CONTAINERS_READ)],
)
async def events(
    request: Request,
    settings: SettingsDep,
    kind: Annotated[
        str | None, Query(description="comma-separated: container, spot, device; default all")
    ] = None,
    zone: Annotated[str | None, Query(description="only this zone")] = None,
    bbox: BBoxQuery = None,
    last_event_id: Annotated[
        str | None, Header(description="resume after this event (sent by SSE clients)")
    ] = None,
) -> StreamingResponse:
    """Changes after commit (container fill, spot status, device attention), as SSE."""
    feed = _feed(request)
    filters = (_kinds(kind), zone, parse_bbox(bbox) if bbox is not None else None)
    start = feed.hub.resume(last_event_id)
    stream = _changes(request, feed, start, filters, settings.api_events_keepalive_s)
    return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)


async def _free(
    request: Request,
    live: LiveSpotsDep,
    woken_by: Signal,
    search: tuple[float, float, float, int, str | None],
    keepalive_s: float,
    debounce_s: float,
) -> AsyncIterator[str]:
    lat, lon, radius_m, limit, category = search
    sent: str | None = None
    yield f"retry: {_RETRY_MS}\n\n"
    while True:
        try:
            pool = request.app.state.reads.pool()
            if pool is None:
                message = "the database is not reachable yet"
                raise TransientStorageError(message)
            items, as_of, _ = await nearest_free(
                pool, live, lat=lat, lon=lon, radius_m=radius_m, limit=limit, category=category
            )
        except StorageError:
            yield _frame("unavailable", json.dumps({"detail": "the database is unavailable"}))
        else:
            if items != sent:
                sent = items
                body = free_spots_json(items, lat=lat, lon=lon, radius_m=radius_m, as_of=as_of)
                yield _frame("free", body)
        if await woken_by.wait(keepalive_s):
            # Debounced: a burst of changes is answered once, after it.
            await asyncio.sleep(debounce_s)
        elif await request.is_disconnected():
            return
        else:
            yield ": keepalive\n\n"


@router.get(
    "/v1/parking/free/stream",
    response_class=StreamingResponse,
    responses=_SSE_DOC,
    dependencies=[require(Scope.PARKING_READ)],
)
async def free_spots_stream(
    request: Request,
    settings: SettingsDep,
    live: LiveSpotsDep,
    lat: Lat,
    lon: Lon,
    radius_m: RadiusM = 500,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    category: Category = None,
) -> StreamingResponse:
    """The nearest free spots (as ``GET /v1/parking/free``), pushed each time the answer changes."""
    check_radius(settings, radius_m)
    feed: ChangeFeed | None = request.app.state.change_feed
    # The live view's own refresh when there is one (its answer is then already up to date);
    # else the change feed's; with neither, the answer is checked at each keep-alive.
    woken_by = live.changed if live is not None else feed.spots_changed if feed else Signal()
    stream = _free(
        request,
        live,
        woken_by,
        (lat, lon, radius_m, limit, category),
        settings.api_events_keepalive_s,
        settings.api_events_debounce_ms / 1000,
    )
    return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
