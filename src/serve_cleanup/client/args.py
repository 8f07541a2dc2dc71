"""Argument checks, done in the caller's process before any call reaches the controller;
shared by the blocking and the awaitable calls."""

from __future__ import annotations

import math
from typing import Literal, Optional

from ray.actor import ActorHandle

from serve_cleanup.core import records
from serve_cleanup.serve_adapter import _ray

Scope = Literal["serve", "app", "deployment", "job"]


def check_timeout(timeout_s: object) -> float:
    ok = (
        isinstance(timeout_s, (int, float))
        and not isinstance(timeout_s, bool)
        and math.isfinite(timeout_s)
        and timeout_s > 0
    )
    if not ok:
        raise ValueError(
            f"timeout_s must be a finite positive number of seconds, got {timeout_s!r}"
        )
    return float(timeout_s)  # type: ignore[arg-type]


def register_args(
    actor: object, scope: object, app: object, deployment: object, job: object = None
) -> tuple[object, str, str, str]:
    """``actor`` is an actor handle or a ``PlacementGroup``."""
    if not _ray.is_placement_group(actor) and not isinstance(actor, ActorHandle):
        raise TypeError(
            f"expected a Ray ActorHandle or PlacementGroup, got {type(actor).__name__}; pass the "
            "handle returned by MyActor.remote() or ray.get_actor(), or the placement group "
            "returned by ray.util.placement_group()."
        )
    for label, value in (("app", app), ("deployment", deployment), ("job", job)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str, got {type(value).__name__}")
    owner_app, owner_deployment = resolve_owner(scope, app, deployment, job)  # type: ignore[arg-type]
    return actor, scope, owner_app, owner_deployment  # type: ignore[return-value]


def resolve_owner(scope: str, app: Optional[str], deployment: Optional[str],
                  job: Optional[str] = None) -> tuple[str, str]:
    """Fill in the replica's own app and deployment where the scope needs them and the
    caller left them out (for ``job``, the driver's own job); then the owner rule of
    ``records.check_owner_shape``. The owner's two names: ``(app, deployment)``, or
    ``(job, "")``."""
    if job is not None and scope != records.SCOPE_JOB:
        raise ValueError("job=... names a job owner: pass scope='job' with it.")
    if scope == records.SCOPE_JOB:
        if app is not None or deployment is not None:
            raise ValueError("scope='job' takes job=..., no app or deployment.")
        if job is None:
            if _ray.replica_owner() is not None:
                raise ValueError(
                    "scope='job' inside a Serve replica needs job=...: the replica's own job is the "
                    "one that started Serve, which owns Serve itself.")
            job = _ray.current_job_id()
        job = job.strip().lower()
        records.check_owner_shape(scope, job, "")
        return job, ""
    if scope in (records.SCOPE_APP, records.SCOPE_DEPLOYMENT) and (app is None or (
            scope == records.SCOPE_DEPLOYMENT and deployment is None)):
        here = _ray.replica_owner()
        if here is None and app is not None:
            raise ValueError(f"scope='deployment' outside a Serve replica needs deployment=... (app {app!r}).")
        if here is None:
            raise ValueError(
                f"scope={scope!r} outside a Serve replica needs app=" +
                ("... and deployment=..." if scope == records.SCOPE_DEPLOYMENT else "...")
            )
        if app is None:
            app = here[0]
        if scope == records.SCOPE_DEPLOYMENT and deployment is None:
            if here[0] != app:
                raise ValueError(f"scope='deployment' needs deployment=... (app {app!r}).")
            deployment = here[1]
    app, deployment = app or "", deployment or ""
    records.check_owner_shape(scope, app, deployment)
    return app, deployment


def unregister_args(
    actor: object, scope: object = None, app: object = None, deployment: object = None, job: object = None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The arguments of ``serve_cleanup_unregister`` and its keyword arguments: the id
    alone without an owner (remove the registration; the one shape every controller
    release accepts), else the id and the owner ``(scope, app, deployment)`` to remove
    (``app`` or ``deployment``, filled in from the replica like ``register``'s). A
    placement group (a ``PlacementGroup`` or ``"pg:<id>"``) adds ``kind="pg"``."""
    if isinstance(actor, ActorHandle):
        kind, actor_id = records.KIND_ACTOR, _ray.actor_id_hex(actor)
    elif _ray.is_placement_group(actor):
        kind, actor_id = records.KIND_PLACEMENT_GROUP, _ray.placement_group_id_hex(actor)
    elif isinstance(actor, str):
        kind, actor_id = records.parse_target(actor)
    else:
        raise TypeError(f"expected a Ray ActorHandle, a PlacementGroup or an id, got {type(actor).__name__}")
    kwargs = {} if kind == records.KIND_ACTOR else {"kind": kind}
    for label, value in (("app", app), ("deployment", deployment), ("job", job)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str, got {type(value).__name__}")
    if scope is None:
        if app is not None or deployment is not None or job is not None:
            raise ValueError(
                "app=/deployment= name an owner: pass scope='app' or scope='deployment' with them "
                "(without an owner, unregister removes the whole registration)."
            )
        return (actor_id,), kwargs
    check_unregister_scope(scope)
    owner_app, owner_deployment = resolve_owner(scope, app, deployment, job)  # type: ignore[arg-type]
    return (actor_id, scope, owner_app, owner_deployment), kwargs  # type: ignore[return-value]


def check_unregister_scope(scope: object) -> None:
    """An owner to remove is an app or a deployment; ``serve`` is none."""
    if scope == records.SCOPE_SERVE:
        raise ValueError(
            "scope='serve' is not an owner: unregister without scope removes the registration."
        )
    if scope not in (records.SCOPE_APP, records.SCOPE_DEPLOYMENT, records.SCOPE_JOB):
        raise ValueError(f"unknown scope {scope!r}; use 'app', 'deployment' or 'job' (or no scope).")
