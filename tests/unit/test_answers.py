"""The answer cache of the container list: kept answers, shared making, writes that drop them."""

from __future__ import annotations

import asyncio

import pytest

from citytel.api.answers import AnswerCache


async def test_identical_misses_share_one_making_and_the_answer_is_kept() -> None:
    """Callers asking the same question together wait for one answer, then get it kept."""
    cache = AnswerCache[bytes](60)
    made = 0
    release = asyncio.Event()

    async def make() -> bytes:
        nonlocal made
        made += 1
        await release.wait()
        return b"page"

    waiting = [asyncio.create_task(cache.answer(("q", 1), make)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(5):
        answers = await asyncio.gather(*waiting)
    assert answers == [b"page"] * 5
    assert await cache.answer(("q", 1), make) == b"page"
    assert made == 1


async def test_another_question_a_failure_and_no_cache_time_each_ask_again() -> None:
    """A different key, a failed making and a cache time of 0 never answer from the cache."""
    calls: list[str] = []

    async def make(tag: str) -> bytes:
        calls.append(tag)
        return tag.encode()

    cache = AnswerCache[bytes](60)
    assert await cache.answer("a", lambda: make("a")) == b"a"
    assert await cache.answer("b", lambda: make("b")) == b"b"

    async def fail() -> bytes:
        calls.append("failed")
        message = "database away"
        raise RuntimeError(message)

    with pytest.raises(RuntimeError, match="database away"):
        await cache.answer("c", fail)
    assert await cache.answer("c", lambda: make("c")) == b"c"

    uncached = AnswerCache[bytes](0)
    await uncached.answer("a", lambda: make("a1"))
    await uncached.answer("a", lambda: make("a2"))
    assert calls == ["a", "b", "failed", "c", "a1", "a2"]


async def test_forget_drops_kept_answers_and_the_one_being_made() -> None:
    """After forget(), an answer made before it is neither kept nor served to later callers."""
    cache = AnswerCache[bytes](60)
    assert await cache.answer("q", lambda: asyncio.sleep(0, b"old")) == b"old"
    release = asyncio.Event()

    async def slow() -> bytes:
        await release.wait()
        return b"before the write"

    cache.forget()
    in_flight = asyncio.create_task(cache.answer("r", slow))
    await asyncio.sleep(0)
    cache.forget()
    release.set()
    async with asyncio.timeout(5):
        assert await in_flight == b"before the write"
    assert await cache.answer("q", lambda: asyncio.sleep(0, b"new")) == b"new"
    assert await cache.answer("r", lambda: asyncio.sleep(0, b"after")) == b"after"


async def test_an_answer_expires_after_its_time() -> None:
    """Past the cache time the question is asked again."""
    cache = AnswerCache[bytes](0.05)
    assert await cache.answer("q", lambda: asyncio.sleep(0, b"first")) == b"first"
    async with asyncio.timeout(5):
        while await cache.answer("q", lambda: asyncio.sleep(0, b"second")) != b"second":
            await asyncio.sleep(0.01)
