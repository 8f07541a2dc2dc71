"""Where records are kept: a small interface, and two backends.

``RecordStore`` is what the registry and controller depend on. ``GcsRecordStore`` keeps
records in the GCS internal KV beside Serve's own checkpoints (see ``records`` for the
key layout); ``InMemoryRecordStore`` backs the unit tests.

Writes are async so the controller awaits the GCS round trip without blocking its event
loop (Serve's control loop runs on the same loop). ``scan`` is sync: it runs once when
the controller starts, before the control loop does, and in drivers and the CLI;
``ascan`` is its async twin for a controller that could not read the KV at start.

Keys are ``str`` when the package writes them, but a scan returns the raw ``bytes``
found in the KV: anyone can put a key that is not UTF-8 under our prefix, and reading it
must never fail (the registry sets such entries aside).
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, Optional, Union

# One GCS round trip should take about a millisecond; a call that takes this long
# means GCS is down or restarting, and the caller retries later.
DEFAULT_TIMEOUT_S = 10.0


Key = Union[str, bytes]


def _b(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class RecordStore(abc.ABC):
    """Bytes under keys. Keys are the package's own (``records.KEY_PREFIX`` ...)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` durably before returning; raise on failure."""

    @abc.abstractmethod
    async def delete(self, key: Key) -> None:
        """Remove ``key`` (no error if it is absent); raise on failure."""

    @abc.abstractmethod
    def scan(self, prefix: str) -> dict[bytes, bytes]:
        """Every key starting with ``prefix`` (raw bytes), with its value."""

    async def ascan(self, prefix: str) -> dict[bytes, bytes]:
        """``scan`` without blocking the event loop."""
        return await asyncio.to_thread(self.scan, prefix)


class InMemoryRecordStore(RecordStore):
    """Keys as they were written (``str``, or ``bytes`` for a test's undecodable key)."""

    def __init__(self, data: Optional[dict[Key, bytes]] = None) -> None:
        self.data: dict[Key, bytes] = dict(data or {})
        self.puts = 0
        self.fail_next: Optional[Exception] = None

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err

    async def put(self, key: str, value: bytes) -> None:
        self._maybe_fail()
        self.puts += 1
        self.data[key] = bytes(value)

    async def delete(self, key: Key) -> None:
        self._maybe_fail()
        for k in (key, _b(key), _b(key).decode("utf-8", "surrogateescape")):
            self.data.pop(k, None)

    def scan(self, prefix: str) -> dict[bytes, bytes]:
        self._maybe_fail()
        p = _b(prefix)
        return {_b(k): v for k, v in self.data.items() if _b(k).startswith(p)}

    async def ascan(self, prefix: str) -> dict[bytes, bytes]:
        return self.scan(prefix)


class GcsRecordStore(RecordStore):
    """The GCS internal KV, in Serve's KV namespace and behind Serve's key prefix."""

    def __init__(self, gcs_client: Any, timeout_s: float = DEFAULT_TIMEOUT_S):
        from serve_cleanup import _compat  # Ray only where the GCS backend is used

        self._gcs = gcs_client
        self._timeout = timeout_s
        self._prefix = _compat.serve_kv_key_prefix()
        self._ns = _compat.SERVE_INTERNAL_KV_NAMESPACE

    def _full(self, key: Key) -> bytes:
        return self._prefix.encode() + _b(key)

    async def put(self, key: str, value: bytes) -> None:
        await self._gcs.async_internal_kv_put(
            self._full(key), value, True, self._ns, timeout=self._timeout
        )

    async def delete(self, key: Key) -> None:
        await self._gcs.async_internal_kv_del(self._full(key), False, self._ns, timeout=self._timeout)

    def scan(self, prefix: str) -> dict[bytes, bytes]:
        full_prefix = self._full(prefix)
        keys = self._gcs.internal_kv_keys(full_prefix, self._ns, timeout=self._timeout)
        if not keys:
            return {}
        found = self._gcs.internal_kv_multi_get(list(keys), self._ns, timeout=self._timeout)
        strip = len(self._full(""))
        return {bytes(k)[strip:]: v for k, v in found.items()}
