"""The records: ``list`` reads them straight from GCS (no Ray driver); ``gc`` and
``unregister`` ask the durable controller; ``purge`` deletes them from the KV while Serve
is down."""

from __future__ import annotations

from typing import Optional

import click

from serve_cleanup.cli.common import (
    Exit, Failure, address_option, cluster_reader, connect, echo_json, failing_as, json_option, need_ray,
    needs_durable, parse_actor_id, waiting,
)


@click.command(name="list", help="List durable registrations (read from the GCS KV; works while the controller is down).")
@address_option
@json_option
def list_(address: str, as_json: bool) -> None:
    need_ray("list")
    import gc

    from serve_cleanup.cli import table

    # A short-lived process that builds ~3 objects a record (100,000 records: 300,000
    # long-lived objects): the cyclic GC's passes over them cost ~0.35 s and free nothing.
    gc.disable()
    reader = cluster_reader(address)
    records, _ = reader.records()
    states = reader.states([r.actor_id for r in records], [r.actor_id for r in records if r.kind != "actor"])
    # Record.to_dict()'s keys and order, plus the state.
    rows = [r.to_dict() for r in records]  # one row per actor, its owners listed
    for row in rows:
        row["state"] = states[row["actor_id"]]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("No registrations.")
        return
    click.echo(table.records_table(rows, states))


@click.command(help=(
    "Kill registrations whose owner (app or deployment) is gone or whose actor is dead "
    "(remove such placement groups)."))
@address_option
@click.option("--dry-run", is_flag=True, help="Only show what would be killed.")
@json_option
def gc(address: str, dry_run: bool, as_json: bool) -> None:
    need_ray("gc")
    from serve_cleanup.cli import table
    from serve_cleanup.client.calls import collect
    from serve_cleanup.client.gcs import actor_states
    from serve_cleanup.core.reaper import DONE, Outcome

    connect(address)
    needs_durable("gc")
    what = "look for" if dry_run else "collect"
    with failing_as(Exit.ERROR), waiting(f"the durable controller to {what} orphaned and dead registrations"):
        found = collect(dry_run=dry_run, timeout_s=30)
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("Nothing to collect.")
        return
    states = actor_states([d["actor_id"] for d in found], pg_ids=[d["actor_id"] for d in found if d.get("kind", "actor") != "actor"])
    extra = ("why",) if dry_run else ("why", "outcome")
    click.echo(table.records_table(found, states, extra))
    if dry_run:
        click.echo(f"{len(found)} registration(s) would be collected (dry run).")
        return
    outcomes = [d.get("outcome") for d in found]
    collected = sum(1 for o in outcomes if o in {d.value for d in DONE})
    pending, skipped = outcomes.count(Outcome.PENDING.value), outcomes.count(Outcome.SUPERSEDED.value)
    click.echo(
        f"{collected} registration(s) collected, {pending} {Outcome.PENDING.value} (retried by gc or shutdown)"
        + (f", {skipped} unregistered or its owners changed meanwhile (left alone)." if skipped else ".")
    )


@click.command(help=(
    "Remove the registration of ACTOR_ID (hex; pg:<hex> for a placement group) without "
    "killing the actor (removing the placement group); with --scope app|deployment (and "
    "--app, --deployment), remove that owner only."
))
@address_option
@click.argument("actor_id")
@click.option("--scope", type=click.Choice(["app", "deployment", "job"]), default=None,
              help="Remove only this owner: an app (--app), a deployment (--app, --deployment) or a job (--job).")
@click.option("--app", default=None, help="The owner's app (with --scope app|deployment).")
@click.option("--deployment", default=None, help="The owner's deployment (with --scope deployment).")
@click.option("--job", default=None, help="The owner's Ray job id, hex (with --scope job).")
def unregister(address: str, actor_id: str, scope: Optional[str], app: Optional[str],
               deployment: Optional[str], job: Optional[str]) -> None:
    kind, actor_id = parse_actor_id(actor_id, with_kind=True)
    owner = _owner_option(scope, app, deployment, job)
    what = "the placement group was not removed" if kind == "pg" else "the actor was not killed"
    target = actor_id if kind == "actor" else f"{kind}:{actor_id}"
    need_ray("unregister")
    from serve_cleanup.client.calls import unregister as unregister_call

    connect(address)
    needs_durable("unregister")
    label = "" if owner is None else f" from {_label(owner)}"
    with failing_as(Exit.ERROR), waiting(f"the durable controller to unregister {target}{label}"):
        how = ({} if owner is None else {"scope": owner[0], "job": owner[1]} if owner[0] == "job"
               else {"scope": owner[0], "app": owner[1], "deployment": owner[2]})
        removed = unregister_call(target, **how, timeout_s=30)
    if removed and owner is None:
        click.echo(f"Unregistered {target}; {what}.")
    elif removed:
        click.echo(f"Removed {_label(owner)} from the owners of {target}; {what}.")
    elif owner is None:
        click.echo(f"{target} was not registered; nothing to do.")
    else:
        click.echo(f"{target} is not registered with {_label(owner)}; nothing to do.")


def _owner_option(scope: Optional[str], app: Optional[str], deployment: Optional[str],
                  job: Optional[str] = None) -> Optional[tuple[str, str, str]]:
    """The owner ``unregister``'s options name (None: the whole registration); a usage
    error before anything else. The command line runs in no replica (and is no owner's
    driver), so the names the scope needs are spelled out."""
    if scope is None:
        if app is not None or deployment is not None or job is not None:
            raise click.UsageError("--app, --deployment and --job name an owner: add --scope app, deployment or job.")
        return None
    if scope == "job":
        if app is not None or deployment is not None or not job:
            raise click.UsageError("--scope job needs --job (a Ray job id in hex) and takes no --app or --deployment.")
        from serve_cleanup.core.records import check_owner_shape

        try:
            check_owner_shape("job", job.strip().lower(), "")
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--job") from None
        return scope, job.strip().lower(), ""
    if job is not None:
        raise click.UsageError("--job goes with --scope job.")
    if not app:
        raise click.UsageError(f"--scope {scope} needs --app.")
    if scope == "app" and deployment is not None:
        raise click.UsageError("--scope app takes no --deployment; use --scope deployment.")
    if scope == "deployment" and not deployment:
        raise click.UsageError("--scope deployment needs --deployment.")
    return scope, app, deployment or ""


def _label(owner: tuple[str, str, str]) -> str:
    from serve_cleanup.core.records import owner_label

    return owner_label(owner)


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


@click.command(help=(
    "Delete records straight from the GCS KV while Serve is down: those of ACTOR_IDS (hex; "
    "pg:<hex> for a placement group), the set-aside (unreadable) entries, or all. Refuses "
    "while a Serve controller runs."
))
@address_option
@click.argument("actor_ids", nargs=-1)
@click.option("--set-aside", "set_aside", is_flag=True, help="Delete the entries set aside as unreadable.")
@click.option("--all", "everything", is_flag=True, help="Delete every record and set-aside entry.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(address: str, actor_ids: tuple, set_aside: bool, everything: bool, dry_run: bool, yes: bool) -> None:
    if not (actor_ids or set_aside or everything):
        raise click.UsageError("name ACTOR_IDS, --set-aside or --all.")
    targets = [parse_actor_id(a, with_kind=True) for a in actor_ids]
    need_ray("purge")
    from serve_cleanup.cli import table
    from serve_cleanup.client.controller import controller_kind
    from serve_cleanup.client.purge import purge_entries, purge_plan
    from serve_cleanup.errors import ControllerRunningError

    connect(address)
    kind = controller_kind()
    if kind != "none" and not dry_run:
        raise Failure(Exit.ERROR, str(ControllerRunningError.for_kind(kind)))
    plan = purge_plan(targets, set_aside=set_aside, everything=everything)
    from serve_cleanup.core.records import target_text

    for kind, missing in sorted(set(targets) - {(p.kind, p.actor_id) for p in plan}):
        click.echo(f"{target_text(kind, missing)}: no record; nothing to delete.", err=True)
    if not plan:
        click.echo("Nothing to delete.")
        return
    click.echo(table.render(("KEY", "WHAT"), [(p.key, p.what) for p in plan]))
    if dry_run:
        click.echo(f"{_entries(len(plan))} would be deleted (dry run).")
        if kind != "none":
            click.echo(f"Note: {ControllerRunningError.for_kind(kind)}", err=True)
        return
    if not yes:
        click.confirm(f"Delete {_entries(len(plan))}? The actors are not killed (nor placement groups "
                      "removed).", abort=True)
    with failing_as(Exit.ERROR, ControllerRunningError):
        deleted = purge_entries(plan)  # checks again: Serve may have started meanwhile
    click.echo(f"Deleted {_entries(deleted)}; no actor was killed, no placement group removed.")
