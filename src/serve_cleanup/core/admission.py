"""Which registrations are accepted: argument, owner and actor checks. No Ray imports.

``check_request`` runs first, ``check_owner_exists`` right before a new write; ``refusal``
decides on the actor-table entry that the write raced with (or that a record read at
start is verified against).

Two kinds of caller. ``serve_cleanup.register`` (``check_actor=True``) is told when its
actor is dead or unknown (``DeadActorError``): the write races one actor-table lookup.
Serve's own entry point ``_register_shutdown_cleanup_actor`` (``check_actor=False``)
never refused a dead actor upstream, so it costs one KV put and nothing more; a record
of a dead actor is harmless (nothing to kill) and the liveness sweep drops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from serve_cleanup.core import records as rec
from serve_cleanup.core.ports import Serve
from serve_cleanup.core.records import Record
from serve_cleanup.errors import DeadActorError, OwnerNotFoundError, PersistenceError, SystemActorError


@dataclass(frozen=True)
class Registration:
    """One register call, as the adapter extracted it from the actor handle."""

    actor_id: str
    name: str  # as the handle carries it ("" if none); the actor table may correct it
    namespace: str
    handle: bytes
    scope: str = rec.SCOPE_SERVE
    app: str = ""
    deployment: str = ""
    ensure_only: bool = False  # keep any existing registration and its owners (upstream)
    check_actor: bool = True  # refuse a dead or unknown actor (one actor-table lookup)
    kind: str = rec.KIND_ACTOR  # or rec.KIND_PLACEMENT_GROUP (always checked in its table)
    grace_s: float = 0.0  # graceful exit before the forced kill (records.check_grace)
    callers_job: bool = False  # a job owner that is the calling driver's own job: running

    @property
    def owner(self) -> rec.Owner:
        return (self.scope, self.app, self.deployment)

    def matches(self, record: Record) -> bool:
        """``record`` already satisfies this call: scope ``serve`` and the upstream
        method accept any registration of the actor (its owners stay as they are); an
        app or deployment owner must be in the actor's set."""
        if record.kind != self.kind:
            return False  # the full path refuses it (one id, two kinds)
        return self.ensure_only or self.scope == rec.SCOPE_SERVE or self.owner in record.owners


def check_request(reg: Registration, serve: Serve) -> None:
    """Refuse at once: bad arguments, the controller itself, or a handle that names one
    of Serve's own actors."""
    rec.check_owner_shape(reg.scope, reg.app, reg.deployment)
    if reg.kind not in rec.KINDS:
        raise ValueError(f"unknown kind {reg.kind!r}; use one of {rec.KINDS}.")
    if reg.kind != rec.KIND_ACTOR and (reg.ensure_only or not reg.check_actor):
        raise ValueError("a placement group is registered through serve_cleanup.register only")
    rec.check_grace(reg.grace_s, reg.kind)
    if reg.actor_id == serve.controller_id:
        raise SystemActorError("the Serve controller cannot be registered for cleanup.")
    if reg.kind == rec.KIND_ACTOR:  # a placement group's name and creator come with its lookup
        refuse_own(reg.actor_id, reg.name, reg.namespace, serve)


def check_owner_exists(reg: Registration, serve: Serve) -> None:
    """Refuse a new write for an owner that does not exist. Not asked when the actor
    already has a record with this owner: that may be the write of this very call, cut
    short by a crash and retried by Ray, and refusing it would leave that record behind
    (the owner reconcile then kills the actor of a call that raised)."""
    scope, app, deployment = reg.scope, reg.app, reg.deployment
    if scope == rec.SCOPE_SERVE:
        return
    if scope == rec.SCOPE_JOB:  # whether it runs: Registrar._check_job (a GCS read)
        if app == serve.controller_job:
            raise ValueError(
                f"job {app} is the job that started Serve: it owns Serve itself, not what "
                "Serve's code creates; use scope='app', 'deployment' or 'serve'.")
        return
    live_apps, live_deployments = serve.live_owners({app})
    if app not in live_apps:
        raise OwnerNotFoundError(
            f"application {app!r} does not exist, so nothing could delete it; deploy it "
            "first or register with scope='serve'."
        )
    if scope == rec.SCOPE_DEPLOYMENT and (app, deployment) not in live_deployments:
        raise OwnerNotFoundError(
            f"deployment {deployment!r} of application {app!r} does not exist; "
            f"deployments of {app!r}: {sorted(d for a, d in live_deployments if a == app)}."
        )


def is_own(serve: Serve, kind: str, name: str, namespace: str, creator: str = "") -> bool:
    """Whether the actor (placement group) is one of Serve's own: never registered, never
    killed (removed)."""
    if kind == rec.KIND_PLACEMENT_GROUP:
        return serve.is_own_placement_group(name, creator)
    return serve.is_own_actor(name, namespace)


def refuse_own(actor_id: str, name: str, namespace: str, serve: Serve, kind: str = rec.KIND_ACTOR,
               creator: str = "") -> None:
    if not is_own(serve, kind, name, namespace, creator):
        return
    if kind == rec.KIND_PLACEMENT_GROUP:
        raise SystemActorError(
            f"placement group {actor_id} ({name!r}) is one of Serve's own (a replica's or a "
            "gang's); Serve manages its lifecycle. Register the placement groups your code "
            "creates instead."
        )
    raise SystemActorError(
        f"actor {actor_id} ({namespace}/{name}) is one of Serve's own actors "
        "(controller, proxy, replica or deployment actor); Serve manages its "
        "lifecycle. Register the auxiliary actors your code creates instead."
    )


def refusal(actor_id: str, label: str, info: Any, serve: Serve, kind: str = rec.KIND_ACTOR) -> Optional[Exception]:
    """The error to refuse with, given the table lookup's result (an ``ActorInfo``, None
    for an id the table does not know, or the lookup's exception); None: accept."""
    what = rec.KIND_NAMES.get(kind, kind)
    if isinstance(info, BaseException):
        return PersistenceError(
            f"could not look up {what} {actor_id} in its GCS table ({info!r}); it is not "
            "registered. Retry once the cluster's GCS is reachable."
        )
    if info is None or info.dead:
        state = ("removed" if kind == rec.KIND_PLACEMENT_GROUP else "dead") if info else "unknown to this cluster"
        return DeadActorError(
            f"{what} {actor_id} ({label}) is {state}; nothing was registered. Register a live {what}."
        )
    try:
        refuse_own(actor_id, info.name, info.namespace, serve, kind, info.creator)
    except SystemActorError as e:
        return e
    return None
