"""A world for the Ray-free core: fakes that delay, forget, fail and crash between steps.

``World`` holds one KV store, actor table, killer, Serve and virtual clock, all of which
outlive a core. ``World.core()`` builds a controller process over them; a simulated crash
(``Crash``, raised at a crash point or by ``World.crash_now``) kills that process: its
pending writes never land and it is never used again. ``World.core()`` then builds the
restarted one from the same store, as Ray would. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Collection, Optional, Union

from serve_cleanup.core import records as rec
from serve_cleanup.core.admission import Registration
from serve_cleanup.core.engine import CleanupCore, Config
from serve_cleanup.core.ports import LIVE_STATES, ActorInfo, ServeState
from serve_cleanup.core.records import Record

SYSTEM_NS = "serve"
CONTROLLER_ID = "c0ffee" * 5 + "00"

Key = Union[str, bytes]


def _b(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class InMemoryRecordStore:
    """``RecordStore`` in a dict; keys as written (``str``, or ``bytes`` for a test's
    undecodable key). ``fail_next`` fails the next call of any kind."""

    def __init__(self, data: Optional[dict[Key, bytes]] = None) -> None:
        self.data: dict[Key, bytes] = dict(data or {})
        self.puts = 0
        self.requests = 0
        self.prefix_deletes: list[bytes] = []
        self.fail_next: Optional[Exception] = None

    def _maybe_fail(self) -> None:
        self.requests += 1
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err

    def _find(self, key: Key) -> Optional[Key]:
        for k in (key, _b(key), _b(key).decode("utf-8", "surrogateescape")):
            if k in self.data:
                return k
        return None

    async def put(self, key: str, value: bytes) -> None:
        self._maybe_fail()
        self.puts += 1
        self.data[key] = bytes(value)

    async def delete(self, key: Key) -> None:
        self._maybe_fail()
        k = self._find(key)
        if k is not None:
            del self.data[k]

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        self._maybe_fail()
        out = {}
        for key in keys:
            k = self._find(key)
            if k is not None:
                out[_b(key)] = self.data[k]
        return out

    async def keys(self, prefix: Key) -> list[bytes]:
        self._maybe_fail()
        p = _b(prefix)
        return [_b(k) for k in self.data if _b(k).startswith(p)]

    async def delete_prefix(self, prefix: Key) -> int:
        self._maybe_fail()
        p = _b(prefix)
        self.prefix_deletes.append(p)
        doomed = [k for k in self.data if _b(k).startswith(p)]
        for k in doomed:
            del self.data[k]
        return len(doomed)

    def scan(self, prefix: Key = rec.KEY_PREFIX) -> dict[bytes, bytes]:
        """Synchronous view for assertions (not part of the port)."""
        p = _b(prefix)
        return {_b(k): v for k, v in self.data.items() if _b(k).startswith(p)}


def is_system(name: str, namespace: str) -> bool:
    return namespace == SYSTEM_NS and name.startswith(("SERVE_CONTROLLER", "SERVE_PROXY", "SERVE_REPLICA"))


class Crash(BaseException):
    """The controller process died here (``os._exit`` in the real one)."""


class VirtualClock:
    """Time moves only when someone sleeps; every sleep yields to the loop once."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


class Gate:
    """Holds the next operations of a kind until released (an interleaving lever)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.waiting = 0

    async def wait(self) -> None:
        self.waiting += 1
        await self._event.wait()
        self.waiting -= 1

    def open(self) -> None:
        self._event.set()


class FakeStore(InMemoryRecordStore):
    """The KV: outlives every controller process. ``fail_*`` counters fail the next
    requests of a kind; ``on_keys`` runs right after a listing (an interleaving lever)."""

    def __init__(self) -> None:
        super().__init__()
        self.put_gate: Optional[Gate] = None
        self.fail_puts = 0
        self.fail_deletes = 0
        self.fail_reads = 0
        self.on_keys: Optional[Callable[[], None]] = None

    async def put(self, key: str, value: bytes) -> None:
        if self.fail_puts:
            self.fail_puts -= 1
            raise TimeoutError("GCS did not answer")
        await super().put(key, value)

    async def delete(self, key) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise TimeoutError("GCS did not answer")
        await super().delete(key)

    async def delete_prefix(self, prefix) -> int:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise TimeoutError("GCS did not answer")
        await asyncio.sleep(0)  # a request: others run meanwhile
        return await super().delete_prefix(prefix)

    async def keys(self, prefix) -> list[bytes]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise TimeoutError("GCS did not answer")
        found = await super().keys(prefix)
        if self.on_keys is not None:
            self.on_keys()
        await asyncio.sleep(0)
        return found

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise TimeoutError("GCS did not answer")
        return await super().get_many(keys)

    def records(self) -> dict[str, Record]:
        return {r.actor_id: r for r in (rec.decode(v) for v in self.scan(rec.KEY_PREFIX).values())}


class ProcessStore:
    """One controller process's view of the KV: once that process crashed, nothing it
    still had under way lands (its coroutines die with ``Crash``)."""

    def __init__(self, store: FakeStore) -> None:
        self._kv = store
        self.alive = True

    def _check(self) -> None:
        if not self.alive:
            raise Crash()

    async def put(self, key: str, value: bytes) -> None:
        self._check()
        if self._kv.put_gate is not None:
            await self._kv.put_gate.wait()
            self._check()
        await self._kv.put(key, value)

    async def delete(self, key) -> None:
        self._check()
        await self._kv.delete(key)

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        self._check()
        return await self._kv.get_many(keys)

    async def keys(self, prefix) -> list[bytes]:
        self._check()
        found = await self._kv.keys(prefix)
        self._check()
        return found

    async def delete_prefix(self, prefix) -> int:
        self._check()
        return await self._kv.delete_prefix(prefix)


class FakeActorTable:
    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.actors: dict[str, ActorInfo] = {}
        self.known_at: dict[str, float] = {}  # not in the table before this virtual time
        self.gate: Optional[Gate] = None
        self.fail_lookups = 0
        self.lookups = 0
        self.bulk_reads = 0

    def add(self, actor_id: str, name: str = "", namespace: str = "", known_in: float = 0.0) -> None:
        self.actors[actor_id] = ActorInfo(actor_id, name, namespace if name else "", "ALIVE")
        self.known_at[actor_id] = self.clock.now + known_in

    def die(self, actor_id: str) -> None:
        info = self.actors[actor_id]
        self.actors[actor_id] = ActorInfo(actor_id, info.name, info.namespace, "DEAD")

    def alive(self, actor_id: str) -> bool:
        info = self.actors.get(actor_id)
        return info is not None and not info.dead

    def _known(self, actor_id: str) -> Optional[ActorInfo]:
        if self.clock.now < self.known_at.get(actor_id, 0.0):
            return None
        return self.actors.get(actor_id)

    async def _request(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail_lookups:
            self.fail_lookups -= 1
            raise TimeoutError("GCS did not answer")

    async def lookup(self, actor_id: str) -> Optional[ActorInfo]:
        self.lookups += 1
        await self._request()
        return self._known(actor_id)

    async def live(self, actor_ids: Collection[str]) -> dict[str, ActorInfo]:
        self.bulk_reads += 1
        await self._request()
        out = {}
        for a in actor_ids:
            info = self._known(a)
            if info is not None and info.state in LIVE_STATES:
                out[a] = info
        return out


class FakeKiller:
    """Kills take effect at once, unless the actor is ``undying`` or ``unreachable``."""

    def __init__(self, table: FakeActorTable) -> None:
        self.table = table
        self.kills: list[str] = []
        self.undying: set[str] = set()
        self.unreachable: set[str] = set()
        self.check: Optional[Callable[[Record], None]] = None  # asserts at the moment of a kill

    async def kill(self, record: Record) -> bool:
        if self.check is not None:
            self.check(record)
        if record.actor_id in self.unreachable:
            return False
        self.kills.append(record.actor_id)
        if record.actor_id not in self.undying and record.actor_id in self.table.actors:
            self.table.die(record.actor_id)
        return True


class FakeServe:
    controller_id = CONTROLLER_ID

    def __init__(self) -> None:
        self.serve_state = ServeState.RUNNING
        self.deployments: set[tuple[str, str]] = set()

    def deploy(self, app: str, *deployments: str) -> None:
        self.deployments |= {(app, d) for d in deployments or ("D",)}

    def delete_app(self, app: str) -> None:
        self.deployments = {(a, d) for a, d in self.deployments if a != app}

    def state(self) -> ServeState:
        return self.serve_state

    def live_owners(self, apps: set[str]) -> tuple[set[str], set[tuple[str, str]]]:
        return {a for a in apps if any(a == x for x, _ in self.deployments)}, set(self.deployments)

    def is_own_actor(self, name: str, namespace: str) -> bool:
        return is_system(name, namespace)


class Faults:
    """Crash points armed by name; each fires once."""

    def __init__(self, world: "World") -> None:
        self._world = world

    def reached(self, point: str) -> None:
        self._world._crash(point)


class World:
    def __init__(self, config: Optional[Config] = None) -> None:
        self.clock = VirtualClock()
        self.store = FakeStore()
        self.table = FakeActorTable(self.clock)
        self.killer = FakeKiller(self.table)
        self.owners = FakeServe()
        self.config = config or Config()
        self.crash_at: set[str] = set()  # crash points armed (each fires once)
        self.crashes: list[str] = []
        self._next_id = 0
        self.current: Optional[CleanupCore] = None
        self._view: Optional[ProcessStore] = None

    def actor(self, name: str = "", namespace: str = "ns", known_in: float = 0.0) -> Registration:
        self._next_id += 1
        # Like Ray's, ids spread over the 256 buckets of their first byte.
        actor_id = f"{self._next_id * 167 % 256:02x}{self._next_id:030x}"
        self.table.add(actor_id, name, namespace, known_in)
        return Registration(actor_id=actor_id, name=name, namespace=namespace if name else "",
                            handle=b"h" + actor_id.encode())

    def _crash(self, point: str) -> None:
        if point in self.crash_at:
            self.crash_at.discard(point)
            self.crashes.append(point)
            self.crash_now()

    def crash_now(self) -> None:
        if self._view is not None:
            self._view.alive = False
        raise Crash()

    async def core(self, load: bool = True) -> CleanupCore:
        """A (re)started controller process over this world (the previous one is dead)."""
        if self._view is not None:
            self._view.alive = False
        self._view = ProcessStore(self.store)
        core = CleanupCore(
            self._view, self.table, self.killer, self.owners,
            clock=self.clock, faults=Faults(self), config=self.config,
        )
        self.current = core
        if load:
            await core.load()
        return core

    async def shutdown(self, core: CleanupCore, max_steps: int = 10_000) -> int:
        """Drive Serve's shutdown hook tick by tick until the core lets it finish."""
        for step in range(max_steps):
            if core is self.current and self._view is not None and not self._view.alive:
                raise Crash()  # the process died in a pass: Ray restarts it
            if core.shutdown_step():
                return step
            await self.clock.sleep(0.1)
        raise AssertionError("shutdown never finished")

    async def ticks(self, core: CleanupCore, n: int) -> None:
        for _ in range(n):
            await core.tick()
            await self.clock.sleep(core.config.reconcile_interval_s)
