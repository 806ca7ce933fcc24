"""Replaying dead letters: the same decoding as live ingestion, on stored messages."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from citytel.domain import DeadLetter, DecodedMessage
from citytel.ingest.mqtt import InboundMessage
from citytel.ingest.pipeline import Decoders, read_batch
from citytel.storage.dead_letters import (
    DeadLetterFilter,
    Letter,
    ReplayOutcome,
    replay_dead_letters,
)


async def replay(
    pool: asyncpg.Pool, decoders: Decoders, where: DeadLetterFilter, *, limit: int
) -> ReplayOutcome:
    """Re-run matching dead letters through ingestion; those that now store leave the store.

    This is how an operator recovers readings that arrived before their device was registered,
    or before a device profile was fixed.
    """

    async def decode(letters: Sequence[Letter]) -> tuple[list[DecodedMessage], list[DeadLetter]]:
        messages = [
            InboundMessage(
                topic=x.topic,
                payload=x.payload,
                received_at=x.received_at,
                mid=0,
                qos=0,
                connection=0,
            )
            for x in letters
        ]
        decoded, dead, _ignored = await read_batch(pool, messages, decoders)
        return decoded, dead

    return await replay_dead_letters(pool, where, decode, limit=limit)
