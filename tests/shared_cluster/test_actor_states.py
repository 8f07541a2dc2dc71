"""``actor_states`` reads the whole actor table at once for many ids; the answer
must be the same as one lookup per id."""

from __future__ import annotations

import os

import pytest
import ray

from ray_helpers import wait_dead
from serve_cleanup.client.gcs import actor_states

pytestmark = pytest.mark.ray


def test_bulk_and_per_id_states_agree(actors):
    alive = actors()
    dead = actors()
    ray.kill(dead, no_restart=True)
    wait_dead(dead)
    never = [os.urandom(16).hex() for _ in range(70)]  # enough ids for the bulk read
    ids = [alive._actor_id.hex(), dead._actor_id.hex()] + never

    bulk = actor_states(ids)
    few = actor_states(ids[:3])

    assert bulk[ids[0]] == "ALIVE" and bulk[ids[1]] == "DEAD"
    assert all(bulk[i] == "DEAD" for i in never)
    assert few == {i: bulk[i] for i in ids[:3]}
