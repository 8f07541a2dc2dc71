"""Where records are kept: a three-method interface, and two backends.

``RecordStore`` is what the registry and controller depend on. ``GcsRecordStore`` keeps
records in the GCS internal KV beside Serve's own checkpoints (see ``records`` for the
key layout); ``InMemoryRecordStore`` backs the unit tests.

Writes are async so the controller awaits the GCS round trip without blocking its event
loop (Serve's control loop runs on the same loop). The scan is sync: it runs once when
the controller starts, before the control loop does, and in drivers and the CLI.
"""

from __future__ import annotations

import abc
from typing import Optional

from serve_cleanup import _compat

# One GCS round trip should take about a millisecond; a call that takes this long
# means GCS is down or restarting, and the caller retries later.
DEFAULT_TIMEOUT_S = 10.0


class RecordStore(abc.ABC):
    """Bytes under string keys. Keys are the package's own (``records.KEY_PREFIX`` ...)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` durably before returning; raise on failure."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is absent); raise on failure."""

    @abc.abstractmethod
    def scan(self, prefix: str) -> dict[str, bytes]:
        """Every key starting with ``prefix``, with its value."""


class InMemoryRecordStore(RecordStore):
    def __init__(self, data: Optional[dict[str, bytes]] = None) -> None:
        self.data: dict[str, bytes] = dict(data or {})
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

    async def delete(self, key: str) -> None:
        self._maybe_fail()
        self.data.pop(key, None)

    def scan(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}


class GcsRecordStore(RecordStore):
    """The GCS internal KV, in Serve's KV namespace and behind Serve's key prefix."""

    def __init__(self, gcs_client: _compat.GcsClient, timeout_s: float = DEFAULT_TIMEOUT_S):
        self._gcs = gcs_client
        self._timeout = timeout_s
        self._prefix = _compat.serve_kv_key_prefix()
        self._ns = _compat.SERVE_INTERNAL_KV_NAMESPACE

    def _full(self, key: str) -> bytes:
        return (self._prefix + key).encode()

    async def put(self, key: str, value: bytes) -> None:
        await self._gcs.async_internal_kv_put(
            self._full(key), value, True, self._ns, timeout=self._timeout
        )

    async def delete(self, key: str) -> None:
        await self._gcs.async_internal_kv_del(self._full(key), False, self._ns, timeout=self._timeout)

    def scan(self, prefix: str) -> dict[str, bytes]:
        full_prefix = self._full(prefix)
        keys = self._gcs.internal_kv_keys(full_prefix, self._ns, timeout=self._timeout)
        if not keys:
            return {}
        found = self._gcs.internal_kv_multi_get(list(keys), self._ns, timeout=self._timeout)
        strip = len(self._prefix)
        return {k.decode()[strip:]: v for k, v in found.items()}
