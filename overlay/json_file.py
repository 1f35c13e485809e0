"""JSON files other processes read while the plugin rewrites them (the totals, the phase
clocks): each write replaces the file whole, so a reader never sees it half written."""

from __future__ import annotations

import json
import os


def write_json_atomically(path: str, data: dict) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
