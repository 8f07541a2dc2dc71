"""Calls between releases during a rolling upgrade (no Ray imported here).

The client and the controller may run different serve_cleanup releases: replicas and
drivers upgrade when they are redeployed, the controller when Serve restarts it. What the
two sides do about it:

* A 0.2.0 client calls ``serve_cleanup_register`` with ``protocol=PROTOCOL``, and
  ``serve_cleanup_unregister`` with an owner only when the caller names one. A 0.1.x
  controller's methods take neither (``serve_cleanup_register(actor, scope, app,
  deployment, ensure_only)``, ``serve_cleanup_unregister(actor_id)``), so Python refuses
  the call with a ``TypeError`` before the method runs: nothing is registered or
  removed, and the client raises ``ControllerVersionError`` (``older_controller``).
  Registering through a 0.1.x controller would otherwise *move* an actor to its new
  owner instead of adding one, and its answer (a 0.1.x ``Record``) cannot be read here.
* ``unregister`` without an owner, ``collect`` and ``controller_status`` send what 0.1.x
  sent and work with either controller.
* A 0.2.0 controller takes every call shape 0.1.x's client sends (``serve_cleanup_register``
  without ``protocol``: answered with ``core.records.V1Reply``, which that client
  unpickles as its own ``Record``).

Where the refusal comes from: Ray checks a call against the signatures of the handle,
which (outside local mode) it builds from the controller class as the *calling* process
imports it (``_raylet``'s ``make_actor_handle`` loads the class), so that check passes
and the controller process raises the ``TypeError`` (the cause of a ``RayTaskError``,
naming the method). Should a Ray build the handle from the controller's own class, the
check fails in ``.remote()`` with ``inspect``'s message, which names no method
(``raised_by_ray``); both are mapped.
"""

from __future__ import annotations

from typing import Optional

from serve_cleanup.errors import ControllerVersionError

# The call shape of serve_cleanup_register this client sends (protocol=2), and the first
# release whose controller takes it.
PROTOCOL = 2
NEEDED_RELEASE = "0.2.0"
# Keyword arguments a 0.3.0 client sends only when the call needs them (a grace period, a
# placement group's kind); a 0.2.0 controller refuses them the same way.
NEEDS_0_3 = ("grace_s", "kind", "callers_job")


def needed_release(kwargs: Optional[dict] = None) -> str:
    """The first release whose controller takes a call with these keyword arguments."""
    return "0.3.0" if kwargs and any(k in kwargs for k in NEEDS_0_3) else NEEDED_RELEASE

# What each refused call was, as the error names it.
_CALLS = {
    "serve_cleanup_register": "serve_cleanup.register()",
    "serve_cleanup_unregister": "serve_cleanup.unregister() with an owner (scope=...)",
}


def older_controller(
    method: str, error: BaseException, raised_by_ray: bool = False, needed: str = NEEDED_RELEASE
) -> Optional[ControllerVersionError]:
    """The ``ControllerVersionError`` to raise when ``error`` (what the controller raised
    for ``method``, or with ``raised_by_ray`` what Ray's own signature check raised in
    ``.remote()``) says the controller's method does not take this call's arguments;
    None for any other error."""
    what = _CALLS.get(method)
    if what is None or not isinstance(error, TypeError):
        return None
    text = str(error)
    if raised_by_ray:
        signature = "unexpected keyword argument" in text or "too many positional arguments" in text
    else:
        signature = method in text and ("unexpected keyword argument" in text or "positional argument" in text)
    if not signature:
        return None
    older = "0.1.x" if needed == NEEDED_RELEASE else "older"
    return ControllerVersionError(
        f"{what} needs serve_cleanup {needed} or later on the Serve controller, which "
        f"runs an older release ({older}) and refused the call before doing anything. Upgrade "
        "serve_cleanup where the controller runs and restart it (docs/production.md, "
        '"Upgrade and rollback"), or call ' + (
            "from a 0.1.x client until then." if needed == NEEDED_RELEASE else "without what needs it until then.")
    )
