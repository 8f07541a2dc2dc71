"""``serve-cleanup``: the command line, following Ray's ``serve`` CLI conventions."""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

RAY_INIT_ADDRESS_HELP = (
    "Address to use for ray.init(). Can also be set using the RAY_ADDRESS environment variable."
)


def _address_option(f):
    return click.option(
        "--address", "-a", default=os.environ.get("RAY_ADDRESS", "auto"), show_default=True,
        help=RAY_INIT_ADDRESS_HELP,
    )(f)


def _connect(address: str) -> None:
    import ray

    from serve_cleanup import _compat

    try:
        ray.init(address=address, namespace=_compat.SERVE_NAMESPACE, log_to_driver=False)
    except ConnectionError as e:
        raise click.ClickException(f"could not connect to Ray at {address!r}: {e}") from None


@click.group(help="Durable shutdown-cleanup registrations for Ray Serve.")
@click.version_option(package_name="serve-cleanup")
def cli() -> None:
    pass


@cli.command(help="Start Serve on the Ray cluster with the durable controller (options as `serve start`).")
@_address_option
@click.option("--http-host", default=None, help="Host for HTTP proxies to listen on. Defaults to localhost.")
@click.option("--http-port", default=None, type=int, help="Port for HTTP proxies to listen on. Defaults to 8000.")
@click.option(
    "--proxy-location", default=None, type=click.Choice(["Disabled", "HeadOnly", "EveryNode"]),
    help="Location of the proxies. Defaults to EveryNode.",
)
@click.option("--grpc-port", default=None, type=int, help="Port for gRPC proxies to listen on. Defaults to 9000.")
@click.option(
    "--grpc-servicer-functions", multiple=True,
    help="Servicer function for adding the method handler to the gRPC server (repeatable). "
    "Defaults to an empty list and no gRPC server is started.",
)
@click.option(
    "--grpc-enable-reflection/--grpc-disable-reflection", default=None,
    help="Enable the gRPC server reflection protocol on the gRPC server. Defaults to enabled.",
)
def start(
    address: str,
    http_host: Optional[str],
    http_port: Optional[int],
    proxy_location: Optional[str],
    grpc_port: Optional[int],
    grpc_servicer_functions: tuple[str, ...],
    grpc_enable_reflection: Optional[bool],
) -> None:
    import warnings

    from serve_cleanup import client
    from serve_cleanup.errors import ServeCleanupError

    _connect(address)
    http = {k: v for k, v in {"host": http_host, "port": http_port}.items() if v is not None}
    grpc = {
        k: v
        for k, v in {
            "port": grpc_port,
            "grpc_servicer_functions": list(grpc_servicer_functions) or None,
            "enable_reflection": grpc_enable_reflection,
        }.items()
        if v is not None
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = client.start_durable(
                say=click.echo,
                http_options=http or None,
                grpc_options=grpc or None,
                proxy_location=proxy_location,
            )
        except ServeCleanupError as e:
            raise click.ClickException(str(e)) from None
    for w in caught:
        if str(w.message).startswith("serve_cleanup"):
            click.echo(f"Warning: {w.message}", err=True)
    if outcome == "already running":
        click.echo("Serve is already running with the durable controller; nothing to do.")
    else:
        click.echo("Started Serve with the durable controller.")


@cli.command(help="Make every Serve controller this Python environment creates the durable one.")
@click.option(
    "--site-dir", default=None, type=click.Path(file_okay=False),
    help="Directory to install the start-up hook in. Defaults to this environment's site-packages.",
)
def enable(site_dir: Optional[str]) -> None:
    from serve_cleanup import _startup

    path = _startup.pth_path(site_dir)
    state = _startup.pth_state(site_dir)
    if state == "foreign":
        raise click.ClickException(f"{path} exists but was not written by serve-cleanup; remove it first.")
    if not _startup.write_pth(site_dir):
        click.echo(f"Already enabled: {path} is in place; nothing changed.")
        return
    click.echo(f"Enabled: wrote {path}.")
    click.echo(
        f"Every Serve controller created by {sys.executable} (and any Python of this "
        "environment) is now the durable one: serve.start/serve.run, `serve run`/`serve start`, "
        "`serve deploy` and KubeRay (the dashboard), Java's start path, and after every shutdown."
    )
    click.echo(
        "Processes already running are not affected: start Ray after this (`ray stop`, then "
        "`ray start --head ...`) so the dashboard picks it up."
    )


@cli.command(help="Undo `enable`: Serve controllers created from now on are Ray's own.")
@click.option(
    "--site-dir", default=None, type=click.Path(file_okay=False),
    help="Directory the start-up hook was installed in. Defaults to this environment's site-packages.",
)
def disable(site_dir: Optional[str]) -> None:
    from serve_cleanup import _startup

    path = _startup.pth_path(site_dir)
    if _startup.pth_state(site_dir) == "foreign":
        raise click.ClickException(f"{path} was not written by serve-cleanup; left alone.")
    if not _startup.remove_pth(site_dir):
        click.echo(f"Already disabled: {path} does not exist; nothing changed.")
        return
    click.echo(f"Disabled: removed {path}.")
    click.echo(
        "A durable controller that runs keeps running (and Ray restarts it as one) until "
        "Serve shuts down; restart Ray so running processes (the dashboard) drop the hook."
    )


@cli.command(name="list", help="List durable registrations (read from the GCS KV; works while the controller is down).")
@_address_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def list_(address: str, as_json: bool) -> None:
    import dataclasses
    import json

    from serve_cleanup import _table, client
    from serve_cleanup.core.records import Record

    _connect(address)
    # Record.to_dict() without dataclasses.asdict's deep copy (~40 us a record: 4 s of
    # `list --json` over 100,000 records); same keys, same order.
    names = [f.name for f in dataclasses.fields(Record) if f.name != "handle"]
    records = [{n: getattr(r, n) for n in names} for r in client.list_registrations()]
    states = client.actor_states([d["actor_id"] for d in records])
    if as_json:
        for d in records:
            d["state"] = states[d["actor_id"]]
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("No registrations.")
        return
    click.echo(_table.records_table(records, states))


@cli.command(help="Show the controller kind, record counts, the last reconcile and set-aside records.")
@_address_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(address: str, as_json: bool) -> None:
    import json

    from serve_cleanup import _table, client
    from serve_cleanup.errors import ServeCleanupError

    from serve_cleanup import _startup

    switch = {
        "pth": _startup.pth_path(),
        "installed": _startup.pth_state() == "on",
        "env_off": not _startup.enabled_by_env(),
        "strict": _startup.strict(),
    }
    switch["on"] = switch["installed"] and not switch["env_off"]
    _connect(address)
    kind = client.controller_kind()
    records, set_aside = client.read_kv()
    by_scope: dict[str, int] = {}
    for r in records:
        by_scope[r.scope] = by_scope.get(r.scope, 0) + 1
    controller = None
    if kind == "durable":
        try:
            controller = client.controller_status(timeout_s=10)
        except ServeCleanupError as e:
            controller = {"error": str(e)}
    out = {
        "switch": switch,
        "controller": kind,
        "records": len(records),
        "records_by_scope": by_scope,
        "set_aside": [s.to_dict() for s in set_aside],
        "controller_status": controller,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    names = {"durable": "durable (serve_cleanup)", "plain": "plain Ray Serve (registrations are NOT durable)", "none": "not running"}
    if switch["on"]:
        on = f"on ({switch['pth']}" + (", strict" if switch["strict"] else "") + ")"
    elif switch["installed"]:
        on = f"off in this shell: {_startup.ENV_ENABLE}=0 ({switch['pth']} is installed)"
    else:
        on = "off (run `serve-cleanup enable` to make every new controller durable)"
    click.echo(f"switch:          {on}")
    click.echo(f"controller:      {names[kind]}")
    scopes = ", ".join(f"{k}={v}" for k, v in sorted(by_scope.items())) or "-"
    click.echo(f"records:         {len(records)} ({scopes})")
    if controller and "error" not in controller:
        rec = controller.get("last_reconcile") or {}
        when = _table.timestamp(rec["at"]) if rec else "never"
        click.echo(f"last reconcile:  {when}" + (f" ({rec['seconds'] * 1000:.2f} ms, {rec['orphans']} orphan(s))" if rec else ""))
        last = controller.get("last_pass") or {}
        if last:
            click.echo(
                f"last kill pass:  {_table.timestamp(last['at'])} ({last['reason']}: {last.get('killed', 0)} killed, "
                f"{last.get('already dead', 0)} already dead, {last.get('pending', 0)} pending)"
            )
        click.echo(f"rehydrated in:   {controller['rehydrate_ms']} ms at controller start")
    elif controller:
        click.echo(f"controller status unavailable: {controller['error']}")
    click.echo(f"set aside:       {len(set_aside)}")
    if set_aside:
        click.echo(_table.render(("KEY", "BYTES", "REASON"), [(s.key, s.size, s.reason) for s in set_aside]))


@cli.command(help="Kill registrations whose owner (app or deployment) is gone or whose actor is dead.")
@_address_option
@click.option("--dry-run", is_flag=True, help="Only show what would be killed.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def gc(address: str, dry_run: bool, as_json: bool) -> None:
    import json

    from serve_cleanup import _table, client
    from serve_cleanup.errors import ServeCleanupError

    _connect(address)
    kind = client.controller_kind()
    if kind != "durable":
        raise click.ClickException(
            "gc needs the durable Serve controller, but "
            + ("Serve is not running" if kind == "none" else "a plain Ray Serve controller runs")
            + ". Start it with serve_cleanup.start() or `serve-cleanup start`; "
            "`serve-cleanup list` works without it."
        )
    try:
        found = client.collect(dry_run=dry_run, timeout_s=30)
    except ServeCleanupError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("Nothing to collect.")
        return
    states = client.actor_states([d["actor_id"] for d in found])
    extra = ("why",) if dry_run else ("why", "outcome")
    click.echo(_table.records_table(found, states, extra))
    if dry_run:
        click.echo(f"{len(found)} registration(s) would be collected (dry run).")
        return
    outcomes = [d.get("outcome") for d in found]
    collected = sum(1 for o in outcomes if o in ("killed", "already dead", "dropped"))
    pending, skipped = outcomes.count("pending"), outcomes.count("superseded")
    click.echo(
        f"{collected} registration(s) collected, {pending} pending (retried by gc or shutdown)"
        + (f", {skipped} unregistered or moved meanwhile (left alone)." if skipped else ".")
    )


@cli.command(help="Remove the registration of ACTOR_ID (hex) without killing the actor.")
@_address_option
@click.argument("actor_id")
def unregister(address: str, actor_id: str) -> None:
    from serve_cleanup import client
    from serve_cleanup.errors import ServeCleanupError

    _connect(address)
    try:
        removed = client.unregister(actor_id, timeout_s=30)
    except ServeCleanupError as e:
        raise click.ClickException(str(e)) from None
    if removed:
        click.echo(f"Unregistered {actor_id.lower()}; the actor was not killed.")
    else:
        click.echo(f"{actor_id.lower()} was not registered; nothing to do.")


@cli.command(help=(
    "Delete records straight from the GCS KV while Serve is down: those of ACTOR_IDS, "
    "the set-aside (unreadable) entries, or all. Refuses while a Serve controller runs."
))
@_address_option
@click.argument("actor_ids", nargs=-1)
@click.option("--set-aside", "set_aside", is_flag=True, help="Delete the entries set aside as unreadable.")
@click.option("--all", "everything", is_flag=True, help="Delete every record and set-aside entry.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(address: str, actor_ids: tuple, set_aside: bool, everything: bool, dry_run: bool, yes: bool) -> None:
    from serve_cleanup import _table, admin

    if not (actor_ids or set_aside or everything):
        raise click.UsageError("name ACTOR_IDS, --set-aside or --all.")
    _connect(address)
    from serve_cleanup import client

    kind = client.controller_kind()
    if kind != "none" and not dry_run:
        raise click.ClickException(str(admin.ControllerRunningError.for_kind(kind)))
    plan = admin.purge_plan(actor_ids, set_aside=set_aside, everything=everything)
    missing = {a.strip().lower() for a in actor_ids} - {p.actor_id for p in plan}
    for actor_id in sorted(missing):
        click.echo(f"{actor_id}: no record; nothing to delete.", err=True)
    if not plan:
        click.echo("Nothing to delete.")
        return
    click.echo(_table.render(("KEY", "WHAT"), [(p.key, p.what) for p in plan]))
    if dry_run:
        click.echo(f"{len(plan)} entr{'y' if len(plan) == 1 else 'ies'} would be deleted (dry run).")
        if kind != "none":
            click.echo(f"Note: {admin.ControllerRunningError.for_kind(kind)}", err=True)
        return
    if not yes:
        click.confirm(f"Delete {len(plan)} entr{'y' if len(plan) == 1 else 'ies'}? The actors are not killed.", abort=True)
    try:
        deleted = admin.purge(plan)  # checks again: Serve may have started meanwhile
    except admin.ControllerRunningError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Deleted {deleted} entr{'y' if deleted == 1 else 'ies'}; no actor was killed.")


@cli.command(help="Run the demo on a local embedded Ray: kill the controller, shut down, show nothing leaked.")
@click.option("--num-cpus", default=2, show_default=True, type=int, help="CPUs for the local Ray.")
def demo(num_cpus: int) -> None:
    from serve_cleanup.demo import run_demo

    sys.exit(run_demo(num_cpus=num_cpus))


def main() -> None:
    cli(prog_name="serve-cleanup")


if __name__ == "__main__":
    main()
