"""One asyncio lock per key (an order, a PaymentIntent), alive only while someone holds or waits for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """``async with locks.hold(key)``: one holder per key at a time in this process; other keys run freely."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # key -> its lock, how many want it

    def locked(self, key: str) -> bool:
        entry = self._locks.get(key)
        return entry is not None and entry[0].locked()

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, wanted = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        wanted[0] += 1
        try:
            async with lock:
                yield
        finally:
            wanted[0] -= 1
            if not wanted[0]:
                self._locks.pop(key, None)
