"""Encoded answers of a hot read, kept a moment: many clients asking one question cost one query.

Dispatch screens poll the container list (``GET /v1/containers?min_fill_pct=…``) with the same
few questions, and the list changes with each reading. An answer made in the last
``CITYTEL_API_CONTAINERS_CACHE_S`` seconds (one by default, as the key check's cache) is sent
again as it is, its JSON bytes included; identical requests that miss together share one query.
The age is counted from before the query, so no answer is older than that bound. Writes made
through this process (containers created, moved or deleted) drop every answer at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

# Bounds the memory of kept answers; past it the cache simply starts again.
MAX_ANSWERS = 1024

T = TypeVar("T")


class AnswerCache(Generic[T]):
    """Answers by request, each kept ``ttl_s`` seconds (0: never kept).

    The container list keeps encoded JSON; collection rounds keep the fleet's state they are
    planned from (api/routes/collection.py).
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._answers: dict[Hashable, tuple[float, T]] = {}
        self._pending: dict[Hashable, asyncio.Future[T]] = {}
        # Bumped by forget(): an answer made before a write does not fill the cache.
        self._generation = 0

    def forget(self) -> None:
        """Drop every kept answer and every answer being made (after a write)."""
        self._generation += 1
        self._answers.clear()
        self._pending.clear()

    async def answer(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """The answer to ``key``: kept if fresh, else made once for every caller waiting on it."""
        if self.ttl_s <= 0:
            return await make()
        kept = self._answers.get(key)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
        pending = self._pending.get(key)
        if pending is None:
            made = self._make(key, make, self._generation, time.monotonic())
            pending = asyncio.ensure_future(made)
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        # Shielded: a client that goes away does not cancel the answer others wait for.
        return await asyncio.shield(pending)

    async def _make(
        self, key: Hashable, make: Callable[[], Awaitable[T]], generation: int, asked: float
    ) -> T:
        # Both taken when the question was asked, not when the task first ran.
        made = await make()
        if generation == self._generation:
            if len(self._answers) >= MAX_ANSWERS:
                self._answers.clear()
            self._answers[key] = (asked + self.ttl_s, made)
        return made

    def _settled(self, key: Hashable, done: asyncio.Future[T]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if not done.cancelled():
            # Retrieved here, so that a failure every waiter gave up on is not reported as lost;
            # the waiters themselves get it from the shield.
            done.exception()
