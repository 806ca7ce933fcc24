"""API keys on requests: who is calling, and whether their key has the route's scope.

Every route declares its scope with :func:`require`; the OpenAPI document then lists the two ways
to send a key (``Authorization: Bearer`` and ``X-API-Key``) with that scope, so ``/docs`` can be
used with a key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from citytel.config import Settings
from citytel.errors import MissingScopeError, NotAuthenticatedError, TransientStorageError
from citytel.keys import ApiKey, Scope, hash_key, looks_like_key, same_hash
from citytel.storage import api_keys

log = logging.getLogger(__name__)

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key as `Authorization: Bearer ct_…` (`citytel keys create`).",
)
_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="The same API key in an `X-API-Key` header.",
)

# Bounds the memory of positive lookups; past it the cache simply starts again.
_CACHE_LIMIT = 10_000


class KeyChecker:
    """Finds keys by hash, remembering positive answers briefly, and notes their use.

    A key is looked up in the database at most once per ``api_key_cache_s`` (one second by
    default): the hot routes do not pay a query per request, and requests that miss together
    share one lookup. Revoking through this process's API empties the cache, so the key stops
    working here at once; another process notices within the cache time. ``last_used_at`` is
    written at most once per key per ``api_key_touch_s``.
    """

    def __init__(self, settings: Settings) -> None:
        self._ttl = settings.api_key_cache_s
        self._touch_every = settings.api_key_touch_s
        self._grace = settings.api_live_max_staleness_s
        self._cache: dict[bytes, tuple[ApiKey, float]] = {}
        self._touched: dict[int, float] = {}
        self._pending: dict[bytes, asyncio.Future[ApiKey | None]] = {}
        # Bumped by forget(): a lookup that began before a revocation does not fill the cache.
        self._generation = 0

    def forget(self) -> None:
        """Drop every remembered key and lookup in flight (after a revocation)."""
        self._generation += 1
        self._cache.clear()
        self._pending.clear()

    async def check(self, pool: asyncpg.Pool, key: str) -> ApiKey | None:
        """The live (not revoked) key ``key`` is, or None."""
        if not looks_like_key(key):
            return None
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            found: ApiKey | None = cached[0]
        else:
            found = await self._shared_lookup(pool, digest, now)
        if found is not None and now - self._touched.get(found.id, -1e18) >= self._touch_every:
            self._touched[found.id] = now
            try:
                await api_keys.touch_key(pool, found.id, datetime.now(UTC))
            except TransientStorageError as exc:
                # Only the last-use time is lost, and it is written again at the next use.
                log.warning("could not record the use of key %r: %s", found.name, exc)
                del self._touched[found.id]
        return found

    async def _shared_lookup(self, pool: asyncpg.Pool, digest: bytes, now: float) -> ApiKey | None:
        # When the entry of a busy key expires, every request in flight misses at once: one
        # query answers them all instead of one each.
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(pool, digest, now))
            self._pending[digest] = pending
            pending.add_done_callback(lambda done: self._settled(digest, done))
        return await asyncio.shield(pending)

    def _settled(self, digest: bytes, done: asyncio.Future[ApiKey | None]) -> None:
        if self._pending.get(digest) is done:
            del self._pending[digest]
        if not done.cancelled():
            # Retrieved here, so that a failure every waiter gave up on is not reported as lost;
            # the waiters themselves get it from the shield.
            done.exception()

    async def _lookup(self, pool: asyncpg.Pool, digest: bytes, now: float) -> ApiKey | None:
        generation = self._generation
        previous = self._cache.get(digest)
        try:
            stored = await api_keys.find_key(pool, digest)
        except TransientStorageError:
            # The database is away: a key found valid moments ago keeps working as long as the
            # live parking view may answer without the database (CITYTEL_API_LIVE_MAX_STALENESS_S).
            if previous is not None and now < previous[1] + self._grace:
                return previous[0]
            raise
        if stored is None or not same_hash(stored[1], digest) or stored[0].revoked_at is not None:
            self._cache.pop(digest, None)
            return None
        if self._ttl > 0 and generation == self._generation:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = (stored[0], now + self._ttl)
        return stored[0]


async def authorize(
    request: Request,
    security: SecurityScopes,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> ApiKey | None:
    """The caller's key if it grants the route's scope; 401 or 403 otherwise.

    None for an anonymous call to a route the settings open to anyone (the read-only parking
    routes under CITYTEL_API_ANONYMOUS_PARKING).
    """
    scope = Scope(security.scopes[0])
    settings: Settings = request.app.state.settings
    sent = bearer.credentials if bearer is not None else header
    if not sent:
        if scope is Scope.PARKING_READ and settings.api_anonymous_parking:
            return None
        message = "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        raise NotAuthenticatedError(message)
    pool: asyncpg.Pool | None = request.app.state.pool
    if pool is None:
        message = "the database is not reachable yet; retry shortly"
        raise TransientStorageError(message)
    checker: KeyChecker = request.app.state.key_checker
    key = await checker.check(pool, sent.strip())
    if key is None:
        message = "this API key is not valid (unknown or revoked)"
        raise NotAuthenticatedError(message)
    if not key.grants(scope):
        raise MissingScopeError(scope.value)
    return key


def require(scope: Scope) -> Any:
    """The dependency a route or router declares to need ``scope``."""
    return Security(authorize, scopes=[scope.value])
