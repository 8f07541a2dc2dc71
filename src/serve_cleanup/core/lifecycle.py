"""The core's lifecycle: one state, one transition function, the whole table here.

Every move the core makes between states is a row of ``TRANSITIONS``; nothing else sets
the state (``engine.CleanupCore._move`` calls ``next_state``). docs/architecture.md shows
the same table. A controller process starts in ``LOADING``; ``CLOSED`` and ``GAVE_UP``
are final for the process (a restarted controller is a new core).

=========================  ==================  =========================  ========================
state                      registrations       reconcile tick             Serve's shutdown step
=========================  ==================  =========================  ========================
``LOADING``                wait (bounded)      retries the read           starts shutting down
``OPEN``                   accepted            owners, sweep              starts shutting down
``LOADING_FOR_SHUTDOWN``   wait (bounded)      nothing (the pass reads)   "not yet"; pass reads
``SHUTTING_DOWN``          accepted            nothing (passes reap)      "not yet" until clean
``CLOSED``                 refused             nothing                    "done"
``GAVE_UP``                refused             nothing                    "done" (records stay)
=========================  ==================  =========================  ========================
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    LOADING = "loading"  # the records are not read yet (or the read failed: retried)
    OPEN = "open"
    LOADING_FOR_SHUTDOWN = "loading for shutdown"  # Serve shuts down; records still unread
    SHUTTING_DOWN = "shutting down"
    CLOSED = "closed"  # nothing was left: the controller may exit
    GAVE_UP = "gave up"  # the shutdown grace is over with work left: records stay in the KV


class Event(enum.Enum):
    LOADED = "loaded"  # every record was read
    SHUTDOWN_STARTED = "shutdown started"  # Serve's shutdown asked for the first time
    CLEAN = "clean"  # no record, no registration in flight, no take-back pending
    GRACE_OVER = "grace over"  # the shutdown grace passed with work left


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.LOADING, Event.LOADED): State.OPEN,
    (State.LOADING, Event.SHUTDOWN_STARTED): State.LOADING_FOR_SHUTDOWN,
    (State.OPEN, Event.SHUTDOWN_STARTED): State.SHUTTING_DOWN,
    (State.LOADING_FOR_SHUTDOWN, Event.LOADED): State.SHUTTING_DOWN,
    (State.LOADING_FOR_SHUTDOWN, Event.GRACE_OVER): State.GAVE_UP,
    (State.SHUTTING_DOWN, Event.CLEAN): State.CLOSED,
    (State.SHUTTING_DOWN, Event.GRACE_OVER): State.GAVE_UP,
}

LOADED = frozenset({State.OPEN, State.SHUTTING_DOWN})  # the records are in memory
UNREAD = frozenset({State.LOADING, State.LOADING_FOR_SHUTDOWN})  # registrations wait
ACCEPTING = LOADED  # a registration may write
FINAL = frozenset({State.CLOSED, State.GAVE_UP})
SHUTTING = frozenset({State.LOADING_FOR_SHUTDOWN, State.SHUTTING_DOWN})


class LifecycleError(RuntimeError):
    """A move the table does not have: a bug in the core, never an input error."""


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LifecycleError(f"no transition from {state.value!r} on {event.value!r}") from None
