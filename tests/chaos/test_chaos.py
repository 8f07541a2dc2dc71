"""The chaos harness under pytest: a bounded number of rounds in CI, more with a flag
(``pytest tests/chaos --chaos-rounds 100``)."""

from __future__ import annotations

import pytest

import harness

pytestmark = [pytest.mark.ray, pytest.mark.chaos]


# A round takes ~10 s here; the cap leaves room for a long run (--chaos-rounds 300).
@pytest.mark.timeout(7200)
def test_chaos_rounds(ray_cluster, request):
    rounds = request.config.getoption("--chaos-rounds")
    seed = request.config.getoption("--chaos-seed")
    totals = harness.run(rounds, seed, log=print)
    print(totals.summary(seed))
    assert totals.rounds == rounds
    assert totals.registrations > 0, "the harness registered nothing: it proves nothing"
    assert totals.kills >= rounds
    assert totals.leaked == [], f"registered actors leaked: {totals.leaked}"
    assert totals.wrongly_killed == [], f"bystanders died: {totals.wrongly_killed}"
    assert totals.records_left == 0
    assert totals.crash_loops == 0
