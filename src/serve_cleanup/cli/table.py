"""A plain-text table for the CLI and the demo."""

from __future__ import annotations

import datetime as _dt
from typing import Iterable, Sequence


def render(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def timestamp(unix: float) -> str:
    return _dt.datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")


RECORD_HEADERS = ("KIND", "SCOPE", "APP", "DEPLOYMENT", "NAMESPACE", "NAME", "ID", "STATE", "REGISTERED AT")


def records_table(items: Sequence[dict], states: dict[str, str], extra: Sequence[str] = ()) -> str:
    """The `serve-cleanup list` table: records as dicts (``Record.to_dict()``), the actor
    (placement group) state per id, and optional extra columns taken from each dict. A
    placement group's id is shown as ``pg:<id>``, the form the commands take."""
    rows = [
        (
            d.get("kind", "actor"),
            d["scope"] + (f" (+{len(d['owners']) - 1} more)" if len(d.get("owners") or ()) > 1 else ""),
            d["app"] or "-", d["deployment"] or "-", d["namespace"] or "-",
            d["name"] or "(anonymous)",
            d["actor_id"] if d.get("kind", "actor") == "actor" else f"{d['kind']}:{d['actor_id']}",
            states.get(d["actor_id"], "?"),
            timestamp(d["registered_at"]), *(d.get(k, "") for k in extra),
        )
        for d in items
    ]
    return render(RECORD_HEADERS + tuple(k.upper() for k in extra), rows)
