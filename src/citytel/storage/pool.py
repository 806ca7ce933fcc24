"""The asyncpg connection pool, and where driver errors become citytel errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import asyncpg

from citytel.config import Settings, database_address
from citytel.errors import StorageError, TransientStorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.pool.PoolConnectionProxy

# SQLSTATE classes and codes that go away by themselves: the connection broke, the server is
# shutting down or starting up, or the transaction lost a race and can simply be repeated.
_TRANSIENT_CLASSES = ("08", "53", "57P")
_TRANSIENT_CODES = {"40001", "40P01", "55P03", "57014"}


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same work later can succeed without anything else changing."""
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | asyncpg.exceptions.ConnectionDoesNotExistError,
    ):
        # InternalClientError: a pooled connection whose server went away mid-answer can be
        # handed out once more before its end is noticed ("cannot switch to state ...; another
        # operation is in progress"); the next connection is a new one.
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state in _TRANSIENT_CODES or state.startswith(_TRANSIENT_CLASSES)
    return False


def translate(exc: BaseException) -> StorageError:
    """The citytel error for a driver error: transient ones are marked for retry."""
    message = f"{type(exc).__name__}: {exc}"
    if is_transient(exc):
        return TransientStorageError(message)
    return StorageError(message)


def _connect_error(exc: BaseException, where: str) -> StorageError:
    """The error of a failed connection attempt, naming the server and, when permanent, the fix.

    ``where`` is ``host:port/database``: never the user's password, which the driver's own
    messages do not contain either.
    """
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        message = (
            f"database {where} does not exist: run `citytel migrate` (it creates the database "
            "and its tables), or fix the database name in CITYTEL_DATABASE_URL"
        )
        return StorageError(message)
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        message = (
            f"database {where} refused the connection ({exc}): create that role on the server, "
            "or fix the user name and password in CITYTEL_DATABASE_URL"
        )
        return StorageError(message)
    error = translate(exc)
    if isinstance(error, TransientStorageError):
        return TransientStorageError(f"database {where} unreachable: {error}")
    message = f"database {where} cannot be used: {error}; check CITYTEL_DATABASE_URL"
    return StorageError(message)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool.

    asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is a round trip
    per borrow, a measurable share of a small API read. citytel sets no session state, takes no
    advisory lock and listens to nothing on pooled connections; asyncpg still rolls back an
    unfinished transaction before calling this.
    """


async def create_pool(settings: Settings, *, database_url: str | None = None) -> asyncpg.Pool:
    """A pool on the configured database.

    Raises:
        StorageError: the database cannot be reached (transient) or refuses us (permanent,
            with what to do about it).
    """
    url = database_url or settings.database_url.get_secret_value()
    where = database_address(url)
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=settings.database_pool_size,
            command_timeout=30,
            # Statement-cache invalidation after a migration is handled by asyncpg; a bounded
            # lifetime also lets connections follow a failover.
            max_inactive_connection_lifetime=300,
            reset=_keep_session,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise _connect_error(exc, where) from exc
    return pool


async def wait_for_pool(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    database_url: str | None = None,
    max_delay: float = 10.0,
) -> asyncpg.Pool | None:
    """Create the pool, retrying with backoff while the database is unreachable.

    Returns None when ``stop`` is set before the database answers.

    Raises:
        StorageError: the database refuses us for good (no such database or role): retrying
            would not help, the message says what to do.
    """
    delay = 0.5
    while True:
        try:
            return await create_pool(settings, database_url=database_url)
        except TransientStorageError as exc:
            log.warning("%s; retrying in %.1f s", exc, delay)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass
            else:
                return None
        delay = min(delay * 2, max_delay)


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A pooled connection; driver errors inside the block become :class:`StorageError`."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except StorageError:
        raise
    except (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        TimeoutError,
    ) as exc:
        raise translate(exc) from exc
