"""``serve-cleanup``: the command line, following Ray's ``serve`` CLI conventions."""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

RAY_INIT_ADDRESS_HELP = (
    "Address to use for ray.init(). Can also be set using the RAY_ADDRESS environment variable."
)


@click.group(help="Durable shutdown-cleanup registrations for Ray Serve.")
@click.version_option(package_name="serve-cleanup")
def cli() -> None:
    pass


@cli.command(help="Start Serve on the Ray cluster with the durable controller.")
@click.option(
    "--address", "-a", default=os.environ.get("RAY_ADDRESS", "auto"), show_default=True,
    help=RAY_INIT_ADDRESS_HELP,
)
@click.option("--http-host", default=None, help="Host for HTTP proxies to listen on. Defaults to localhost.")
@click.option("--http-port", default=None, type=int, help="Port for HTTP proxies to listen on. Defaults to 8000.")
@click.option(
    "--proxy-location", default=None, type=click.Choice(["Disabled", "HeadOnly", "EveryNode"]),
    help="Location of the proxies. Defaults to EveryNode.",
)
@click.option("--grpc-port", default=None, type=int, help="Port for gRPC proxies to listen on. Defaults to 9000.")
def start(
    address: str,
    http_host: Optional[str],
    http_port: Optional[int],
    proxy_location: Optional[str],
    grpc_port: Optional[int],
) -> None:
    import ray

    from serve_cleanup import _compat, client
    from serve_cleanup.errors import ServeCleanupError

    ray.init(address=address, namespace=_compat.SERVE_NAMESPACE, log_to_driver=False)
    kind = client.controller_kind()
    http = {k: v for k, v in {"host": http_host, "port": http_port}.items() if v is not None}
    kwargs: dict = {}
    if http:
        kwargs["http_options"] = http
    if proxy_location:
        kwargs["proxy_location"] = proxy_location
    if grpc_port is not None:
        kwargs["grpc_options"] = {"port": grpc_port}
    try:
        client.start(**kwargs)
    except ServeCleanupError as e:
        raise click.ClickException(str(e)) from None
    if kind == "durable":
        click.echo("Serve is already running with the durable controller; nothing to do.")
    else:
        click.echo("Started Serve with the durable controller.")


@cli.command(help="Run the demo on a local embedded Ray: kill the controller, shut down, show nothing leaked.")
@click.option("--num-cpus", default=2, show_default=True, type=int, help="CPUs for the local Ray.")
def demo(num_cpus: int) -> None:
    from serve_cleanup.demo import run_demo

    sys.exit(run_demo(num_cpus=num_cpus))


def main() -> None:
    cli(prog_name="serve-cleanup")


if __name__ == "__main__":
    main()
