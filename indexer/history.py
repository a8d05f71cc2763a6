"""Versions form a history through their parents: list it, and move LATEST back."""
from __future__ import annotations

from typing import Iterator

from indexer.layout import list_versions, read_latest
from indexer.manifest import IndexManifest
from indexer.store import verify_version

# Operations after which every item the parent serves is still served, or was already hidden
# in the parent: an add (new items, no item removed), a compaction (drops only items the
# parent's tombstones hide), a soft prune (weights only). Serving a parent instead of such a
# version can be stale, never bring a deleted item back. A build, delete, hard prune or
# rollback can remove items the parent serves.
ADDITIVE_OPERATIONS = frozenset({"add", "compact", "prune-soft"})


def additive_ancestors(root: str, manifest: IndexManifest, depth: int = 10) -> Iterator[IndexManifest]:
    """``manifest``'s ancestors, newest first, as far as every step back undoes an additive
    operation only (ADDITIVE_OPERATIONS) and keeps the shard count, at most ``depth`` of them:
    the versions a replica may serve in its place without bringing back an item deleted since
    (serving/searchers.py, serving/follower.py). Reads one manifest per ancestor; raises
    FileNotFoundError when a parent's manifest is missing."""
    current = manifest
    for _ in range(depth):
        if current.operation not in ADDITIVE_OPERATIONS or not current.parent:
            return
        parent = IndexManifest.read(root, current.parent)
        if parent.num_shards != manifest.num_shards:
            return
        yield parent
        current = parent


def history(root: str) -> list[dict]:
    """Every committed version, oldest first, the head marked ``latest``. Versions are listed
    before the head is read, and those named after it are left out: a publish in flight (its
    manifest written, its commit not yet claimed, e.g. the Writer's background compaction) or
    one that lost the race (its folder about to be removed) is not history. A LATEST moved
    back by hand (``layout.set_latest``) hides the later versions the same way."""
    versions = list_versions(root)
    latest = read_latest(root)
    rows = []
    for version in versions:
        if latest is not None and version > latest:
            continue
        manifest = IndexManifest.read(root, version)
        rows.append({"version": version, "latest": version == latest, "parent": manifest.parent,
                     "operation": manifest.operation, "count": manifest.count,
                     "shards": manifest.num_shards, "factory": manifest.factory,
                     "created": manifest.created,
                     "search": {k: v for k, v in manifest.search_defaults.items()
                                if k in ("nprobe", "k_factor") or k.startswith("recall_at_")}})
    return rows


def rollback(root: str, to: str | None = None) -> str:
    """Serve ``to`` again (default: the current version's parent), after verifying every file
    of that version against its checksums: published as a new version with ``to``'s files
    (operation "rollback"), so versions only move forward and replicas and clients comparing
    versions (``min_version``) see a newer one. Items unlearned since ``to`` (the forget
    ledger, indexer/forgotten.py) stay forgotten: they are tombstoned in the new version, so a
    rollback never brings a deleted item back. Returns the new version's name. Raises
    FileNotFoundError (no such version), ValueError (no parent), ChecksumMismatch."""
    from indexer.edit import publish
    from indexer.layout import new_version_name
    from indexer.leases import writer_lock

    with writer_lock(root):
        current = read_latest(root)
        if current is None:
            raise FileNotFoundError(f"no index under {root}")
        target = to or IndexManifest.read(root, current).parent
        if target is None:
            raise ValueError(f"version {current} has no parent to roll back to")
        old = IndexManifest.read(root, target)
        verify_version(root, old)
        parent = IndexManifest.read(root, current)
        old.version = parent.version  # publish() names the parent; the files are the target's
        version = new_version_name(current)
        shards, kept_forgotten = _without_forgotten(root, version, old)
        manifest = publish(root, old, version, "rollback", shards, old.batches,
                           {"rolled_back_to": target, "from": current,
                            "forgotten_tombstoned": kept_forgotten})
        return manifest.version


def _without_forgotten(root: str, version: str, manifest: IndexManifest) -> tuple[list, int]:
    """``manifest``'s shards with every id of the forget ledger that they still serve
    tombstoned under ``version``; and how many were. O(ledger size) per shard."""
    from indexer.forgotten import forgotten_ids
    from indexer.segments import Shard
    from indexer.tasks import shard_of

    forgotten = forgotten_ids(root)
    if not len(forgotten):
        return list(manifest.shards), 0
    owner = shard_of(forgotten, manifest.num_shards)
    shards, count = [], 0
    for entry in manifest.shards:
        shard = Shard(root, entry)
        mine = forgotten[owner == entry.shard]
        live = mine[shard.live(mine)] if len(mine) else mine
        shards.append(shard.tombstone(version, live) if len(live) else entry)
        count += len(live)
    return shards, count
