"""The audit trail of provisioning: who changed which object of the registry, and how."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from citytel.storage.pool import Connection, connection

RECORD = """
INSERT INTO audit (actor, action, object_kind, object_id, before, after)
VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb)
"""

LIST = """
SELECT id, at, actor, action, object_kind, object_id, before::text, after::text
FROM audit
ORDER BY id DESC
LIMIT $1 OFFSET $2
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: who made it (an API key's name), what it was, the object before and after."""

    id: int
    at: datetime
    actor: str
    action: str
    object_kind: str
    object_id: str | None
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class Change:
    """One change to record: who made it, what it was, the object before and after (JSON)."""

    actor: str
    action: str
    object_kind: str
    object_id: str | None
    before: Any = None
    after: Any = None


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


async def record(conn: Connection, change: Change) -> None:
    """Write one audit row on ``conn`` (inside the transaction of the change it records)."""
    await conn.execute(
        RECORD,
        change.actor,
        change.action,
        change.object_kind,
        change.object_id,
        _text(change.before),
        _text(change.after),
    )


async def record_committed(pool: asyncpg.Pool, change: Change) -> None:
    """Write one audit row for a change already committed (the gateway registry's)."""
    async with connection(pool) as conn:
        await record(conn, change)


async def list_entries(pool: asyncpg.Pool, *, limit: int, offset: int) -> list[AuditEntry]:
    """Audit rows, newest first."""
    async with connection(pool) as conn:
        rows = await conn.fetch(LIST, limit, offset)
    return [
        AuditEntry(
            id=r["id"],
            at=r["at"],
            actor=r["actor"],
            action=r["action"],
            object_kind=r["object_kind"],
            object_id=r["object_id"],
            before=None if r["before"] is None else json.loads(r["before"]),
            after=None if r["after"] is None else json.loads(r["after"]),
        )
        for r in rows
    ]
