"""A bound on expensive work, so that heavy routes cannot starve light ones.

Planning a collection round reads a city's containers, sorts out the due ones and orders up to
200 stops: a few tenths of a second of CPU. Eight clients looping on it in the API process cut
free-spot searches twentyfold. So:

- a round is planned whole in a worker process of the gate's own (api/round_planner.py), started
  at a lower CPU priority (``nice`` +10) than the API: the light routes' process keeps its core,
  and the planning takes what is left;
- each API process plans at most ``CITYTEL_API_PLANNING_CONCURRENCY`` rounds at a time; up to
  ``CITYTEL_API_PLANNING_QUEUE`` more wait their turn, each at most ``QUEUE_WAIT_S``, and beyond
  that a request is refused at once with a 429 and ``Retry-After``: waiting costs nothing, while
  a client refused at once and retrying at once costs a request each time;
- identical requests within ``CITYTEL_API_PLANNING_CACHE_S`` get the plan already made (or the
  one being made), without a slot: a dispatch screen polled by many trucks costs one plan per
  window.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from citytel.api.answers import AnswerCache
from citytel.errors import SaturatedError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Enough for a plan of 200 stops on one core; a client retrying sooner would be refused again.
RETRY_AFTER_S = 1
# The longest a request waits in the queue for a slot before it is refused.
QUEUE_WAIT_S = 10.0
# How much less CPU priority planning workers take than the API process (nice(2) increment).
WORKER_NICENESS = 10


def _lower_priority() -> None:
    """In each worker process, at its start: yield the CPU to the API process."""
    os.nice(WORKER_NICENESS)


class PlanningGate(Generic[T]):
    """At most ``concurrency`` plans at a time, ``queue`` more waiting, and identical ones
    answered from a short cache."""

    def __init__(self, concurrency: int, cache_s: float, queue: int = 0) -> None:
        self.concurrency = concurrency
        self.cache_s = cache_s
        self.queue = queue
        self._slots = asyncio.Semaphore(concurrency)
        self.waiting = 0
        """Requests waiting in the queue for a slot now."""
        self._answers = AnswerCache[T](cache_s)
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
            self._workers = ProcessPoolExecutor(
                self.concurrency, mp_context=context, initializer=_lower_priority
            )
        return self._workers

    def close(self) -> None:
        """Stop the worker processes."""
        if self._workers is not None:
            self._workers.shutdown(cancel_futures=True)
            self._workers = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the planning slots, waiting in the queue for one while it has room.

        Raises:
            SaturatedError: every slot is busy and the queue is full, or the wait was too long.
        """
        if self._slots.locked() and self.waiting >= self.queue:
            message = "collection rounds are being planned at capacity; retry in a second"
            raise SaturatedError(message, retry_after_s=RETRY_AFTER_S)
        self.waiting += 1
        try:
            async with asyncio.timeout(QUEUE_WAIT_S):
                await self._slots.acquire()
        except TimeoutError:
            message = "collection rounds are being planned at capacity; retry in a second"
            raise SaturatedError(message, retry_after_s=RETRY_AFTER_S) from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def plan(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """The plan for ``key``: from the cache while fresh, else made in a slot and cached."""

        async def in_slot() -> T:
            async with self.slot():
                return await make()

        return await self._answers.answer(key, in_slot)
