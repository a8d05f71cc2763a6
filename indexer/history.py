"""Versions form a history through their parents: list it, and move LATEST back."""
from __future__ import annotations

from indexer.layout import list_versions, read_latest, set_latest
from indexer.manifest import IndexManifest
from indexer.store import verify_version


def history(root: str) -> list[dict]:
    latest = read_latest(root)
    rows = []
    for version in list_versions(root):
        manifest = IndexManifest.read(root, version)
        rows.append({"version": version, "latest": version == latest, "parent": manifest.parent,
                     "operation": manifest.operation, "count": manifest.count,
                     "shards": manifest.num_shards, "factory": manifest.factory,
                     "created": manifest.created,
                     "search": {k: v for k, v in manifest.search_defaults.items()
                                if k in ("nprobe", "k_factor") or k.startswith("recall_at_")}})
    return rows


def rollback(root: str, to: str | None = None) -> str:
    """Point LATEST at ``to`` (default: the current version's parent), after verifying every
    file of that version against its checksums."""
    current = read_latest(root)
    if current is None:
        raise FileNotFoundError(f"no index under {root}")
    target = to or IndexManifest.read(root, current).parent
    if target is None:
        raise ValueError(f"version {current} has no parent to roll back to")
    verify_version(root, IndexManifest.read(root, target))
    set_latest(root, target)
    return target
