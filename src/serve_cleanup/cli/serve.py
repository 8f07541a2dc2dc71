"""``start`` and ``shutdown``: Serve itself, started with the durable controller and shut
down to the end. Both connect as a Ray driver."""

from __future__ import annotations

from typing import Any, Optional

import click

from serve_cleanup.cli.common import (
    KIND_NAMES, Exit, Failure, address_option, connect, echo_json, failing_as, json_option, need_ray, waiting,
)


@click.command(help="Start Serve on the Ray cluster with the durable controller (options as `serve start`).")
@address_option
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

    need_ray("start")
    from serve_cleanup.client.start import start_durable

    connect(address)
    http = _given({"host": http_host, "port": http_port})
    grpc = _given({
        "port": grpc_port,
        "grpc_servicer_functions": list(grpc_servicer_functions) or None,
        "enable_reflection": grpc_enable_reflection,
    })
    with failing_as(Exit.ERROR), warnings.catch_warnings(record=True) as caught, \
            waiting("the Serve controller") as progress:
        warnings.simplefilter("always")
        outcome = start_durable(
            say=progress.note,
            waiting=progress.update,
            http_options=http or None,
            grpc_options=grpc or None,
            proxy_location=proxy_location,
        )
    for w in caught:
        if str(w.message).startswith("serve_cleanup"):
            click.echo(f"Warning: {w.message}", err=True)
    if outcome == "already running":
        click.echo("Serve is already running with the durable controller; nothing to do.")
    else:
        click.echo("Started Serve with the durable controller.")


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (those not None)."""
    return {k: v for k, v in options.items() if v is not None}


@click.command(help=(
    "Shut Serve down and wait until its controller is gone (also right after a controller "
    "crash, when `serve shutdown` may give up); then list what was killed and what is left. "
    "Exit code 0: nothing left; 7: records remain; 8: still running at --timeout."
))
@address_option
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the controller to answer and the shutdown to finish.")
@json_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (the Serve apps are deleted).")
def shutdown(address: str, timeout_s: float, as_json: bool, yes: bool) -> None:
    need_ray("shutdown")
    from serve_cleanup.client.shutdown import shutdown as shutdown_call
    from serve_cleanup.errors import ControllerUnavailableError

    if not yes:
        click.confirm("Shut down Serve and delete all its applications?", abort=True, err=True)
    connect(address)
    with failing_as(Exit.ERROR), failing_as(Exit.TIMEOUT, ControllerUnavailableError), \
            waiting("the Serve controller") as progress:
        report = shutdown_call(timeout_s=timeout_s, waiting=progress.update)
    gone = [{**r.to_dict(), "outcome": report.outcome(r)} for r in report.killed + report.already_dead]
    if as_json:
        echo_json({
            "controller": report.controller,
            "seconds": round(report.seconds, 3),
            "gone": gone,
            "left": [{**r.to_dict(), "state": report.states.get(r.actor_id, "UNKNOWN")} for r in report.left],
        })
    else:
        _print_report(report, gone)
    if report.left:
        raise Failure(
            Exit.RECORDS_LEFT,
            f"{len(report.left)} record(s) are still stored"
            + (" (a plain controller ignores them)" if report.controller == "plain" else "")
            + ": the next durable controller adopts them; `serve-cleanup purge <actor id>` deletes "
            "them now (the actors are not killed: `ray.kill` them first if they must go).",
        )


def _print_report(report: Any, gone: list[dict[str, Any]]) -> None:
    """``shutdown``'s text: the controller that ran, the records gone and those left."""
    from serve_cleanup.cli import table

    if report.controller == "none":
        click.echo("Serve was not running.")
    else:
        click.echo(f"Serve is shut down ({KIND_NAMES[report.controller]} controller, {report.seconds:.1f}s).")
    if gone:
        click.echo(table.records_table(gone, report.states, ("outcome",)))
    click.echo(f"{len(report.killed)} registered actor(s) killed, {len(report.already_dead)} already dead; "
               f"{len(report.left)} record(s) left.")
    if report.left:
        click.echo(table.records_table([r.to_dict() for r in report.left], report.states))
