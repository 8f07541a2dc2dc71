"""A world for the Ray-free core: fakes that delay, forget, fail and crash between steps.

``World`` holds one KV store, actor table, killer, Serve and clock, all of which outlive
a controller process. ``World.core()`` builds a controller process over them: a
``Process`` and its *views* of those ports (``ProcessStore``, ``ProcessTable``,
``ProcessKiller``, ``ProcessFaults``). What a real controller holds in memory dies with
it: once the process crashed (``Crash``, raised at a crash point or by
``World.crash_now``), every call through its views raises ``Crash``, a request it had
in flight never answers (a lookup, a read) and a kill it had not yet sent is never sent;
with ``track_tasks`` its tasks are cancelled too. ``World.core()`` then builds the
restarted process from the same store, as Ray would. Nothing here imports Ray.

Time is a ``VirtualClock`` (moves when someone sleeps: the unit tests), or the
``VirtualTimeLoop``'s own clock (``LoopClock``: a discrete-event loop that jumps to the
next timer when no task can run; the simulation).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import selectors
import weakref
from typing import Any, Callable, Collection, Coroutine, Optional, Union

from serve_cleanup.core import records as rec
from serve_cleanup.core.admission import Registration
from serve_cleanup.core.engine import CleanupCore, Config
from serve_cleanup.core.ports import LIVE_STATES, PG_LIVE_STATES, ActorInfo, ServeState
from serve_cleanup.core.records import KIND_ACTOR, Record
from serve_cleanup.core.registry import SetAside, read_entry

SYSTEM_NS = "serve"
CONTROLLER_ID = "c0ffee" * 5 + "00"
SERVE_JOB = "01000000"  # the job that started Serve

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


def replace_record(record: Record, **changes: Any) -> Record:
    """``record`` with fields changed; ``scope``/``app``/``deployment``/``registered_at``
    change its first pair (the records of most tests have one)."""
    pair = {k: changes.pop(k) for k in ("scope", "app", "deployment", "registered_at") if k in changes}
    if pair:
        (scope, app, deployment), t = record.pairs[0]
        first = ((pair.get("scope", scope), pair.get("app", app), pair.get("deployment", deployment)),
                 float(pair.get("registered_at", t)))
        changes["pairs"] = (first,) + record.pairs[1:]
    return record.replace(**changes)


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


class SimDeadlock(RuntimeError):
    """No task can run and no timer is set: every task waits for something that never comes."""


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
    """Never blocks: a wait for the next timer moves the loop's virtual clock instead."""

    loop: "VirtualTimeLoop"

    def select(self, timeout: Optional[float] = None) -> list:  # type: ignore[override]
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise SimDeadlock("no task can run and no timer is set")
        if timeout > 0:
            self.loop.advance(timeout)
        return []


def _quiet_about_crashes(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A task that died with its process (``Crash``) and that nobody awaited is no news.
    (Reporting it formats a traceback, which parses source: from a finalizer that runs
    inside another ``ast.parse``, CPython 3.11.7 raises SystemError.)"""
    if not isinstance(context.get("exception"), Crash):
        loop.default_exception_handler(context)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A discrete-event loop: its clock (``time()``) is virtual and, whenever no task can
    run, jumps to the next timer. Every ``asyncio.sleep``, timeout and ``call_later`` runs
    in virtual time; a run is as deterministic as the tasks it runs."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0
        self.set_exception_handler(_quiet_about_crashes)

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


def run_in_virtual_time(main: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main(loop)`` on a fresh ``VirtualTimeLoop`` (for tests that measure time while
    several tasks sleep at once, which a ``VirtualClock`` adds up)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        close_loop(loop)
        gc.collect()  # finalize what the run left now, not inside a later ast.parse (3.11.7 bug)


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on ``loop``, let it finish cancelling, and close the loop."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


class LoopClock:
    """The core's ``Clock`` (and the fakes' ``now``) on a ``VirtualTimeLoop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def now(self) -> float:
        return self._loop.time()

    def monotonic(self) -> float:
        return self._loop.time()

    def time(self) -> float:
        return 1_700_000_000.0 + self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


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


# How long a request spends on the wire, by operation and key (or actor id): None, the
# default, means no time at all. The simulation derives it from the seed, the request and
# the key, so that the order in which the core issues requests (which may follow the
# iteration order of a set of str, i.e. the interpreter's hash seed) does not change when
# each one lands.
Latency = Callable[[str, str], float]


async def _travel(latency: Optional[Latency], op: str, key: Key) -> None:
    if latency is not None:
        await asyncio.sleep(latency(op, key if isinstance(key, str) else _b(key).decode("utf-8", "replace")))


class FakeStore(InMemoryRecordStore):
    """The KV: outlives every controller process. ``fail_*`` counters fail the next
    requests of a kind; ``on_keys`` runs right after a listing, ``put_gate`` holds puts
    and ``read_gate`` the answers of value reads (interleaving levers).
    Observers for the simulation: ``on_failure(op, key)`` when a request is failed,
    ``on_change(op, key)`` for every key written or deleted."""

    def __init__(self) -> None:
        super().__init__()
        self.put_gate: Optional[Gate] = None
        self.read_gate: Optional[Gate] = None  # holds the answers of value reads
        self.fail_puts = 0
        self.lose_put_answers = 0  # the next puts land, and then time out all the same
        self.fail_deletes = 0
        self.fail_reads = 0
        self.on_keys: Optional[Callable[[], None]] = None
        self.latency: Optional[Latency] = None
        self.on_failure: Optional[Callable[[str, bytes], None]] = None
        self.on_change: Optional[Callable[[str, bytes], None]] = None

    def _fail(self, op: str, key: Key) -> None:
        if self.on_failure is not None:
            self.on_failure(op, _b(key))
        raise TimeoutError("GCS did not answer")

    def _changed(self, op: str, key: Key) -> None:
        if self.on_change is not None:
            self.on_change(op, _b(key))

    async def put(self, key: str, value: bytes) -> None:
        if self.fail_puts:
            self.fail_puts -= 1
            self._fail("put", key)
        await super().put(key, value)
        self._changed("put", key)
        if self.lose_put_answers:
            self.lose_put_answers -= 1
            self._fail("put", key)

    async def delete(self, key) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            self._fail("delete", key)
        present = self._find(key) is not None
        await super().delete(key)
        if present:
            self._changed("delete", key)

    async def delete_prefix(self, prefix) -> int:
        if self.fail_deletes:
            self.fail_deletes -= 1
            self._fail("delete", prefix)
        await asyncio.sleep(0)  # a request: others run meanwhile
        doomed = list(self.scan(prefix)) if self.on_change is not None else []
        n = await super().delete_prefix(prefix)
        for key in doomed:
            self._changed("delete", key)
        return n

    async def keys(self, prefix) -> list[bytes]:
        if self.fail_reads:
            self.fail_reads -= 1
            self._fail("read", prefix)
        found = await super().keys(prefix)
        if self.on_keys is not None:
            self.on_keys()
        await asyncio.sleep(0)
        return found

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        if self.fail_reads:
            self.fail_reads -= 1
            self._fail("read", keys[0] if keys else b"")
        return await super().get_many(keys)

    def records(self) -> dict[str, Record]:
        """The readable records (set-aside entries left out), as a restarted controller
        would read them: one per actor, its keys resolved (``records.resolve_pairs``), the
        name, namespace and handle of its newest kept key."""
        groups: dict[str, list[tuple[bytes, Record]]] = {}
        for key, value in self.scan(rec.KEY_PREFIX).items():
            entry = read_entry(key, value)
            if isinstance(entry, Record):
                groups.setdefault(entry.actor_id, []).append((key, entry))
        out = {}
        for actor_id, items in groups.items():
            by_key = dict(items)
            kept, _ = rec.resolve_pairs([(r.pairs[0], k) for k, r in items])
            newest = by_key[max(kept, key=lambda item: item[0][1])[1]]
            out[actor_id] = newest.replace(pairs=[pair for pair, _ in kept])
        return out

    def record_of(self, actor_id: str) -> Optional[Record]:
        """The readable record of one actor (``records``, for its keys only)."""
        groups = []
        for key in self.keys_of(actor_id):
            entry = read_entry(key, self.data[self._find(key)])
            if isinstance(entry, Record) and entry.actor_id == actor_id:
                groups.append((key, entry))
        if not groups:
            return None
        by_key = dict(groups)
        kept, _ = rec.resolve_pairs([(r.pairs[0], k) for k, r in groups])
        newest = by_key[max(kept, key=lambda item: item[0][1])[1]]
        return newest.replace(pairs=[pair for pair, _ in kept])

    def keys_of(self, actor_id: str) -> list[bytes]:
        """The keys (v1 and v2) stored for ``actor_id``. (The simulation asks this after
        every step: one pass over the keys as stored, no copy of the store.)"""
        v1, v2 = rec.record_key(actor_id), rec.actor_prefix(actor_id)
        found = []
        for k in self.data:
            text = k if isinstance(k, str) else bytes(k).decode("utf-8", "surrogateescape")
            if text == v1 or text.startswith(v2):
                found.append(_b(k))
        return sorted(found)

    def set_aside(self) -> dict[bytes, bytes]:
        """The entries under the record prefix that are not readable records."""
        return {k: v for k, v in self.scan(rec.KEY_PREFIX).items() if isinstance(read_entry(k, v), SetAside)}


# The process whose code is running (set by ``Process.spawn``; inherited by the tasks it
# creates, which ``track_tasks`` then registers with that process).
_PROCESS: contextvars.ContextVar[Optional["Process"]] = contextvars.ContextVar("process", default=None)


class Process:
    """One controller process: ``alive`` until it crashed or exited. Its views of the
    world's ports refuse every call once it is dead; with ``track_tasks`` on the loop,
    every task it started is cancelled when it dies (a real process takes its coroutines,
    its pending kills and its requests in flight along)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.alive = True
        self.tasks: dict[asyncio.Task, None] = {}  # in creation order: a death cancels them in it
        # What its reads of the actor table showed: per task and kind (an actor's table, a
        # placement group's), the ids the task's latest bulk read of that table found
        # alive (and when); per id, when a lookup last found it alive.
        self.live_read: weakref.WeakKeyDictionary[asyncio.Task, dict[str, tuple[float, frozenset[str]]]] = (
            weakref.WeakKeyDictionary())
        self.found_alive: dict[str, float] = {}
        self.core: Optional[CleanupCore] = None
        self.on_death: Optional[Callable[[], None]] = None

    def check(self) -> None:
        if not self.alive:
            raise Crash()

    def die(self) -> None:
        was_alive, self.alive = self.alive, False
        if was_alive and self.on_death is not None:
            self.on_death()
        current = asyncio.current_task() if _running() else None
        for task in list(self.tasks):
            if task is not current:
                task.cancel()

    def adopt(self, task: asyncio.Task) -> None:
        if not self.alive:
            task.cancel()
        self.tasks[task] = None
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved: a task that died with its process is no news

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run ``coro`` as a task of this process (a remote call's handler, its loops)."""
        async def inside() -> Any:
            _PROCESS.set(self)
            return await coro

        task = asyncio.ensure_future(inside())
        task.add_done_callback(lambda _: coro.close())  # cancelled before it started: no warning
        self.adopt(task)
        return task


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def track_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Register every task with the process whose code created it."""
    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        process = _PROCESS.get()
        if process is not None:
            process.adopt(task)
        return task

    loop.set_task_factory(factory)


class ProcessStore:
    """One controller process's view of the KV: once that process crashed, nothing it
    still had under way lands (its coroutines die with ``Crash``). A request travels to
    the store and its answer back (``FakeStore.latency``); a crash meanwhile loses the
    request, or only its answer."""

    def __init__(self, store: FakeStore, process: Optional[Process] = None) -> None:
        self._kv = store
        self.process = process or Process(0)

    @property
    def alive(self) -> bool:
        return self.process.alive

    @alive.setter
    def alive(self, value: bool) -> None:
        self.process.alive = value

    def _check(self) -> None:
        self.process.check()

    async def _there(self, op: str, key: Key) -> None:
        await _travel(self._kv.latency, op, key)
        self._check()

    async def put(self, key: str, value: bytes) -> None:
        self._check()
        if self._kv.put_gate is not None:
            await self._kv.put_gate.wait()
            self._check()
        await self._there("put", key)
        await self._kv.put(key, value)
        await self._there("put", key)

    async def delete(self, key) -> None:
        self._check()
        await self._there("delete", key)
        await self._kv.delete(key)
        await self._there("delete", key)

    async def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        self._check()
        where = keys[0] if keys else b""
        await self._there("get_many", where)
        found = await self._kv.get_many(keys)
        if self._kv.read_gate is not None:
            await self._kv.read_gate.wait()
        await self._there("get_many", where)
        return found

    async def keys(self, prefix) -> list[bytes]:
        self._check()
        await self._there("keys", prefix)
        found = await self._kv.keys(prefix)
        self._check()
        await self._there("keys", prefix)
        return found

    async def delete_prefix(self, prefix) -> int:
        self._check()
        await self._there("delete_prefix", prefix)
        n = await self._kv.delete_prefix(prefix)
        await self._there("delete_prefix", prefix)
        return n


class FakeActorTable:
    """GCS's actor table, and its placement group table (``kinds``: the ids of other kinds
    than actors; each table answers for its own kind only). ``fail_lookups`` fails the
    next reads (a lookup or a bulk read); ``latency`` delays each; ``on_failure(op)``
    observes a failed read."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.actors: dict[str, ActorInfo] = {}
        self.kinds: dict[str, str] = {}  # ids that are not actors' -> their kind
        self.known_at: dict[str, float] = {}  # not in the table before this virtual time
        self.gate: Optional[Gate] = None
        self.fail_lookups = 0
        self.lookups = 0
        self.bulk_reads = 0
        self.latency: Optional[Latency] = None
        self.on_failure: Optional[Callable[[str], None]] = None

    def add(self, actor_id: str, name: str = "", namespace: str = "", known_in: float = 0.0,
            kind: str = KIND_ACTOR) -> None:
        live = "ALIVE" if kind == KIND_ACTOR else "CREATED"
        where = f"proc-{actor_id}" if kind == KIND_ACTOR else ""
        self.actors[actor_id] = ActorInfo(actor_id, name, namespace if name else "", live, address=where)
        self.known_at[actor_id] = self.clock.now + known_in
        if kind != KIND_ACTOR:
            self.kinds[actor_id] = kind

    def die(self, actor_id: str) -> None:
        info = self.actors[actor_id]
        final = "DEAD" if actor_id not in self.kinds else "REMOVED"
        self.actors[actor_id] = ActorInfo(actor_id, info.name, info.namespace, final, address=info.address)

    def alive(self, actor_id: str) -> bool:
        info = self.actors.get(actor_id)
        return info is not None and not info.dead

    def _known(self, actor_id: str, kind: str = KIND_ACTOR) -> Optional[ActorInfo]:
        if self.clock.now < self.known_at.get(actor_id, 0.0) or self.kinds.get(actor_id, KIND_ACTOR) != kind:
            return None
        return self.actors.get(actor_id)

    async def _request(self, op: str, key: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.latency is None:
            await asyncio.sleep(0)
        else:
            await _travel(self.latency, op, key)
        if self.fail_lookups:
            self.fail_lookups -= 1
            if self.on_failure is not None:
                self.on_failure(op)
            raise TimeoutError("GCS did not answer")

    async def lookup(self, actor_id: str, kind: str = KIND_ACTOR) -> Optional[ActorInfo]:
        self.lookups += 1
        await self._request("lookup", actor_id)
        return self._known(actor_id, kind)

    async def live(self, actor_ids: Collection[str], kind: str = KIND_ACTOR) -> dict[str, ActorInfo]:
        self.bulk_reads += 1
        await self._request("live", min(actor_ids, default=""))
        out = {}
        states = LIVE_STATES if kind == KIND_ACTOR else PG_LIVE_STATES
        for a in actor_ids:
            info = self._known(a, kind)
            if info is not None and info.state in states:
                out[a] = info
        return out


class ProcessTable:
    """One controller process's reads of the actor table: a read in flight when the
    process dies never answers. Notes what each read found alive (``Process.live_read``,
    ``Process.found_alive``)."""

    def __init__(self, table: FakeActorTable, process: Process) -> None:
        self._table = table
        self.process = process

    async def lookup(self, actor_id: str, kind: str = KIND_ACTOR) -> Optional[ActorInfo]:
        self.process.check()
        info = await self._table.lookup(actor_id, kind)
        self.process.check()
        if info is not None and not info.dead:
            self.process.found_alive[actor_id] = self._table.clock.now
        return info

    async def live(self, actor_ids: Collection[str], kind: str = KIND_ACTOR) -> dict[str, ActorInfo]:
        self.process.check()
        ids = list(actor_ids)
        found = await self._table.live(ids, kind)
        self.process.check()
        task = asyncio.current_task()
        if task is not None:
            self.process.live_read.setdefault(task, {})[kind] = (self._table.clock.now, frozenset(found))
        return found


def handle_of(actor_id: str) -> bytes:
    """The fakes' serialized actor handle: it reaches exactly ``actor_id``."""
    return b"h" + actor_id.encode()


class FakeKiller:
    """Reaches an actor as the Ray killer does: through the record's handle bytes if they
    rebuild a handle to exactly the recorded id, else by the record's name and namespace if
    the actor of that name has the recorded id; otherwise the actor cannot be reached
    (False). A placement group is removed by its id alone; a record whose kind is not its
    id's reaches nothing. Kills take effect at once, unless the actor is ``undying`` or ``unreachable``.
    ``check`` asserts at the moment of a kill; ``on_kill(record, was_alive)`` observes
    each kill sent; ``latency`` delays a kill before it is sent (rebuilding the handle,
    the by-name lookup)."""

    def __init__(self, table: FakeActorTable) -> None:
        self.table = table
        self.kills: list[str] = []
        self.undying: set[str] = set()
        self.unreachable: set[str] = set()
        self.hanging: set[str] = set()  # a graceful exit never ends (its __ray_shutdown__ hangs)
        self.graceful: list[str] = []  # actors that ran their graceful exit to its end
        self.in_hook: set[str] = set()  # DEAD in the table, their process still in its hook
        self.check: Optional[Callable[[Record], None]] = None  # asserts at the moment of a kill
        self.on_kill: Optional[Callable[[Record, bool], None]] = None
        # Observers of graceful exits: ``on_terminate(record, was_alive)`` once an exit was
        # asked for (after its effect); ``on_kill_process(record, where)`` at a process kill,
        # before its effect.
        self.on_terminate: Optional[Callable[[Record, bool], None]] = None
        self.on_kill_process: Optional[Callable[[Record, str], None]] = None
        self.latency: Optional[Latency] = None

    async def kill(self, record: Record) -> bool:
        if self.check is not None:
            self.check(record)
        if record.actor_id in self.unreachable or not self._reaches(record):
            return False
        was_alive = self.table.alive(record.actor_id)
        self.kills.append(record.actor_id)
        if record.actor_id not in self.undying and record.actor_id in self.table.actors:
            self.table.die(record.actor_id)
        if self.on_kill is not None:
            self.on_kill(record, was_alive)
        return True


    async def terminate(self, record: Record) -> bool:
        """The graceful exit, as Ray does it: the table says DEAD at once; the process
        ends at once too (its hook ran: ``graceful``) unless it is ``hanging`` (its
        process stays in its hook: ``in_hook``) or ``undying`` (nothing happens)."""
        if self.check is not None:
            self.check(record)
        if record.actor_id in self.unreachable or not self._reaches(record):
            return False
        was_alive = self.table.alive(record.actor_id)
        if record.actor_id not in self.undying and was_alive:
            self.table.die(record.actor_id)
            if record.actor_id in self.hanging:
                self.in_hook.add(record.actor_id)
            else:
                self.graceful.append(record.actor_id)
        if self.on_terminate is not None:
            self.on_terminate(record, was_alive)
        return True

    def end_hook(self, actor_id: str) -> bool:
        """A hook that was running (``in_hook``) returns: the process ends, gracefully."""
        if actor_id not in self.in_hook:
            return False
        self.in_hook.discard(actor_id)
        self.graceful.append(actor_id)
        return True

    async def exited(self, where: dict[str, str]) -> set[str]:
        return {a for a, w in where.items()
                if a not in self.in_hook and not (a in self.undying and self.table.alive(a))}

    async def kill_process(self, record: Record, where: str) -> None:
        if self.on_kill_process is not None:
            self.on_kill_process(record, where)
        if where == f"proc-{record.actor_id}" and record.actor_id in self.in_hook:
            self.in_hook.discard(record.actor_id)
            if self.on_kill is not None:
                self.on_kill(record, True)

    def _reaches(self, record: Record) -> bool:
        if self.table.kinds.get(record.actor_id, KIND_ACTOR) != record.kind:
            return False  # an actor's kill never reaches a placement group (not even by name), nor the reverse
        if record.kind != KIND_ACTOR:  # a placement group is removed by its id alone
            return True
        if record.handle == handle_of(record.actor_id):
            return True
        if not record.name:
            return False
        return any(a.name == record.name and a.namespace == record.namespace and not a.dead
                   and a.actor_id == record.actor_id for a in self.table.actors.values())


class ProcessKiller:
    """One controller process's kills: a kill not yet sent when the process dies is never
    sent."""

    def __init__(self, killer: FakeKiller, process: Process) -> None:
        self._killer = killer
        self.process = process

    async def kill(self, record: Record) -> bool:
        self.process.check()
        await _travel(self._killer.latency, "kill", record.actor_id)
        self.process.check()
        return await self._killer.kill(record)

    async def terminate(self, record: Record) -> bool:
        self.process.check()
        await _travel(self._killer.latency, "kill", record.actor_id)
        self.process.check()
        return await self._killer.terminate(record)

    async def exited(self, where: dict[str, str]) -> set[str]:
        self.process.check()
        return await self._killer.exited(where)

    async def kill_process(self, record: Record, where: str) -> None:
        self.process.check()
        await self._killer.kill_process(record, where)


class FakeJobs:
    """GCS's job table: ``running`` jobs; any other id has ended (or is unknown).
    ``reads`` counts the reads (each one of the whole table in Ray); ``on_read(op, ids)``
    observes each (``ended`` or ``alive``) as it is asked."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.reads = 0
        self.on_read: Optional[Callable[[str, list[str]], None]] = None

    async def ended(self, job_ids) -> set[str]:
        self.reads += 1
        if self.on_read is not None:
            self.on_read("ended", list(job_ids))
        await asyncio.sleep(0)
        return {j for j in job_ids if j not in self.running}

    async def alive(self, job_id: str) -> bool:
        self.reads += 1
        if self.on_read is not None:
            self.on_read("alive", [job_id])
        await asyncio.sleep(0)
        return job_id in self.running


class FakeServe:
    controller_id = CONTROLLER_ID
    controller_job = SERVE_JOB

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

    def is_own_placement_group(self, name: str, creator: str) -> bool:
        return creator == self.controller_id or name.startswith("SERVE_REPLICA")


class ProcessFaults:
    """Crash points armed by name in ``World.crash_at``; each fires once, in the process
    that reaches it first (a dead process's code reaches none)."""

    def __init__(self, world: "World", process: Process) -> None:
        self._world = world
        self.process = process

    def reached(self, point: str) -> None:
        self.process.check()
        self._world._crash(point)


class World:
    def __init__(self, config: Optional[Config] = None, clock: Any = None) -> None:
        self.clock = clock or VirtualClock()
        self.store = FakeStore()
        self.table = FakeActorTable(self.clock)
        self.killer = FakeKiller(self.table)
        self.owners = FakeServe()
        self.jobs = FakeJobs()
        self.config = config or Config()
        self.crash_at: set[str] = set()  # crash points armed (each fires once)
        self.crashes: list[str] = []
        self._next_id = 0
        self.current: Optional[CleanupCore] = None
        self.process: Optional[Process] = None
        self.processes = 0
        self.logger: Any = None  # given to every core (None: the core's default)
        self.metrics: Any = None

    @property
    def _view(self) -> Optional[Process]:
        return self.process

    def actor(self, name: str = "", namespace: str = "ns", known_in: float = 0.0) -> Registration:
        self._next_id += 1
        # Like Ray's, ids spread over the 256 buckets of their first byte.
        actor_id = f"{self._next_id * 167 % 256:02x}{self._next_id:030x}"
        self.table.add(actor_id, name, namespace, known_in)
        return Registration(actor_id=actor_id, name=name, namespace=namespace if name else "",
                            handle=handle_of(actor_id))

    def _crash(self, point: str) -> None:
        if point in self.crash_at:
            self.crash_at.discard(point)
            self.crashes.append(point)
            self.crash_now()

    def crash_now(self) -> None:
        if self.process is not None:
            self.process.die()
        raise Crash()

    def new_process(self) -> CleanupCore:
        """A (re)started controller process over this world, not loaded yet; the previous
        one is dead."""
        if self.process is not None:
            self.process.die()
        self.processes += 1
        process = self.process = Process(self.processes)
        core = CleanupCore(
            ProcessStore(self.store, process), ProcessTable(self.table, process),
            ProcessKiller(self.killer, process), self.owners,
            clock=self.clock, faults=ProcessFaults(self, process), config=self.config,
            logger=self.logger, metrics=self.metrics, jobs=self.jobs,
        )
        process.core = self.current = core
        return core

    async def core(self, load: bool = True) -> CleanupCore:
        """A (re)started controller process over this world (the previous one is dead).
        Raises ``Crash`` if it crashed while loading (``mid_rehydrate``)."""
        core = self.new_process()
        if load:
            await core.load()
        return core

    async def shutdown(self, core: CleanupCore, max_steps: int = 10_000) -> int:
        """Drive Serve's shutdown hook tick by tick until the core lets it finish."""
        for step in range(max_steps):
            if core is self.current and self.process is not None and not self.process.alive:
                raise Crash()  # the process died in a pass: Ray restarts it
            if core.shutdown_step():
                return step
            await self.clock.sleep(0.1)
        raise AssertionError("shutdown never finished")

    async def ticks(self, core: CleanupCore, n: int) -> None:
        for _ in range(n):
            await core.tick()
            await self.clock.sleep(core.config.reconcile_interval_s)
