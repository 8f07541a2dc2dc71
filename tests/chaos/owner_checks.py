"""The chaos harness's checks over owner sets, Ray-free (``tests/no_ray/test_chaos_checks.py``
feeds them synthetic observations to show each one can fail).

An *owner* is ``(scope, app, deployment)`` as in ``serve_cleanup.core.records``:
``("app", A, "")`` or ``("deployment", A, D)``; it is gone once app ``A`` is deleted (the
harness never redeploys an app without one of its deployments); or ``("job", J, "")``, a
Ray job, gone once job ``J`` has ended (the harness puts ``J`` with the deleted apps: the
second field names what must be gone). A ``scope="serve"`` call adds no owner. What is
registered is an actor or a placement group (its state: ``"DEAD"`` once REMOVED); the
checks do not tell them apart.

What the harness knows of one actor (``Calls``):

* ``confirmed``: owners whose ``register`` call *returned* (durable: the pair is kept);
* ``unconfirmed``: owners whose call was made and raised (it may or may not have been
  stored: a crash after the write, a timeout past a restart);
* ``serve_returned``: a ``scope="serve"`` call returned.

The actor is *registered* if any call returned. Its owner set is then ``confirmed`` plus
any subset of ``unconfirmed``. From that:

* it **may** die before shutdown only if some possible set is non-empty and entirely gone:
  every confirmed owner is gone (or being deleted) and at least one owner, confirmed or
  unconfirmed, is (a live confirmed owner, or a set that may be empty, keeps it alive);
* it **must** be dead after the settle window if every possible set is non-empty and
  entirely gone: ``confirmed`` is not empty and every owner, confirmed or not, is gone;
* after ``serve.shutdown()`` every registered actor must be dead and no key under its
  prefix (v1 ``KEY_PREFIX + id`` or v2 ``KEY_PREFIX + id + "/"``) may be left;
* while it lives, before shutdown, each confirmed owner that is still deployed has its
  pair's v2 key, and a registered actor has at least one key.

``gone_maybe`` is the apps whose ``serve.delete`` started (an actor of theirs may die from
then on); ``gone`` those whose ``serve.delete`` returned (their actors must die). For a job:
its driver exited, and GCS's job table says the job ended.

States: ``"ALIVE"`` (or another live state of Ray's), ``"DEAD"``, or ``"EXITING"``: a
graceful exit started (Ray marks the actor DEAD at once) while its process still runs its
``__ray_shutdown__`` hook. An exiting actor has been killed (it must not be, while an owner
lives) but is not yet dead (an orphan, after the settle window; a leak, after shutdown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from serve_cleanup.core import records

Owner = tuple  # (scope, app, deployment)
V1 = ("v1", "", "")  # what a v1 key stands for in ``key_owners``


@dataclass
class Calls:
    confirmed: set = field(default_factory=set)
    unconfirmed: set = field(default_factory=set)
    serve_returned: bool = False

    def note(self, owner: Optional[Owner], ok: bool) -> None:
        """One ``register`` call: ``owner`` None for ``scope="serve"``."""
        if owner is None:
            self.serve_returned = self.serve_returned or ok
        elif ok:
            self.confirmed.add(owner)
            self.unconfirmed.discard(owner)
        elif owner not in self.confirmed:
            self.unconfirmed.add(owner)

    @property
    def registered(self) -> bool:
        return self.serve_returned or bool(self.confirmed)


def _app(owner: Owner) -> str:
    return owner[1]


def may_die(c: Calls, gone_maybe: set) -> bool:
    """Before shutdown: whether the actor may already be dead."""
    if any(_app(o) not in gone_maybe for o in c.confirmed):
        return False
    return bool(c.confirmed) or any(_app(o) in gone_maybe for o in c.unconfirmed)


def must_die(c: Calls, gone: set) -> bool:
    """Before shutdown, after the settle window: whether the actor must be dead."""
    return (c.registered and bool(c.confirmed)
            and all(_app(o) in gone for o in c.confirmed | c.unconfirmed))


def key_owners(keys: Iterable[bytes], actor_ids: Iterable[str]) -> dict[str, set]:
    """The owners of each actor's keys (``V1`` for a v1 key; an unparsable key under the
    actor's prefix counts as ``("?", "", "")``). Keys are below Serve's KV prefix."""
    out: dict[str, set] = {a: set() for a in actor_ids}
    by_head = {records.record_key(a).encode(): a for a in out}
    for key in keys:
        head = key.split(records.SEP.encode(), 1)[0]
        a = by_head.get(head)
        if a is None:
            continue
        if head == key:
            out[a].add(V1)
            continue
        try:
            out[a].add(records.parse_key(key).owner)
        except Exception:
            out[a].add(("?", "", ""))
    return out


@dataclass
class Verdict:
    wrongly_killed: list = field(default_factory=list)
    orphans_alive: list = field(default_factory=list)
    stale_records: list = field(default_factory=list)
    owners_lost: list = field(default_factory=list)


def before_shutdown(calls: Mapping[str, Calls], states: Mapping[str, str], keys: Mapping[str, set],
                    gone_maybe: set, gone: set, self_killed: Iterable[str] = ()) -> Verdict:
    """Checks at a settled moment before shutdown (every registrant done). ``states``: actor
    id -> ``"ALIVE"``/``"DEAD"``/``"EXITING"``/...; ``keys``: ``key_owners``. Actors the
    harness killed itself (``self_killed``) must have no key left and are otherwise skipped."""
    v = Verdict()
    skip = set(self_killed)
    v.stale_records += [a for a in skip if keys.get(a)]
    for a, c in sorted(calls.items()):
        if a in skip or not c.registered:
            continue
        dead = states.get(a) == "DEAD"
        killed = dead or states.get(a) == "EXITING"
        if killed and not may_die(c, gone_maybe):
            v.wrongly_killed.append(a)
        if must_die(c, gone):
            if not dead:
                v.orphans_alive.append(a)
            elif keys.get(a):
                v.stale_records.append(a)
        if not killed:
            have = keys.get(a, set())
            live = {o for o in c.confirmed if _app(o) not in gone_maybe}
            if not have or not live <= have:
                v.owners_lost.append(a)
    return v


def after_shutdown(calls: Mapping[str, Calls], states: Mapping[str, str],
                   keys: Mapping[str, set]) -> tuple[list, list]:
    """After ``serve.shutdown()``: (leaked, with keys left) among registered actors."""
    registered = [a for a, c in sorted(calls.items()) if c.registered]
    return ([a for a in registered if states.get(a) != "DEAD"],
            [a for a in registered if keys.get(a)])
