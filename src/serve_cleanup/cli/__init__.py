"""``serve-cleanup``: the command line, following Ray's ``serve`` CLI conventions.

Importing this module imports neither Ray nor Serve: ``--help``, ``enable``, ``disable``
and the switch part of ``status`` work where Ray is missing, broken or of a release this
package does not support. Each command imports what it needs when it runs. ``list`` and
``status`` read GCS directly (no Ray driver, no Serve import); the commands that call the
controller (``start``, ``gc``, ``unregister``, ``shutdown``) connect as a driver.

Every failure is one ``Error: ...`` line on stderr and an exit code from :class:`Exit`.
"""

from __future__ import annotations

import enum
import os
import sys
from typing import Any, NoReturn, Optional

import click

RAY_INIT_ADDRESS_HELP = (
    "Address of the Ray cluster (host:port of the head node's GCS). Can also be set using "
    "the RAY_ADDRESS environment variable; 'auto' finds the latest `ray start` on this machine."
)


class Exit(enum.IntEnum):
    """Exit codes, the same for every command (docs/reference.md, "Exit codes")."""

    OK = 0  # status: the durable controller runs
    ERROR = 1  # anything else that went wrong (the message says what)
    USAGE = 2  # wrong arguments (click)
    PLAIN = 3  # a plain Ray Serve controller runs
    NO_SERVE = 4  # no Serve controller runs
    NO_CLUSTER = 5  # the Ray cluster cannot be reached
    NO_RAY = 6  # Ray is missing, broken or of an unsupported release here
    RECORDS_LEFT = 7  # shutdown: Serve is down but records remain in the KV
    TIMEOUT = 8  # shutdown: the controller still runs at the end of --timeout


KIND_EXIT = {"durable": Exit.OK, "plain": Exit.PLAIN, "none": Exit.NO_SERVE}


class Failure(click.ClickException):
    """One ``Error: ...`` line and an exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.exit_code = int(code)


def _address_option(f: Any) -> Any:
    return click.option(
        "--address", "-a", default=os.environ.get("RAY_ADDRESS", "auto"), show_default=True,
        help=RAY_INIT_ADDRESS_HELP,
    )(f)


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def ray_problem() -> Optional[str]:
    """Why Ray cannot be used from this Python, or None. Ray is imported only when its
    package metadata names a supported release."""
    from serve_cleanup.serve_adapter import versions

    version = versions.installed_ray_version()
    if version is None:
        return f"Ray is not installed in this Python ({sys.executable})"
    if not versions.is_supported(version):
        return f"ray {version} is installed, but serve_cleanup supports ray[serve]{versions.SUPPORTED_RAY}"
    try:
        import ray  # noqa: F401

        from serve_cleanup.serve_adapter import _ray  # noqa: F401
    except Exception as e:
        return f"ray {version} is installed but cannot be imported ({type(e).__name__}: {e})"
    return None


def _need_ray(command: str) -> None:
    problem = ray_problem()
    if problem is not None:
        raise Failure(
            Exit.NO_RAY,
            f"{problem}; `serve-cleanup {command}` needs a supported Ray. (`enable`, `disable` "
            "and `status` work without it.)",
        )


def _connect(address: str) -> None:
    """Connect as a Ray driver (for commands that call the controller)."""
    import logging

    import ray

    from serve_cleanup.serve_adapter import _ray

    try:  # WARNING: no "Connecting to existing Ray cluster" lines around the command's output
        ray.init(address=address, namespace=_ray.SERVE_NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    except ConnectionError as e:
        raise Failure(Exit.NO_CLUSTER, f"could not connect to Ray at {address!r}: {e}") from None


def _waiting(what: str) -> Any:
    from serve_cleanup.cli.progress import Waiting

    return Waiting(what)


def _needs_durable(command: str) -> None:
    """Fail at once unless the durable controller runs (checked before any wait)."""
    from serve_cleanup.client.controller import controller_kind

    kind = controller_kind()
    if kind == "none":
        raise Failure(
            Exit.NO_SERVE,
            f"Serve is not running, so there is no controller to {command}. The records stay "
            "in the GCS KV (`serve-cleanup list` shows them) and the next durable controller "
            "adopts them; to delete one now, without starting Serve: "
            "`serve-cleanup purge <actor id>`.",
        )
    if kind == "plain":
        raise Failure(
            Exit.PLAIN,
            f"a plain Ray Serve controller runs; `{command}` needs the durable one (start Serve "
            "with `serve-cleanup start` after `serve shutdown`, or `serve-cleanup enable`).",
        )


def _echo_json(obj: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.flush()


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

    _need_ray("start")
    from serve_cleanup.client.start import start_durable
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
    with warnings.catch_warnings(record=True) as caught, _waiting("the Serve controller") as waiting:
        warnings.simplefilter("always")
        try:
            outcome = start_durable(
                say=waiting.note,
                waiting=waiting.update,
                http_options=http or None,
                grpc_options=grpc or None,
                proxy_location=proxy_location,
            )
        except ServeCleanupError as e:
            raise Failure(Exit.ERROR, str(e)) from None
    for w in caught:
        if str(w.message).startswith("serve_cleanup"):
            click.echo(f"Warning: {w.message}", err=True)
    if outcome == "already running":
        click.echo("Serve is already running with the durable controller; nothing to do.")
    else:
        click.echo("Started Serve with the durable controller.")


def _site_dir_option(help_text: str) -> Any:
    return click.option("--site-dir", default=None, type=click.Path(file_okay=False), help=help_text)


@cli.command(help="Make every Serve controller this Python environment creates the durable one.")
@_site_dir_option("Directory to install the start-up hook in. Defaults to this environment's site-packages.")
def enable(site_dir: Optional[str]) -> None:
    from serve_cleanup import _startup

    path = _startup.pth_path(site_dir)
    try:
        state = _startup.pth_state(site_dir)
        if state == "foreign":
            raise Failure(Exit.ERROR, f"{path} exists but was not written by serve-cleanup; remove it first.")
        written = _startup.write_pth(site_dir)
    except OSError as e:
        raise Failure(Exit.ERROR, f"cannot write {path}: {e.strerror or e}.") from None
    if not written:
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
@_site_dir_option("Directory the start-up hook was installed in. Defaults to this environment's site-packages.")
def disable(site_dir: Optional[str]) -> None:
    from serve_cleanup import _startup

    path = _startup.pth_path(site_dir)
    try:
        if _startup.pth_state(site_dir) == "foreign":
            raise Failure(Exit.ERROR, f"{path} was not written by serve-cleanup; left alone.")
        removed = _startup.remove_pth(site_dir)
    except OSError as e:
        raise Failure(Exit.ERROR, f"cannot remove {path}: {e.strerror or e}.") from None
    if not removed:
        click.echo(f"Already disabled: {path} does not exist; nothing changed.")
        return
    click.echo(f"Disabled: removed {path}.")
    click.echo(
        "A durable controller that runs keeps running (and Ray restarts it as one) until "
        "Serve shuts down; restart Ray so running processes (the dashboard) drop the hook."
    )


def _reader(address: str) -> Any:
    from serve_cleanup.client.gcs import ClusterReader, ClusterUnreachableError

    try:
        return ClusterReader(address)
    except ClusterUnreachableError as e:
        raise Failure(Exit.NO_CLUSTER, str(e)) from None


@cli.command(name="list", help="List durable registrations (read from the GCS KV; works while the controller is down).")
@_address_option
@_json_option
def list_(address: str, as_json: bool) -> None:
    _need_ray("list")
    from serve_cleanup.cli import table

    reader = _reader(address)
    records, _ = reader.records()
    states = reader.states([r.actor_id for r in records])
    # Record.to_dict()'s keys and order, plus the state, built in one step (100,000 rows).
    rows = [
        {"actor_id": r.actor_id, "name": r.name, "namespace": r.namespace, "scope": r.scope, "app": r.app,
         "deployment": r.deployment, "registered_at": r.registered_at, "state": states[r.actor_id]}
        for r in records
    ]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("No registrations.")
        return
    click.echo(table.records_table(rows, states))


# --- status -----------------------------------------------------------------------------

_KIND_NAMES = {
    "durable": "durable (serve_cleanup)",
    "plain": "plain Ray Serve (registrations are NOT durable)",
    "none": "not running",
}


def _switch() -> dict[str, Any]:
    from serve_cleanup import _startup

    installed = _startup.pth_state()
    switch = {
        "pth": _startup.pth_path(),
        "installed": installed == "on",
        "foreign": installed == "foreign",
        "env_off": not _startup.enabled_by_env(),
        "strict": _startup.strict(),
    }
    switch["on"] = switch["installed"] and not switch["env_off"]
    return switch


def _ray_facts() -> dict[str, Any]:
    from serve_cleanup.serve_adapter import versions

    version = versions.installed_ray_version()
    supported = version is not None and versions.is_supported(version)
    return {
        "version": version,
        "supported": supported,
        "supported_range": versions.SUPPORTED_RAY,
        "error": ray_problem() if supported else None,
    }


def _probe(address: str, detail: bool) -> tuple[dict[str, Any], Exit]:
    """The cluster part of ``status``: no Ray driver unless ``detail`` asks the durable
    controller for its own view."""
    from serve_cleanup.client.gcs import ClusterReader, ClusterUnreachableError

    out: dict[str, Any] = {"cluster": {"address": None, "error": None}, "controller": None,
                           "controller_actor": None, "records": None}
    try:
        reader = ClusterReader(address)
        out["cluster"]["address"] = reader.address
        actor = reader.controller()
        out["records"] = reader.record_count()
    except ClusterUnreachableError as e:
        out["cluster"].update(address=e.address, error=str(e))
        return out, Exit.NO_CLUSTER
    kind = actor["kind"] if actor else "none"
    out["controller"] = kind
    out["controller_actor"] = actor
    if detail:
        records, set_aside = reader.records()
        by_scope: dict[str, int] = {}
        for r in records:
            by_scope[r.scope] = by_scope.get(r.scope, 0) + 1
        out["records"] = len(records)
        out["records_by_scope"] = by_scope
        out["set_aside"] = [s.to_dict() for s in set_aside]
        out["controller_status"] = _controller_view(reader.address) if kind == "durable" else None
    return out, KIND_EXIT[kind]


def _controller_view(gcs_address: str) -> dict[str, Any]:
    """The durable controller's own status, asked through a Ray driver."""
    from serve_cleanup.client.calls import controller_status
    from serve_cleanup.errors import ServeCleanupError

    try:
        _connect(gcs_address)
        return controller_status(timeout_s=10)
    except (ServeCleanupError, Failure) as e:
        return {"error": str(e)}


def _print_status(out: dict[str, Any]) -> None:
    from serve_cleanup import _startup

    switch, ray_facts = out["switch"], out["ray"]
    if switch["on"]:
        on = f"on ({switch['pth']}" + (", strict" if switch["strict"] else "") + ")"
    elif switch["installed"]:
        on = f"off in this shell: {_startup.ENV_ENABLE}=0 ({switch['pth']} is installed)"
    elif switch["foreign"]:
        on = f"off ({switch['pth']} exists but was not written by serve-cleanup)"
    else:
        on = "off (run `serve-cleanup enable` to make every new controller durable)"
    click.echo(f"switch:          {on}")
    if ray_facts["version"] is None:
        ray_line = "not installed"
    elif not ray_facts["supported"]:
        ray_line = f"{ray_facts['version']} (NOT supported: serve_cleanup supports {ray_facts['supported_range']})"
    elif ray_facts["error"]:
        ray_line = f"{ray_facts['version']} (broken: {ray_facts['error']})"
    else:
        ray_line = f"{ray_facts['version']} (supported)"
    click.echo(f"ray:             {ray_line}")
    if "cluster" not in out:
        return
    cluster = out["cluster"]
    click.echo(f"cluster:         {cluster['address'] or '-'}" + (f" (cannot connect: {cluster['error']})" if cluster["error"] else ""))
    if cluster["error"]:
        return
    actor = out["controller_actor"]
    line = _KIND_NAMES[out["controller"]]
    if actor:
        line += f"; {actor['state']}, pid {actor['pid']}, {actor['num_restarts']} restart(s)"
    click.echo(f"controller:      {line}")
    scopes = out.get("records_by_scope")
    suffix = "" if scopes is None else " (" + (", ".join(f"{k}={v}" for k, v in sorted(scopes.items())) or "-") + ")"
    click.echo(f"records:         {out['records']}{suffix}")
    controller = out.get("controller_status")
    if controller and "error" not in controller:
        from serve_cleanup.cli import table

        rec = controller.get("last_reconcile") or {}
        when = table.timestamp(rec["at"]) if rec else "never"
        click.echo(f"last reconcile:  {when}" + (f" ({rec['seconds'] * 1000:.2f} ms, {rec['orphans']} orphan(s))" if rec else ""))
        last = controller.get("last_pass") or {}
        if last:
            click.echo(
                f"last kill pass:  {table.timestamp(last['at'])} ({last['reason']}: {last.get('killed', 0)} killed, "
                f"{last.get('already dead', 0)} already dead, {last.get('pending', 0)} pending)"
            )
        click.echo(f"rehydrated in:   {controller['rehydrate_ms']} ms at controller start")
    elif controller:
        click.echo(f"controller status unavailable: {controller['error']}")
    if "set_aside" in out:
        from serve_cleanup.cli import table

        click.echo(f"set aside:       {len(out['set_aside'])}")
        if out["set_aside"]:
            click.echo(table.render(("KEY", "BYTES", "REASON"), [(s["key"], s["size"], s["reason"]) for s in out["set_aside"]]))


@cli.command(help=(
    "Show the switch, the Ray version and the running controller's kind, read straight from "
    "GCS (no Ray driver). The exit code tells the kind, for probes: 0 durable, 3 plain, 4 no "
    "Serve, 5 cannot connect, 6 Ray missing or unsupported here."
))
@_address_option
@_json_option
@click.option("--detail", is_flag=True, help=(
    "Also read every record (counts by scope, set-aside entries) and ask the durable "
    "controller for its last passes (this connects as a Ray driver)."
))
def status(address: str, as_json: bool, detail: bool) -> None:
    out: dict[str, Any] = {"switch": _switch(), "ray": _ray_facts()}
    if out["ray"]["version"] is None or not out["ray"]["supported"] or out["ray"]["error"]:
        code = Exit.NO_RAY
    else:
        probe, code = _probe(address, detail)
        out.update(probe)
    out["exit_code"] = int(code)
    if as_json:
        _echo_json(out)
    else:
        _print_status(out)
    if code == Exit.NO_RAY:
        click.echo("Error: the cluster was not probed: Ray cannot be used from this Python (see `ray:`).", err=True)
    elif code == Exit.NO_CLUSTER:
        click.echo(f"Error: cannot connect to the Ray cluster: {out['cluster']['error']}", err=True)
    sys.exit(int(code))


# --- commands that call the controller ---------------------------------------------------


@cli.command(help="Kill registrations whose owner (app or deployment) is gone or whose actor is dead.")
@_address_option
@click.option("--dry-run", is_flag=True, help="Only show what would be killed.")
@_json_option
def gc(address: str, dry_run: bool, as_json: bool) -> None:
    _need_ray("gc")
    from serve_cleanup.cli import table
    from serve_cleanup.client.calls import collect
    from serve_cleanup.client.gcs import actor_states
    from serve_cleanup.core.reaper import DONE, Outcome
    from serve_cleanup.errors import ServeCleanupError

    _connect(address)
    _needs_durable("gc")
    try:
        with _waiting("the durable controller to " + ("look for" if dry_run else "collect") + " orphaned and dead registrations"):
            found = collect(dry_run=dry_run, timeout_s=30)
    except ServeCleanupError as e:
        raise Failure(Exit.ERROR, str(e)) from None
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("Nothing to collect.")
        return
    states = actor_states([d["actor_id"] for d in found])
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
        + (f", {skipped} unregistered or moved meanwhile (left alone)." if skipped else ".")
    )


def _actor_id(value: str) -> str:
    from serve_cleanup.core.records import normalize_actor_id

    try:
        return normalize_actor_id(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@cli.command(help="Remove the registration of ACTOR_ID (hex) without killing the actor.")
@_address_option
@click.argument("actor_id")
def unregister(address: str, actor_id: str) -> None:
    actor_id = _actor_id(actor_id)
    _need_ray("unregister")
    from serve_cleanup.client.calls import unregister as unregister_call
    from serve_cleanup.errors import ServeCleanupError

    _connect(address)
    _needs_durable("unregister")
    try:
        with _waiting(f"the durable controller to unregister {actor_id}"):
            removed = unregister_call(actor_id, timeout_s=30)
    except ServeCleanupError as e:
        raise Failure(Exit.ERROR, str(e)) from None
    if removed:
        click.echo(f"Unregistered {actor_id}; the actor was not killed.")
    else:
        click.echo(f"{actor_id} was not registered; nothing to do.")


@cli.command(help=(
    "Shut Serve down and wait until its controller is gone (also right after a controller "
    "crash, when `serve shutdown` may give up); then list what was killed and what is left. "
    "Exit code 0: nothing left; 7: records remain; 8: still running at --timeout."
))
@_address_option
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the controller to answer and the shutdown to finish.")
@_json_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (the Serve apps are deleted).")
def shutdown(address: str, timeout_s: float, as_json: bool, yes: bool) -> None:
    _need_ray("shutdown")
    from serve_cleanup.cli import table
    from serve_cleanup.client.shutdown import shutdown as shutdown_call
    from serve_cleanup.errors import ControllerUnavailableError, ServeCleanupError

    if not yes:
        click.confirm("Shut down Serve and delete all its applications?", abort=True, err=True)
    _connect(address)
    try:
        with _waiting("the Serve controller") as waiting:
            report = shutdown_call(timeout_s=timeout_s, waiting=waiting.update)
    except ControllerUnavailableError as e:
        raise Failure(Exit.TIMEOUT, str(e)) from None
    except ServeCleanupError as e:
        raise Failure(Exit.ERROR, str(e)) from None
    gone = report.killed + report.already_dead
    if as_json:
        _echo_json({
            "controller": report.controller,
            "seconds": round(report.seconds, 3),
            "gone": [{**r.to_dict(), "outcome": report.outcome(r)} for r in gone],
            "left": [{**r.to_dict(), "state": report.states.get(r.actor_id, "UNKNOWN")} for r in report.left],
        })
    else:
        if report.controller == "none":
            click.echo("Serve was not running.")
        else:
            click.echo(f"Serve is shut down ({_KIND_NAMES[report.controller]} controller, {report.seconds:.1f}s).")
        if gone:
            click.echo(table.records_table(
                [{**r.to_dict(), "outcome": report.outcome(r)} for r in gone],
                report.states, ("outcome",)))
        click.echo(f"{len(report.killed)} registered actor(s) killed, {len(report.already_dead)} already dead; "
                   f"{len(report.left)} record(s) left.")
        if report.left:
            click.echo(table.records_table([r.to_dict() for r in report.left], report.states))
    if report.left:
        raise Failure(
            Exit.RECORDS_LEFT,
            f"{len(report.left)} record(s) are still stored"
            + (" (a plain controller ignores them)" if report.controller == "plain" else "")
            + ": the next durable controller adopts them; `serve-cleanup purge <actor id>` deletes "
            "them now (the actors are not killed: `ray.kill` them first if they must go).",
        )


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
    if not (actor_ids or set_aside or everything):
        raise click.UsageError("name ACTOR_IDS, --set-aside or --all.")
    ids = [_actor_id(a) for a in actor_ids]
    _need_ray("purge")
    from serve_cleanup.cli import table
    from serve_cleanup.client.controller import controller_kind
    from serve_cleanup.client.purge import purge_entries, purge_plan
    from serve_cleanup.errors import ControllerRunningError

    _connect(address)
    kind = controller_kind()
    if kind != "none" and not dry_run:
        raise Failure(Exit.ERROR, str(ControllerRunningError.for_kind(kind)))
    plan = purge_plan(ids, set_aside=set_aside, everything=everything)
    for actor_id in sorted(set(ids) - {p.actor_id for p in plan}):
        click.echo(f"{actor_id}: no record; nothing to delete.", err=True)
    if not plan:
        click.echo("Nothing to delete.")
        return
    click.echo(table.render(("KEY", "WHAT"), [(p.key, p.what) for p in plan]))
    if dry_run:
        click.echo(f"{len(plan)} entr{'y' if len(plan) == 1 else 'ies'} would be deleted (dry run).")
        if kind != "none":
            click.echo(f"Note: {ControllerRunningError.for_kind(kind)}", err=True)
        return
    if not yes:
        click.confirm(f"Delete {len(plan)} entr{'y' if len(plan) == 1 else 'ies'}? The actors are not killed.", abort=True)
    try:
        deleted = purge_entries(plan)  # checks again: Serve may have started meanwhile
    except ControllerRunningError as e:
        raise Failure(Exit.ERROR, str(e)) from None
    click.echo(f"Deleted {deleted} entr{'y' if deleted == 1 else 'ies'}; no actor was killed.")


@cli.command(help="Run the demo on a local embedded Ray: kill the controller, shut down, show nothing leaked.")
@click.option("--num-cpus", default=2, show_default=True, type=int, help="CPUs for the local Ray.")
def demo(num_cpus: int) -> None:
    _need_ray("demo")
    from serve_cleanup.cli.demo import run_demo

    sys.exit(run_demo(num_cpus=num_cpus))


def _fail(e: BaseException) -> NoReturn:
    """An exception no command turned into a message: still one line, never a traceback."""
    from serve_cleanup.errors import ServeCleanupError

    if isinstance(e, ServeCleanupError):
        message = str(e)
    else:
        message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    click.echo(f"Error: {message}", err=True)
    sys.exit(int(Exit.NO_CLUSTER if isinstance(e, ConnectionError) else Exit.ERROR))


def main() -> None:
    try:
        cli.main(prog_name="serve-cleanup")  # exits, also for click's own errors
    except Exception as e:
        _fail(e)


if __name__ == "__main__":
    main()
