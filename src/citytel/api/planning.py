"""A bound on expensive work, so that heavy routes cannot starve light ones.

Planning a collection round takes a few tenths of a second of CPU in a thread that shares the
interpreter with the event loop: eight clients looping on it cut free-spot searches twentyfold.
So each API process plans at most ``CITYTEL_API_PLANNING_CONCURRENCY`` rounds at a time and
refuses the next with a 429 and ``Retry-After`` rather than queueing it without end (a client
that waits a second and retries costs nothing meanwhile). Identical requests within
``CITYTEL_API_PLANNING_CACHE_S`` get the plan already made, without a slot: a dispatch screen
polled by many trucks costs one plan per window.

The ordering itself (2-opt on up to 200 stops, the CPU-heavy part) runs in worker processes of
the gate's own, one per slot: in a thread it would hold the interpreter's lock in turns with
the event loop, and every light request would wait for it at each turn.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from citytel.errors import SaturatedError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Enough for a plan of 200 stops on one core; a client retrying sooner would be refused again.
RETRY_AFTER_S = 1
# Plans kept at most, so that many distinct requests cannot grow the cache without end.
MAX_CACHED = 256


class PlanningGate(Generic[T]):
    """At most ``concurrency`` plans at a time, and identical ones answered from a short cache."""

    def __init__(self, concurrency: int, cache_s: float) -> None:
        self.concurrency = concurrency
        self.cache_s = cache_s
        self._busy = 0
        self._cache: dict[Hashable, tuple[float, T]] = {}
        self._workers: ProcessPoolExecutor | None = None
        # Pools replaced after a worker died: a count for the log reader and the tests.
        self.replaced_pools = 0

    async def in_worker(self, work: Callable[..., R], *args: object) -> R:
        """``work(*args)`` in one of the gate's worker processes (started at first use).

        A worker that dies (the kernel's OOM killer, an operator's kill) breaks the whole
        process pool for good: the pool is then replaced and the work tried once more.

        Raises:
            SaturatedError: the work broke a fresh pool too (a 429 with ``Retry-After``).
        """
        for attempt in range(2):
            workers = self._pool()
            try:
                return await asyncio.get_running_loop().run_in_executor(workers, work, *args)
            except BrokenProcessPool:
                log.warning("a planning worker process died; starting new ones (%d)", attempt + 1)
                if self._workers is workers:
                    workers.shutdown(wait=False, cancel_futures=True)
                    self._workers = None
                    self.replaced_pools += 1
        message = "planning worker processes keep dying; retry shortly"
        raise SaturatedError(message, retry_after_s=RETRY_AFTER_S)

    def _pool(self) -> ProcessPoolExecutor:
        if self._workers is None:
            # spawn, not fork: the API process has threads (asyncpg, the plan's filtering).
            context = multiprocessing.get_context("spawn")
            self._workers = ProcessPoolExecutor(self.concurrency, mp_context=context)
        return self._workers

    def close(self) -> None:
        """Stop the worker processes."""
        if self._workers is not None:
            self._workers.shutdown(cancel_futures=True)
            self._workers = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the planning slots, or raise at once when all are taken.

        Raises:
            SaturatedError: every slot is busy.
        """
        if self._busy >= self.concurrency:
            message = "collection rounds are being planned at capacity; retry in a second"
            raise SaturatedError(message, retry_after_s=RETRY_AFTER_S)
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    async def plan(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """The plan for ``key``: from the cache while fresh, else made in a slot and cached."""
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.slot():
            made = await make()
        if self.cache_s > 0:
            self._forget_expired(time.monotonic())
            if len(self._cache) >= MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (time.monotonic() + self.cache_s, made)
        return made

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
