"""A signal that wakes every waiting task: how a change reaches the streams waiting for one."""

from __future__ import annotations

import asyncio


class Signal:
    """Wakes every waiter each time it is notified."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake the current waiters; later waiters wait for the next notification."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, within_s: float) -> bool:
        """True when notified within ``within_s`` seconds, False when the time ran out."""
        event = self._event
        try:
            async with asyncio.timeout(within_s):
                await event.wait()
        except TimeoutError:
            return False
        return True
