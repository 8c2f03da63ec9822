"""The Prometheus scrape targets file (`file_sd`), written from the fleet registry.

Prometheus re-reads a file_sd file when it changes, so a node enrolled in the console is
scraped within one refresh, with the labels the dashboards group by: `node`, `region`,
`node_class` (and `node_uid`, stable across renames). Every enrolled node is a target whatever
its status, so an offline node shows as `up == 0` instead of vanishing.

The file is replaced atomically (write beside it, then rename) and only when its content
changes, so Prometheus never reads half a file and an idle fleet causes no reloads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from fleet.models import Node


def targets() -> list[dict]:
    """One file_sd entry per enrolled node, in a stable order."""
    entries = []
    nodes = Node.objects.select_related("region", "node_class").order_by("uid")
    for node in nodes:
        url = urlsplit(node.endpoint)
        if not url.hostname:
            continue
        port = url.port or (443 if url.scheme == "https" else 80)
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        entries.append(
            {
                "targets": [f"{host}:{port}"],
                "labels": {
                    "__scheme__": url.scheme,
                    "__metrics_path__": url.path.rstrip("/") + "/metrics",
                    "node": node.name,
                    "node_uid": node.uid,
                    "region": node.region.code,
                    "node_class": node.node_class.name,
                },
            }
        )
    return entries


def write_targets(path: Path) -> bool:
    """Write the targets to `path` if they changed; True when the file was (re)written."""
    content = json.dumps(targets(), indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == content:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True
