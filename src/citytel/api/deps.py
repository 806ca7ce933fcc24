"""Dependencies shared by the routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import unquote

import asyncpg
from fastapi import Depends, Request

from citytel.api.answers import AnswerCache
from citytel.api.live_spots import LiveSpots
from citytel.api.schemas import within_calendar
from citytel.config import Settings
from citytel.errors import InvalidQueryError, TransientStorageError
from citytel.storage.replica import ReadReplica

# The dependencies are coroutines although they do no I/O: FastAPI runs a plain function in a
# thread pool, and two thread hops per request were a tenth of the hottest route's time.


async def get_pool(request: Request) -> asyncpg.Pool:
    """The database pool, or 503 while the database has not been reached yet."""
    pool: asyncpg.Pool | None = request.app.state.pool
    if pool is None:
        message = "the database is not reachable yet; retry shortly"
        raise TransientStorageError(message)
    return pool


async def get_read_pool(request: Request) -> asyncpg.Pool:
    """The pool for a read: a read replica's while it keeps up, else the primary's; or 503."""
    replica: ReadReplica = request.app.state.reads
    pool = replica.pool()
    if pool is None:
        message = "the database is not reachable yet; retry shortly"
        raise TransientStorageError(message)
    return pool


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_live_spots(request: Request) -> LiveSpots | None:
    """The in-memory parking view, or None when it is switched off."""
    live: LiveSpots | None = request.app.state.live_spots
    return live


async def get_container_answers(request: Request) -> AnswerCache[bytes]:
    """The container list's answers of the last moment (CITYTEL_API_CONTAINERS_CACHE_S)."""
    answers: AnswerCache[bytes] = request.app.state.container_answers
    return answers


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
"""The primary's pool: for writes, and for reads that must see them at once."""
ReadPoolDep = Annotated[asyncpg.Pool, Depends(get_read_pool)]
"""For reads that may be served a replica's state (CITYTEL_DATABASE_READ_MAX_LAG_S behind)."""
ContainerAnswersDep = Annotated[AnswerCache[bytes], Depends(get_container_answers)]
LiveSpotsDep = Annotated[LiveSpots | None, Depends(get_live_spots)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def require_offset(value: datetime, name: str) -> datetime:
    """``value`` if it carries a UTC offset; a naive time in a query is ambiguous, so refused."""
    if value.tzinfo is None:
        message = f"'{name}' must include a UTC offset, like 2026-05-01T08:00:00Z"
        raise InvalidQueryError(message)
    try:
        return within_calendar(value)
    except ValueError as exc:
        message = f"'{name}' {exc}"
        raise InvalidQueryError(message) from None


async def refuse_nul(request: Request) -> None:
    """A 422 for a NUL character anywhere in the path or the query.

    PostgreSQL text cannot hold NUL: passed on, it would fail in the database as a 500, while no
    id, zone or category of ours can contain one.
    """
    if "\x00" in request.url.path or "\x00" in unquote(request.url.query):
        message = "the request contains a NUL character (%00), which no id or name can hold"
        raise InvalidQueryError(message)
