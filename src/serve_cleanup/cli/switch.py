"""``enable`` and ``disable``: the switch, a start-up hook (``.pth``) in site-packages.

Both work without Ray: they import only ``serve_cleanup._startup`` (the standard library).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import click

from serve_cleanup.cli.common import Exit, Failure


def _site_dir_option(help_text: str) -> Any:
    return click.option("--site-dir", default=None, type=click.Path(file_okay=False), help=help_text)


def _change_pth(site_dir: Optional[str], change: Callable[[Optional[str]], bool], verb: str, foreign: str) -> tuple[str, bool]:
    """Apply ``change`` (write or remove) to the hook unless the file in its place is not
    ours: its path, and whether anything changed."""
    from serve_cleanup import _startup

    path = _startup.pth_path(site_dir)
    try:
        if _startup.pth_state(site_dir) == "foreign":
            raise Failure(Exit.ERROR, f"{path} {foreign}")
        return path, change(site_dir)
    except OSError as e:
        raise Failure(Exit.ERROR, f"cannot {verb} {path}: {e.strerror or e}.") from None


@click.command(help="Make every Serve controller this Python environment creates the durable one.")
@_site_dir_option("Directory to install the start-up hook in. Defaults to this environment's site-packages.")
def enable(site_dir: Optional[str]) -> None:
    from serve_cleanup import _startup

    path, written = _change_pth(
        site_dir, _startup.write_pth, "write", "exists but was not written by serve-cleanup; remove it first."
    )
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


@click.command(help="Undo `enable`: Serve controllers created from now on are Ray's own.")
@_site_dir_option("Directory the start-up hook was installed in. Defaults to this environment's site-packages.")
def disable(site_dir: Optional[str]) -> None:
    from serve_cleanup import _startup

    path, removed = _change_pth(site_dir, _startup.remove_pth, "remove", "was not written by serve-cleanup; left alone.")
    if not removed:
        click.echo(f"Already disabled: {path} does not exist; nothing changed.")
        return
    click.echo(f"Disabled: removed {path}.")
    click.echo(
        "A durable controller that runs keeps running (and Ray restarts it as one) until "
        "Serve shuts down; restart Ray so running processes (the dashboard) drop the hook."
    )
