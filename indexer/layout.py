"""Where index versions live: ``ROOT/index/<version>/`` and the ``ROOT/index/LATEST`` pointer."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from pipelines import storage

LATEST = "LATEST"
MANIFEST = "manifest.json"


def index_root(root: str) -> str:
    return storage.join(root, "index")


def version_dir(root: str, version: str) -> str:
    return storage.join(index_root(root), version)


def new_version_name(after: str | None = None) -> str:
    """Sortable by creation time, unique across concurrent writers, and greater than
    ``after`` (the parent) even if the clock stepped back: clients compare versions by name
    (``min_version``), so a child must sort after its parent."""
    name = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")[:-3] + "-" + uuid.uuid4().hex[:6]
    if after and name <= after:
        name = after.split("-")[0] + "~" + uuid.uuid4().hex[:6]  # '~' sorts after '-'
    return name


def read_latest(root: str) -> str | None:
    url = storage.join(index_root(root), LATEST)
    return storage.read_json(url)["version"] if storage.exists(url) else None


def set_latest(root: str, version: str) -> None:
    """The last write of every publish: atomic, so readers see the old or the new version."""
    storage.write_json_atomic(storage.join(index_root(root), LATEST), {"version": version})


def list_versions(root: str) -> list[str]:
    """Complete versions (those with a manifest), oldest first; partial builds are invisible."""
    base = index_root(root)
    return [name for name in storage.list_names(base)
            if name != LATEST and not name.startswith(".")
            and storage.exists(storage.join(base, name, MANIFEST))]
