"""The lifecycle table: every move is a row, nothing else moves, and the core follows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fakes import World
from serve_cleanup.core.lifecycle import FINAL, TRANSITIONS, Event, LifecycleError, State, next_state
from serve_cleanup.core.ports import ServeState

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_move_is_a_row_of_the_table_and_nothing_else_moves(state, event):
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(LifecycleError):
            next_state(state, event)


def test_final_states_have_no_way_out_and_every_state_is_reachable():
    assert not any(s in FINAL for s, _ in TRANSITIONS)
    reachable = {State.LOADING} | set(TRANSITIONS.values())
    assert reachable == set(State)


def test_the_architecture_doc_shows_exactly_this_table():
    rows = set(re.findall(r"^\| `(\w+)` \| `(\w+)` \| `(\w+)` \|", ARCHITECTURE.read_text(), re.M))
    assert rows == {(s.name, e.name, t.name) for (s, e), t in TRANSITIONS.items()}


async def test_a_core_walks_the_table_from_start_to_close():
    w = World()
    core = await w.core(load=False)
    assert core.status()["state"] == "loading"
    await core.load()
    assert core.status()["state"] == "open"
    await core.registrar.register(w.actor())
    w.owners.serve_state = ServeState.SHUTTING_DOWN
    assert core.shutdown_step() is False
    assert core.status()["state"] == "shutting down"
    await w.shutdown(core)
    assert core.status()["state"] == "closed"
