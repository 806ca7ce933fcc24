"""The dead-letter store: what could not be read, why, and replaying it."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Path, Query, Request

from citytel.api.auth import require
from citytel.api.deps import PoolDep, require_offset
from citytel.api.schemas import (
    MAX_ID,
    DeadLetterPage,
    DeadLetterPublic,
    ReplayRequest,
    ReplayResult,
)
from citytel.domain import Reason
from citytel.errors import ConflictError, InvalidQueryError
from citytel.ingest.pipeline import Decoders
from citytel.ingest.replay import replay
from citytel.keys import Scope
from citytel.storage import dead_letters
from citytel.storage.dead_letters import DeadLetterFilter

router = APIRouter(
    prefix="/v1/dead-letters", tags=["dead letters"], dependencies=[require(Scope.OPS)]
)

MAX_REPLAY = 10_000

LetterId = Annotated[int, Path(ge=1, le=MAX_ID, description="the dead letter's id")]


def dead_letter_public(row: asyncpg.Record) -> DeadLetterPublic:
    """The public shape of a dead letter: the payload as base64, and as text when it is text."""
    payload = bytes(row["payload"])
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return DeadLetterPublic(
        id=row["id"],
        topic=row["topic"],
        reason=row["reason"],
        detail=row["detail"],
        payload_base64=base64.b64encode(payload).decode(),
        payload_text=text,
        payload_bytes=row["payload_bytes"],
        payload_truncated=row["payload_truncated"],
        first_received_at=row["first_received_at"],
        last_received_at=row["last_received_at"],
        times_received=row["times_received"],
    )


@router.get("", response_model=DeadLetterPage)
async def list_dead_letters(
    pool: PoolDep,
    reason: Annotated[Reason | None, Query(description="only this reason")] = None,
    since: Annotated[datetime | None, Query(description="last received at or after")] = None,
    until: Annotated[datetime | None, Query(description="last received before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> DeadLetterPage:
    """Messages that could not become readings, newest first, with the reason for each."""
    where = DeadLetterFilter(
        reason,
        require_offset(since, "since") if since is not None else None,
        require_offset(until, "until") if until is not None else None,
    )
    rows, total = await dead_letters.list_dead_letters(pool, where, limit=limit, offset=offset)
    return DeadLetterPage(
        items=[dead_letter_public(r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{letter_id}", response_model=DeadLetterPublic, responses={404: {}})
async def get_dead_letter(pool: PoolDep, letter_id: LetterId) -> DeadLetterPublic:
    """One dead letter."""
    return dead_letter_public(await dead_letters.get_dead_letter(pool, letter_id))


async def _replay(
    request: Request, pool: asyncpg.Pool, where: DeadLetterFilter, limit: int
) -> ReplayResult:
    decoders: Decoders = request.app.state.decoders
    result = await replay(pool, decoders, where, limit=limit)
    return ReplayResult(
        replayed=result.replayed,
        resolved=result.resolved,
        still_dead=result.replayed - result.resolved,
        readings_stored=result.outcome.stored,
        still_dead_by_reason=dict(result.outcome.dead_letters),
        truncated=result.truncated,
    )


@router.post("/replay", response_model=ReplayResult)
async def replay_matching(request: Request, pool: PoolDep, body: ReplayRequest) -> ReplayResult:
    """Run the matching dead letters through ingestion again; the ones that now store leave."""
    if body.ids is None and body.reason is None and body.since is None and body.until is None:
        message = (
            "say which dead letters to replay: ids, reason, since or until "
            '(to replay everything, send {"all": true})'
        )
        if not body.all:
            raise InvalidQueryError(message)
    if body.since is not None and body.until is not None and body.since >= body.until:
        message = "'since' must be before 'until'"
        raise InvalidQueryError(message)
    where = DeadLetterFilter(body.reason, body.since, body.until, body.ids)
    return await _replay(request, pool, where, body.limit)


@router.post("/{letter_id}/replay", response_model=ReplayResult, responses={404: {}, 409: {}})
async def replay_one(request: Request, pool: PoolDep, letter_id: LetterId) -> ReplayResult:
    """Run one dead letter through ingestion again."""
    letter = await dead_letters.get_dead_letter(pool, letter_id)
    if letter["payload_truncated"]:
        message = (
            f"dead letter {letter_id} cannot be replayed: its payload of "
            f"{letter['payload_bytes']} bytes was truncated to its first 64 KiB when it was kept"
        )
        raise ConflictError(message)
    return await _replay(request, pool, DeadLetterFilter(ids=[letter_id]), 1)
