"""The core's two kinds of lock, both asyncio-only (the controller runs one event loop).

``KeyedLocks``: one lock per actor id, created on demand and dropped when nobody holds or
awaits it. A registration, an unregistration and a reaper's check-then-kill of the same
actor never interleave.

``WriteGate``: every KV write holds it *shared*; a bulk delete holds it *alone*. The bulk
delete first waits for the writes under way to land, and new writes wait until it is
done, so no write can land between the bulk delete's listing of the keys and its
deletes (which would delete a record nobody checked: a broken I1). No task holds an
actor's lock while it waits for the gate alone, so the two kinds never wait on each
other in a circle.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Optional


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def busy(self, key: str) -> bool:
        """Someone holds or awaits the lock of ``key``."""
        return key in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            self._leave(key)

    async def claim(self, key: str) -> None:
        """Hold the lock of ``key``, which nobody holds or awaits (``busy`` is False):
        the fast path's ``hold``, with no context manager. It never suspends (a fresh
        lock's ``acquire`` returns at once), so nobody sees the lock free in between.
        ``release`` gives it back; whoever asks ``hold`` meanwhile waits as for any
        holder."""
        if key in self._locks:
            raise RuntimeError(f"lock of {key!r} is busy")
        lock = asyncio.Lock()
        self._locks[key] = (lock, 1)
        await lock.acquire()

    def release(self, key: str) -> None:
        self._locks[key][0].release()
        self._leave(key)

    def _leave(self, key: str) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)


class WriteGate:
    def __init__(self) -> None:
        self._writers = 0
        self._closed: Optional[asyncio.Event] = None  # set when the bulk holder is done
        self._drained: Optional[asyncio.Event] = None  # set when the last writer left

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._closed is not None:
            await self._closed.wait()
        self._writers += 1
        try:
            yield
        finally:
            self.leave()

    @property
    def open(self) -> bool:
        """No bulk delete holds or awaits the gate alone: ``enter`` would succeed."""
        return self._closed is None

    def enter(self) -> bool:
        """``shared()`` without awaiting, for the fast path: True if the gate was open
        and the caller now holds it shared (``leave`` when done), False if a bulk delete
        holds or waits for it alone (then take ``shared()``)."""
        if self._closed is not None:
            return False
        self._writers += 1
        return True

    def leave(self) -> None:
        self._writers -= 1
        if not self._writers and self._drained is not None:
            self._drained.set()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        while self._closed is not None:  # one bulk holder at a time
            await self._closed.wait()
        done = self._closed = asyncio.Event()
        try:
            while self._writers:
                self._drained = asyncio.Event()
                await self._drained.wait()
            yield
        finally:
            self._closed = self._drained = None
            done.set()
