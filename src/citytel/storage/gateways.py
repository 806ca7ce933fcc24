"""The gateway registry: who may publish readings, for which devices, with which password."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from citytel.broker import BrokerUser, hash_password, new_password
from citytel.errors import ConfigurationError, NotFoundError
from citytel.formats.topics import is_valid_id
from citytel.storage.pool import connection

ADD = """
INSERT INTO gateways (id, name, lorawan_application, password_hash, credential_version)
VALUES ($1, $2, $3, $4, 1)
ON CONFLICT DO NOTHING
RETURNING id
"""

# A rotation also re-enables: a disabled gateway comes back only with a new password.
ROTATE = """
UPDATE gateways
SET password_hash = $2, credential_version = credential_version + 1, enabled = true,
    updated_at = now()
WHERE id = $1
RETURNING id
"""

DISABLE = """
UPDATE gateways SET enabled = false, password_hash = NULL, updated_at = now()
WHERE id = $1
RETURNING id
"""

LIST = """
SELECT g.id, g.name, g.enabled, g.lorawan_application, g.credential_version, g.created_at,
       g.last_seen_at, g.password_hash IS NOT NULL AS has_password,
       (SELECT count(*) FROM containers c WHERE c.gateway_id = g.id)
     + (SELECT count(*) FROM parking_spots s WHERE s.gateway_id = g.id) AS devices
FROM gateways g
ORDER BY g.id
"""

BROKER_USERS = """
SELECT id, password_hash, lorawan_application FROM gateways
WHERE enabled AND password_hash IS NOT NULL
ORDER BY id
"""

TOUCH = """
UPDATE gateways g SET last_seen_at = greatest(g.last_seen_at, s.seen)
FROM unnest($1::text[], $2::timestamptz[]) AS s(id, seen)
WHERE g.id = s.id
"""


@dataclass(frozen=True, slots=True)
class Gateway:
    """A gateway as ``citytel gateways list`` shows it."""

    id: str
    name: str
    enabled: bool
    lorawan_application: str | None
    credential_version: int
    has_password: bool
    devices: int
    created_at: datetime
    last_seen_at: datetime | None


def _check_id(gateway_id: str) -> None:
    # The id is also the broker user name and a topic segment: a ':' would end the user name
    # in Mosquitto's password file.
    if not is_valid_id(gateway_id) or ":" in gateway_id:
        message = (
            f"gateway id {gateway_id!r} is not valid: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
        raise ConfigurationError(message)


async def add_gateway(
    pool: asyncpg.Pool, gateway_id: str, *, name: str = "", lorawan_application: str | None = None
) -> str:
    """Register a gateway; returns its password, which is stored only hashed.

    Raises:
        ConfigurationError: the id is invalid or already registered.
    """
    _check_id(gateway_id)
    password = new_password()
    async with connection(pool) as conn:
        added = await conn.fetchval(
            ADD, gateway_id, name, lorawan_application or None, hash_password(password)
        )
    if added is None:
        message = (
            f"gateway {gateway_id!r} is already registered (or its LoRaWAN application is "
            "another gateway's); `citytel gateways rotate` gives it a new password"
        )
        raise ConfigurationError(message)
    return password


async def rotate_gateway(pool: asyncpg.Pool, gateway_id: str) -> str:
    """Give a gateway a new password (the old one stops working) and enable it."""
    password = new_password()
    async with connection(pool) as conn:
        found = await conn.fetchval(ROTATE, gateway_id, hash_password(password))
    if found is None:
        raise NotFoundError(what="gateway", key=gateway_id)
    return password


async def disable_gateway(pool: asyncpg.Pool, gateway_id: str) -> None:
    """Disable a gateway and forget its password; its devices stay bound to it."""
    async with connection(pool) as conn:
        found = await conn.fetchval(DISABLE, gateway_id)
    if found is None:
        raise NotFoundError(what="gateway", key=gateway_id)


async def list_gateways(pool: asyncpg.Pool) -> list[Gateway]:
    """Every registered gateway, by id."""
    async with connection(pool) as conn:
        rows = await conn.fetch(LIST)
    return [
        Gateway(
            id=r["id"],
            name=r["name"],
            enabled=r["enabled"],
            lorawan_application=r["lorawan_application"],
            credential_version=r["credential_version"],
            has_password=r["has_password"],
            devices=int(r["devices"]),
            created_at=r["created_at"],
            last_seen_at=r["last_seen_at"],
        )
        for r in rows
    ]


async def broker_users(pool: asyncpg.Pool) -> list[BrokerUser]:
    """The gateways the broker lets in: enabled, with a password."""
    async with connection(pool) as conn:
        rows = await conn.fetch(BROKER_USERS)
    return [BrokerUser(r["id"], r["password_hash"], r["lorawan_application"]) for r in rows]


async def mark_seen(pool: asyncpg.Pool, seen: dict[str, datetime]) -> None:
    """Move the gateways' last-seen times forward."""
    if not seen:
        return
    ids = sorted(seen)
    async with connection(pool) as conn:
        await conn.execute(TOUCH, ids, [seen[i] for i in ids])
