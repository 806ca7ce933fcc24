"""The inbox between the MQTT connection and the pipeline, taken in batches by size or by timer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from citytel.ingest.mqtt import InboundMessage, Inbox


def message(mid: int, connection: int = 1) -> InboundMessage:
    return InboundMessage(
        topic="t",
        payload=b"{}",
        received_at=datetime.now(UTC),
        mid=mid,
        qos=1,
        connection=connection,
    )


async def test_full_batch_is_returned_at_once() -> None:
    """When a batch's worth is waiting, it is returned without waiting for the timer."""
    inbox = Inbox()
    inbox.put([message(mid) for mid in range(25)])
    async with asyncio.timeout(0.5):
        batch = await inbox.get_batch(10, max_wait=60)
    assert [m.mid for m in batch] == list(range(10))
    assert len(inbox) == 15


async def test_partial_batch_flushes_on_timer() -> None:
    """A partial batch is returned once the flush interval after its first message has passed."""
    inbox = Inbox()
    inbox.put([message(1)])
    async with asyncio.timeout(2):
        batch = await inbox.get_batch(100, max_wait=0.05)
    assert [m.mid for m in batch] == [1]


async def test_deliveries_wake_the_waiting_consumer_in_order() -> None:
    """A waiting consumer wakes when reads deliver, and keeps arrival order."""
    inbox = Inbox()

    async def deliver() -> None:
        for start in range(0, 50, 7):
            inbox.put([message(mid) for mid in range(start, min(start + 7, 50))])
            await asyncio.sleep(0)

    waiter = asyncio.create_task(inbox.get_batch(50, max_wait=1))
    await asyncio.sleep(0.01)
    await deliver()
    async with asyncio.timeout(5):
        batch = await waiter
    taken = [m.mid for m in batch]
    while len(taken) < 50:
        async with asyncio.timeout(5):
            taken += [m.mid for m in await inbox.get_batch(50, max_wait=0.05)]
    assert taken == list(range(50))


async def test_discarding_an_old_connection_keeps_the_new_one() -> None:
    """After a reconnect, what the old connection delivered is dropped: the broker resends it."""
    inbox = Inbox()
    inbox.put([message(mid, connection=1) for mid in range(3)])
    inbox.put([message(7, connection=2)])
    assert inbox.discard_connection(1) == 3
    async with asyncio.timeout(1):
        batch = await inbox.get_batch(10, max_wait=0.01)
    assert [(m.mid, m.connection) for m in batch] == [(7, 2)]


def big(mid: int, size: int) -> InboundMessage:
    return InboundMessage(
        topic="t", payload=b"x" * size, received_at=datetime.now(UTC), mid=mid, qos=1, connection=1
    )


async def test_batch_closes_at_its_byte_bound() -> None:
    """Big messages close a batch by bytes: it is returned at once, long before the timer."""
    inbox = Inbox()
    inbox.put([big(mid, 400) for mid in range(10)])
    async with asyncio.timeout(0.5):
        batch = await inbox.get_batch(1000, max_wait=60, max_bytes=1000)
    assert [m.mid for m in batch] == [0, 1, 2]
    assert len(inbox) == 7


async def test_byte_bound_wakes_a_waiting_consumer() -> None:
    """A consumer waiting for a batch is woken by the delivery that reaches the byte bound."""
    inbox = Inbox()
    inbox.put([big(0, 600)])
    getting = asyncio.ensure_future(inbox.get_batch(1000, max_wait=60, max_bytes=1000))
    await asyncio.sleep(0.05)
    assert not getting.done()
    inbox.put([big(1, 600), big(2, 600)])
    async with asyncio.timeout(0.5):
        batch = await getting
    assert [m.mid for m in batch] == [0, 1]
    assert len(inbox) == 1


async def test_a_message_over_the_byte_bound_is_a_batch_of_its_own() -> None:
    """One message bigger than the bound still goes: alone."""
    inbox = Inbox()
    inbox.put([big(0, 5000), big(1, 10)])
    async with asyncio.timeout(0.5):
        batch = await inbox.get_batch(1000, max_wait=60, max_bytes=1000)
    assert [m.mid for m in batch] == [0]
