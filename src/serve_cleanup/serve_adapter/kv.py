"""Where serve_cleanup's keys live in the GCS internal KV: the one module that composes them.

Every key this package stores (records, the crash-point markers, the pre-2.56 shutdown
flag) and the one key of Serve's it reads (Serve's "shutdown in progress" flag) lives in
KV namespace :data:`NAMESPACE` (Serve's ``SERVE_INTERNAL_KV_NAMESPACE``) behind the fixed
prefix :data:`PREFIX`:

    <PREFIX><key>        e.g.  ray-serve-serve-serve-cleanup-actor-<actor id hex>

``PREFIX`` is the prefix Serve's own ``RayInternalKVStore`` uses when the job that started
Serve runs in Ray namespace ``serve``. Serve's prefix is really ``ray-serve-<namespace of
that job>`` (checked on 2.54: a driver in namespace ``dbg`` gave a controller whose
``kv_store`` did not see a key written here), so serve_cleanup never relies on the two
being equal: it reads and writes its own keys only under this prefix, through this
module. What comes after the prefix (the record keys) is the core's schema
(``core.records``).

:class:`KvStore` is the blocking face and ``KvStore(...).aio`` (:class:`AsyncKvStore`)
the awaitable one, over one GCS client. Both take and return keys *below* the prefix,
and both run every request with one timeout: a GCS round trip takes about a
millisecond, so a request that takes :data:`TIMEOUT_S` means GCS is down or restarting,
and the caller retries later. ``AsyncKvStore`` is the core's ``RecordStore`` port.

This module imports no Ray: it takes any object with Ray's ``GcsClient`` KV methods.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

NAMESPACE: bytes = b"serve"  # Serve's SERVE_INTERNAL_KV_NAMESPACE
PREFIX: bytes = b"ray-serve-serve-"  # Serve's get_storage_key("ray-serve-serve", "")
TIMEOUT_S = 10.0

Key = Union[str, bytes]


def full_key(key: Key) -> bytes:
    """The whole GCS KV key of ``key`` (a key below :data:`PREFIX`)."""
    return PREFIX + (key.encode() if isinstance(key, str) else bytes(key))


def _below(full: bytes) -> bytes:
    return bytes(full)[len(PREFIX):]


# Each request as (GcsClient method without its "internal_kv_" / "async_internal_kv_"
# prefix, its arguments before the namespace, what to make of the answer): one policy for
# both faces, which only differ in whether they await the call.
_Request = tuple[str, tuple, Callable[[Any], Any]]


def _same(answer: Any) -> Any:
    return answer


def _get(key: Key) -> _Request:
    return "get", (full_key(key),), _same


def _get_many(keys: Iterable[Key]) -> _Request:
    return "multi_get", ([full_key(k) for k in keys],), lambda found: {_below(k): v for k, v in found.items()}


def _put(key: Key, value: bytes, overwrite: bool) -> _Request:
    return "put", (full_key(key), value, overwrite), bool


def _delete(key: Key, by_prefix: bool) -> _Request:
    return "del", (full_key(key), by_prefix), int


def _keys(prefix: Key) -> _Request:
    return "keys", (full_key(prefix),), lambda found: [_below(k) for k in found]


class KvStore:
    """serve_cleanup's keys, blocking (a driver, the CLI, Serve's synchronous hooks)."""

    def __init__(self, gcs_client: Any, timeout_s: float = TIMEOUT_S) -> None:
        self._gcs = gcs_client
        self._timeout = timeout_s
        self.aio = AsyncKvStore(gcs_client, timeout_s)

    def _run(self, request: _Request) -> Any:
        method, args, answer = request
        call = getattr(self._gcs, "internal_kv_" + method)
        return answer(call(*args, NAMESPACE, timeout=self._timeout))

    def get(self, key: Key) -> Optional[bytes]:
        return self._run(_get(key))

    def get_many(self, keys: Iterable[Key]) -> dict[bytes, bytes]:
        """The values of those ``keys`` that exist, in one request."""
        return self._run(_get_many(keys))

    def put(self, key: Key, value: bytes, overwrite: bool = True) -> bool:
        """True if the key was added (False: it existed; kept unless ``overwrite``)."""
        return self._run(_put(key, value, overwrite))

    def delete(self, key: Key) -> int:
        return self._run(_delete(key, False))

    def delete_prefix(self, prefix: Key) -> int:
        """Delete every key that starts with ``prefix``, in one request (GCS lists, then
        deletes: a put landing in between is deleted too). Returns how many."""
        return self._run(_delete(prefix, True))

    def keys(self, prefix: Key) -> list[bytes]:
        return self._run(_keys(prefix))


class AsyncKvStore:
    """serve_cleanup's keys, awaitable (the controller's event loop): the core's
    ``RecordStore``."""

    def __init__(self, gcs_client: Any, timeout_s: float = TIMEOUT_S) -> None:
        self._gcs = gcs_client
        self._timeout = timeout_s

    async def _run(self, request: _Request) -> Any:
        method, args, answer = request
        call = getattr(self._gcs, "async_internal_kv_" + method)
        return answer(await call(*args, NAMESPACE, timeout=self._timeout))

    async def get(self, key: Key) -> Optional[bytes]:
        return await self._run(_get(key))

    async def get_many(self, keys: Iterable[Key]) -> dict[bytes, bytes]:
        keys = list(keys)
        return await self._run(_get_many(keys)) if keys else {}

    async def put(self, key: Key, value: bytes, overwrite: bool = True) -> bool:
        return await self._run(_put(key, value, overwrite))

    async def delete(self, key: Key) -> int:
        return await self._run(_delete(key, False))

    async def delete_prefix(self, prefix: Key) -> int:
        return await self._run(_delete(prefix, True))

    async def keys(self, prefix: Key) -> list[bytes]:
        return await self._run(_keys(prefix))
