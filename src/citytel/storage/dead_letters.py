"""The dead-letter store: listing it, and replaying it through ingestion."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from citytel.domain import DeadLetter, DecodedMessage
from citytel.errors import NotFoundError
from citytel.storage.pool import connection
from citytel.storage.writer import BatchOutcome, store_decoded

_FILTER = """
WHERE ($1::text IS NULL OR reason = $1)
  AND ($2::timestamptz IS NULL OR last_received_at >= $2)
  AND ($3::timestamptz IS NULL OR last_received_at < $3)
  AND ($4::bigint[] IS NULL OR id = ANY($4))
"""

LIST = f"""
SELECT id, topic, payload, payload_bytes, payload_truncated, reason, detail, first_received_at,
       last_received_at, times_received, count(*) OVER () AS total
FROM dead_letters {_FILTER}
ORDER BY last_received_at DESC, id DESC
LIMIT $5 OFFSET $6
"""  # noqa: S608 - the f-string only inserts our own WHERE clause

# Locked for the replay's transaction: two replays of the same letters cannot both store them.
FOR_REPLAY = f"""
SELECT id, topic, payload, payload_truncated, first_received_at
FROM dead_letters {_FILTER}
ORDER BY id
LIMIT $5
FOR UPDATE SKIP LOCKED
"""  # noqa: S608

DELETE = "DELETE FROM dead_letters WHERE id = ANY($1::bigint[])"

PRUNE = "DELETE FROM dead_letters WHERE last_received_at < now() - $1::interval"

# The API's role (citytel_api, migrations/0012_roles.sql) cannot write readings: a replay takes
# the ingest role's privileges for the storing part of its transaction, and only that part.
MUST_BORROW_INGEST = """
SELECT NOT has_table_privilege('waste_readings', 'INSERT')
   AND pg_has_role('citytel_ingest', 'MEMBER')
"""


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: by reason, by last receive time, by id."""

    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: list[int] | None = None

    def args(self) -> tuple[object, ...]:
        return (self.reason, self.since, self.until, self.ids)


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter to replay: its id and the message as it arrived."""

    id: int
    topic: str
    payload: bytes
    received_at: datetime


@dataclass
class ReplayOutcome:
    """What a replay did."""

    replayed: int
    resolved: int
    outcome: BatchOutcome
    truncated: int = 0


Decode = Callable[[Sequence[Letter]], Awaitable[tuple[list[DecodedMessage], list[DeadLetter]]]]


async def list_dead_letters(
    pool: asyncpg.Pool, where: DeadLetterFilter, *, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """Dead letters matching ``where``, newest first, and how many match in all."""
    async with connection(pool) as conn:
        rows = await conn.fetch(LIST, *where.args(), limit, offset)
        if rows or offset == 0:
            return rows, int(rows[0]["total"]) if rows else 0
        counted = await conn.fetch(LIST, *where.args(), 1, 0)
        return [], int(counted[0]["total"]) if counted else 0


async def get_dead_letter(pool: asyncpg.Pool, letter_id: int) -> asyncpg.Record:
    """One dead letter.

    Raises:
        NotFoundError: no dead letter with that id.
    """
    rows, _ = await list_dead_letters(pool, DeadLetterFilter(ids=[letter_id]), limit=1, offset=0)
    if not rows:
        raise NotFoundError(what="dead letter", key=str(letter_id))
    return rows[0]


async def replay_dead_letters(
    pool: asyncpg.Pool, where: DeadLetterFilter, decode: Decode, *, limit: int
) -> ReplayOutcome:
    """Run matching dead letters through ingestion again, in one transaction.

    A letter whose message now stores leaves the store; one that fails again stays, with the
    reason of this attempt, and a replay does not count as receiving it again.
    """
    async with connection(pool) as conn, conn.transaction():
        rows = await conn.fetch(FOR_REPLAY, *where.args(), limit)
        # A truncated letter's message is gone: decoding its first 64 KiB would store garbage
        # or a misleading reason, so it is not run and stays as it is.
        letters = [
            Letter(r["id"], r["topic"], bytes(r["payload"]), r["first_received_at"])
            for r in rows
            if not r["payload_truncated"]
        ]
        decoded, dead = await decode(letters)
        borrow = await conn.fetchval(MUST_BORROW_INGEST)
        if borrow:
            await conn.execute("SET LOCAL ROLE citytel_ingest")
        outcome = await store_decoded(conn, decoded, dead, replaying=True)
        if borrow:
            await conn.execute("RESET ROLE")
        still_dead = {(d.topic, d.payload) for d in outcome.dead}
        resolved = [x.id for x in letters if (x.topic, x.payload) not in still_dead]
        await conn.execute(DELETE, resolved)
    return ReplayOutcome(
        replayed=len(rows),
        resolved=len(resolved),
        outcome=outcome,
        truncated=len(rows) - len(letters),
    )


async def prune_dead_letters(pool: asyncpg.Pool, older_than: timedelta) -> int:
    """Delete the dead letters last received more than ``older_than`` ago; how many went."""
    async with connection(pool) as conn:
        status = await conn.execute(PRUNE, older_than)
    return int(status.rsplit(" ", 1)[1])
