"""``status``: what this machine and the cluster say, in three parts, each on its own:

* the facts of this Python: the switch (the start-up hook) and the Ray release, read
  without importing Ray where it cannot be used;
* the cluster: the Serve controller's kind and the records, read straight from GCS (no
  Ray driver); with ``--detail`` every record, and the durable controller's own view
  (asked through a driver);
* the output: JSON, or aligned text; and the exit code, which tells the controller's kind.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import click

from serve_cleanup.cli.common import (
    KIND_EXIT, KIND_NAMES, Exit, Failure, address_option, connect, echo_json, json_option, ray_problem,
)

# --- this Python --------------------------------------------------------------------------


def switch_facts() -> dict[str, Any]:
    """The start-up hook: installed, someone else's file, turned off in this shell."""
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


def ray_facts() -> dict[str, Any]:
    """The installed Ray release, whether it is supported, and why it cannot be used."""
    from serve_cleanup.serve_adapter import versions

    version = versions.installed_ray_version()
    supported = version is not None and versions.is_supported(version)
    return {
        "version": version,
        "supported": supported,
        "supported_range": versions.SUPPORTED_RAY,
        "error": ray_problem() if supported else None,
    }


# --- the cluster --------------------------------------------------------------------------


def probe(address: str, detail: bool) -> tuple[dict[str, Any], Exit]:
    """The cluster part, and the exit code it gives. No Ray driver unless ``detail`` asks
    the durable controller for its own view."""
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
        out.update(_detail(reader, kind))
    return out, KIND_EXIT[kind]


def _detail(reader: Any, kind: str) -> dict[str, Any]:
    """``--detail``: every record read (counted by scope), the set-aside entries, and the
    durable controller's view."""
    from collections import Counter

    from serve_cleanup.core.records import records_by_scope

    records, set_aside = reader.records()
    return {
        "records": len(records),
        "pairs": sum(len(r.pairs) for r in records),
        "records_by_scope": records_by_scope((o[0], 1) for r in records for o, _ in r.pairs),
        "records_by_kind": dict(sorted(Counter(r.kind for r in records).items())),
        "set_aside": [s.to_dict() for s in set_aside],
        "controller_status": _controller_view(reader.address) if kind == "durable" else None,
    }


def _controller_view(gcs_address: str) -> dict[str, Any]:
    """The durable controller's own status, asked through a Ray driver."""
    from serve_cleanup.client.calls import controller_status
    from serve_cleanup.errors import ServeCleanupError

    try:
        connect(gcs_address)
        return controller_status(timeout_s=10)
    except (ServeCleanupError, Failure) as e:
        return {"error": str(e)}


# --- the output ---------------------------------------------------------------------------


def _field(label: str, text: str) -> None:
    click.echo(f"{label + ':':<17}{text}")


def _switch_text(switch: dict[str, Any]) -> str:
    from serve_cleanup import _startup

    if switch["on"]:
        return f"on ({switch['pth']}" + (", strict" if switch["strict"] else "") + ")"
    if switch["installed"]:
        return f"off in this shell: {_startup.ENV_ENABLE}=0 ({switch['pth']} is installed)"
    if switch["foreign"]:
        return f"off ({switch['pth']} exists but was not written by serve-cleanup)"
    return "off (run `serve-cleanup enable` to make every new controller durable)"


def _ray_text(ray: dict[str, Any]) -> str:
    if ray["version"] is None:
        return "not installed"
    if not ray["supported"]:
        return f"{ray['version']} (NOT supported: serve_cleanup supports {ray['supported_range']})"
    if ray["error"]:
        return f"{ray['version']} (broken: {ray['error']})"
    return f"{ray['version']} (supported)"


def _print_cluster(out: dict[str, Any]) -> None:
    """The controller's kind and actor, and the records (by scope with ``--detail``)."""
    actor = out["controller_actor"]
    line = KIND_NAMES[out["controller"]]
    if actor:
        line += f"; {actor['state']}, pid {actor['pid']}, {actor['num_restarts']} restart(s)"
    _field("controller", line)
    scopes = out.get("records_by_scope")
    suffix = "" if scopes is None else " (" + (", ".join(f"{k}={v}" for k, v in sorted(scopes.items())) or "-") + ")"
    _field("records", f"{out['records']}{suffix}")
    kinds = out.get("records_by_kind")
    if kinds:
        _field("kinds", ", ".join(f"{k}={v}" for k, v in kinds.items()))


def _print_controller_view(view: Optional[dict[str, Any]]) -> None:
    """``--detail`` with a durable controller: its last reconcile and kill pass."""
    from serve_cleanup.cli import table

    if not view:
        return
    if "error" in view:
        click.echo(f"controller status unavailable: {view['error']}")
        return
    rec = view.get("last_reconcile") or {}
    when = table.timestamp(rec["at"]) if rec else "never"
    _field("last reconcile", when + (f" ({rec['seconds'] * 1000:.2f} ms, {rec['orphans']} orphan(s))" if rec else ""))
    last = view.get("last_pass") or {}
    if last:
        _field("last kill pass", (
            f"{table.timestamp(last['at'])} ({last['reason']}: {last.get('killed', 0)} killed, "
            f"{last.get('already dead', 0)} already dead, {last.get('pending', 0)} pending)"
        ))
    _field("rehydrated in", f"{view['rehydrate_ms']} ms at controller start")


def _print_set_aside(entries: list[dict[str, Any]]) -> None:
    from serve_cleanup.cli import table

    _field("set aside", str(len(entries)))
    if entries:
        click.echo(table.render(("KEY", "BYTES", "REASON"), [(s["key"], s["size"], s["reason"]) for s in entries]))


def print_status(out: dict[str, Any]) -> None:
    """``status`` as text: one aligned line a fact, the parts the probe reached."""
    _field("switch", _switch_text(out["switch"]))
    _field("ray", _ray_text(out["ray"]))
    cluster = out.get("cluster")
    if cluster is None:
        return
    _field("cluster", (cluster["address"] or "-") + (f" (cannot connect: {cluster['error']})" if cluster["error"] else ""))
    if cluster["error"]:
        return
    _print_cluster(out)
    _print_controller_view(out.get("controller_status"))
    if "set_aside" in out:
        _print_set_aside(out["set_aside"])


# --- the command --------------------------------------------------------------------------


@click.command(help=(
    "Show the switch, the Ray version and the running controller's kind, read straight from "
    "GCS (no Ray driver). The exit code tells the kind, for probes: 0 durable, 3 plain, 4 no "
    "Serve, 5 cannot connect, 6 Ray missing or unsupported here."
))
@address_option
@json_option
@click.option("--detail", is_flag=True, help=(
    "Also read every record (counts by scope, set-aside entries) and ask the durable "
    "controller for its last passes (this connects as a Ray driver)."
))
def status(address: str, as_json: bool, detail: bool) -> None:
    out: dict[str, Any] = {"switch": switch_facts(), "ray": ray_facts()}
    if out["ray"]["version"] is None or not out["ray"]["supported"] or out["ray"]["error"]:
        code = Exit.NO_RAY
    else:
        found, code = probe(address, detail)
        out.update(found)
    out["exit_code"] = int(code)
    if as_json:
        echo_json(out)
    else:
        print_status(out)
    if code == Exit.NO_RAY:
        click.echo("Error: the cluster was not probed: Ray cannot be used from this Python (see `ray:`).", err=True)
    elif code == Exit.NO_CLUSTER:
        click.echo(f"Error: cannot connect to the Ray cluster: {out['cluster']['error']}", err=True)
    sys.exit(int(code))
