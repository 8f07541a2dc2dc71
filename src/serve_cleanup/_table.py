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
