"""``serve-cleanup``: the command line, following Ray's ``serve`` CLI conventions.

One module per command group: ``status``; ``records`` (``list``, ``gc``, ``unregister``,
``purge``); ``serve`` (``start``, ``shutdown``); ``switch`` (``enable``, ``disable``);
``demo`` (its body; the command is here, as ``demo.py`` imports Ray). What they share
(exit codes, failures, the Ray checks, the driver connection, options) is in ``common``.

Importing this package imports neither Ray nor Serve: ``--help``, ``enable``, ``disable``
and the switch part of ``status`` work where Ray is missing, broken or of a release this
package does not support. Each command imports what it needs when it runs. ``list`` and
``status`` read GCS directly (no Ray driver, no Serve import); the commands that call the
controller (``start``, ``gc``, ``unregister``, ``shutdown``) connect as a driver.

Every failure is one ``Error: ...`` line on stderr and an exit code from
:class:`~serve_cleanup.cli.common.Exit`.
"""

from __future__ import annotations

import sys

import click

from serve_cleanup.cli import records, serve, status, switch
from serve_cleanup.cli.common import fail, need_ray


@click.group(help="Durable shutdown-cleanup registrations for Ray Serve.")
@click.version_option(package_name="serve-cleanup")
def cli() -> None:
    pass


@cli.command(name="demo", help="Run the demo on a local embedded Ray: kill the controller, shut down, show nothing leaked.")
@click.option("--num-cpus", default=2, show_default=True, type=int, help="CPUs for the local Ray.")
def demo_command(num_cpus: int) -> None:
    need_ray("demo")
    from serve_cleanup.cli.demo import run_demo

    sys.exit(run_demo(num_cpus=num_cpus))


for _command in (
    status.status,
    records.list_, records.gc, records.unregister, records.purge,
    serve.start, serve.shutdown,
    switch.enable, switch.disable,
):
    cli.add_command(_command)
del _command


def main() -> None:
    try:
        cli.main(prog_name="serve-cleanup")  # exits, also for click's own errors
    except Exception as e:
        fail(e)
