"""API keys in the database: create, find by hash, list, revoke, note use."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from citytel.errors import ConflictError, NotFoundError
from citytel.keys import ApiKey, Scope
from citytel.storage.pool import connection

_COLUMNS = "id, name, scopes, created_at, last_used_at, revoked_at"

CREATE = f"""
INSERT INTO api_keys (name, scopes, key_sha256) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING
RETURNING {_COLUMNS}
"""  # noqa: S608 - the f-string only inserts our own column list

FIND = f"SELECT {_COLUMNS}, key_sha256 FROM api_keys WHERE key_sha256 = $1"  # noqa: S608

LIST = f"SELECT {_COLUMNS} FROM api_keys ORDER BY name"  # noqa: S608

REVOKE = f"""
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1
RETURNING {_COLUMNS}
"""  # noqa: S608

TOUCH = """
UPDATE api_keys SET last_used_at = $2
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)
"""


def api_key(row: asyncpg.Record) -> ApiKey:
    """The key of a row (scopes a newer citytel added and this one does not know are ignored)."""
    known = {s.value for s in Scope}
    return ApiKey(
        id=row["id"],
        name=row["name"],
        scopes=frozenset(Scope(s) for s in row["scopes"] if s in known),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


async def create_key(
    pool: asyncpg.Pool, name: str, scopes: frozenset[Scope], key_sha256: bytes
) -> ApiKey:
    """Store a new key by its hash.

    Raises:
        ConflictError: a key (even a revoked one) already has that name.
    """
    async with connection(pool) as conn:
        row = await conn.fetchrow(CREATE, name, sorted(s.value for s in scopes), key_sha256)
    if row is None:
        message = f"a key named {name!r} exists already (revoked keys keep their names)"
        raise ConflictError(message)
    return api_key(row)


async def find_key(pool: asyncpg.Pool, key_sha256: bytes) -> tuple[ApiKey, bytes] | None:
    """The key with this hash and the stored hash, or None."""
    async with connection(pool) as conn:
        row = await conn.fetchrow(FIND, key_sha256)
    return (api_key(row), bytes(row["key_sha256"])) if row is not None else None


async def list_keys(pool: asyncpg.Pool) -> list[ApiKey]:
    """Every key, revoked ones included, by name."""
    async with connection(pool) as conn:
        return [api_key(r) for r in await conn.fetch(LIST)]


async def revoke_key(pool: asyncpg.Pool, name: str) -> ApiKey:
    """Revoke a key by name; revoking it again keeps the first revocation time.

    Raises:
        NotFoundError: no key with that name.
    """
    async with connection(pool) as conn:
        row = await conn.fetchrow(REVOKE, name)
    if row is None:
        raise NotFoundError(what="API key", key=name)
    return api_key(row)


async def touch_key(pool: asyncpg.Pool, key_id: int, used_at: datetime) -> None:
    """Record that a key was used at ``used_at`` (never moving the time backwards)."""
    async with connection(pool) as conn:
        await conn.execute(TOUCH, key_id, used_at)
