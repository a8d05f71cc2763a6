"""Versions form a history through their parents: list it, and move LATEST back."""
from __future__ import annotations

import logging
from typing import Iterable, Iterator

from indexer.layout import list_versions, read_latest
from indexer.manifest import IndexManifest
from indexer.store import verify_version

log = logging.getLogger("vmem.index")

# Operations after which every item the parent serves is still served: an add (new items; an
# id already live is refused) and a soft prune (weights only). A compaction qualifies when it
# purged nothing (it only merged segments); one that purged rows dropped forgotten bytes,
# which its parent's files still hold. A build, delete, hard prune or rollback can remove
# items the parent serves.
ADDITIVE_OPERATIONS = frozenset({"add", "prune-soft"})


def _keeps(child: IndexManifest, parent: IndexManifest, shards, purged_ok: bool) -> bool:
    """Whether ``parent``'s files of ``shards`` may serve in place of ``child``'s: nothing
    ``child`` hides in those shards is visible in them, and (unless ``purged_ok``) nothing it
    purged is in them (a manifest without the record counts as purging)."""
    if child.operation in ADDITIVE_OPERATIONS:
        return True
    if child.operation == "compact" and (purged_ok or _purged_nothing(child.details.get("purged"))
                                         or not any(parent.shards[s].tombstones for s in shards)):
        # A compaction purges the tombstones of its snapshot, a prefix of its parent's
        # (indexer/edit.py _rebase): where the parent hides nothing, nothing was purged.
        return True
    return all(child.shards[s] == parent.shards[s] for s in shards)  # untouched by the edit


def _purged_nothing(purged) -> bool:
    """Whether a compaction's ``purged`` record (its manifest's details, indexer/edit.py: how
    many rows it purged) says none; a missing record counts as purging."""
    return isinstance(purged, int) and not isinstance(purged, bool) and purged == 0


def fallback_versions(root: str, manifest: IndexManifest, shards: Iterable[int] | None = None,
                      depth: int = 10, purged_ok: bool = False) -> Iterator[IndexManifest]:
    """``manifest``'s ancestors, newest first, whose files of ``shards`` (default all) a
    replica may serve in place of ``manifest``'s without bringing back an item deleted or
    purged since: the walk goes back through parents while each step is an add, a soft prune
    or a compaction that purged nothing, or leaves those shards' entries unchanged; at most
    ``depth`` steps that changed those shards (a step that left them as they were, an edit
    of other shards, is not counted; at most ``100 * depth`` manifests are read), the same
    shard count (serving/searchers.py, serving/follower.py).
    ``purged_ok``: a compaction that purged rows may be passed too (its parent hides the same
    items and only still holds their bytes: a replica already serving it may keep it). Reads
    one manifest per step; raises FileNotFoundError when a parent's manifest is gone (gc)."""
    shards = list(range(manifest.num_shards)) if shards is None else list(shards)
    current, changed = manifest, 0
    for _ in range(100 * depth):
        if not current.parent or changed >= depth:
            return
        parent = IndexManifest.read(root, current.parent)
        if parent.num_shards != manifest.num_shards or not _keeps(current, parent, shards, purged_ok):
            return
        changed += any(current.shards[s] != parent.shards[s] for s in shards)
        yield parent
        current = parent


def stand_in_versions(root: str, manifest: IndexManifest, depth: int = 10) -> Iterator[IndexManifest]:
    """``manifest``'s ancestors, newest first, that a replica may serve whole while
    ``manifest`` (a newer version) cannot be loaded, showing nothing ``manifest`` hid: the walk
    goes back through steps that hide nothing their parent shows, the steps
    ``fallback_versions`` passes (a compaction that purged rows too: its parent hides them,
    a replica serving it already holds their bytes) and builds over every batch their parent
    held, at the same shard count. A build reads the batches less the forget ledger and
    publishes only over a version that already hides every item in it (indexer/build.py
    ``_check_unchanged``). Per shard a build is never a fallback (its files hold other codes
    and rows); as a whole version its parent shows what it shows, or older. At most ``depth``
    steps (``100 * depth`` manifests read); raises FileNotFoundError when a manifest on the
    way is gone (gc)."""
    shards = list(range(manifest.num_shards))
    current, changed = manifest, 0
    for _ in range(100 * depth):
        if not current.parent or changed >= depth:
            return
        parent = IndexManifest.read(root, current.parent)
        if parent.num_shards != manifest.num_shards:
            return
        if current.operation == "build":
            if not set(parent.batches) <= set(current.batches):
                return  # a build that left a batch out: its items were meant to go
        elif not _keeps(current, parent, shards, purged_ok=True):
            return
        changed += any(current.shards[s] != parent.shards[s] for s in shards)
        yield parent
        current = parent


def stands_in(root: str, manifest: IndexManifest, version: str, depth: int = 10) -> bool:
    """Whether ``version`` is one of ``manifest``'s ``stand_in_versions`` (the walk stops once
    found)."""
    return any(m.version == version for m in stand_in_versions(root, manifest, depth))


def fallback_ancestors(root: str, manifest: IndexManifest, depth: int = 10) -> list[IndexManifest]:
    """Every ancestor of ``manifest`` that is a fallback version (``fallback_versions``) of at
    least one of its shards with other files for it than ``manifest``'s, newest first: what a replica serving ``manifest`` may load a shard
    from when that shard's files fail (indexer/gc.py keeps them). One walk for all shards,
    one manifest read per step; stops at a manifest already gone (gc)."""
    walking = {s: 0 for s in range(manifest.num_shards)}  # shard -> steps that changed it
    current, found, path = manifest, [], []
    for _ in range(100 * depth):
        if not current.parent or not walking:
            break
        try:
            parent = IndexManifest.read(root, current.parent)
        except FileNotFoundError:
            break
        if parent.num_shards != manifest.num_shards:
            break
        for shard in list(walking):
            if walking[shard] >= depth or not _keeps(current, parent, [shard], False):
                del walking[shard]
            else:
                walking[shard] += current.shards[shard] != parent.shards[shard]
        if not walking:
            break
        path.append(parent)
        if any(parent.shards[s].files() != manifest.shards[s].files() for s in walking):
            found = list(path)  # other files than the served version's for a shard, and every
            # version the walk passes on the way (their manifests hold the parent links)
        current = parent
    return found


def history(root: str) -> list[dict]:
    """Every committed version, oldest first, the head marked ``latest``. Versions are listed
    before the head is read, and those named after it are left out: a publish in flight (its
    manifest written, its commit not yet claimed, e.g. the Writer's background compaction) or
    one that lost the race (its folder about to be removed) is not history. A LATEST moved
    back by hand (``layout.set_latest``) hides the later versions the same way. Raises
    FileNotFoundError when ``root`` has no published version."""
    versions = list_versions(root)
    latest = read_latest(root)
    if latest is None:
        raise FileNotFoundError(f"no published version under {root} (run `vmem index build`)")
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
    rollback never brings a deleted item back. Nor their bytes, once purged: when ``to``'s
    files hold forgotten rows that the current version's files no longer hold (a ``delete
    --purge`` or a compaction since), the shards holding them are compacted at once, under the
    same lock, and that compaction is the version returned (its parent is the rollback; its
    details carry the rollback's: ``rolled_back_to``, ``forgotten_tombstoned``...).
    Returns the new version's name. Raises FileNotFoundError (no such version), ValueError (no
    parent), ChecksumMismatch."""
    from indexer.edit import _compact, _stored, publish
    from indexer.executor import LocalExecutor
    from indexer.forgotten import forgotten_ids
    from indexer.layout import new_version_name
    from indexer.leases import edit_lock
    from indexer.tasks import shard_of

    with edit_lock(root):  # refuses a memory with no index before taking the lock
        current = read_latest(root)
        target = to or IndexManifest.read(root, current).parent
        if target is None:
            raise ValueError(f"version {current} has no parent to roll back to")
        old = IndexManifest.read(root, target)
        verify_version(root, old)
        parent = IndexManifest.read(root, current)
        forgotten = forgotten_ids(root)
        purged = forgotten[_stored(root, old, forgotten) & ~_stored(root, parent, forgotten)]
        old.version = parent.version  # publish() names the parent; the files are the target's
        version = new_version_name(current)
        shards, kept_forgotten = _without_forgotten(root, version, old)
        details = {"rolled_back_to": target, "from": current,
                   "forgotten_tombstoned": kept_forgotten, "purged_again": int(len(purged))}
        manifest = publish(root, old, version, "rollback", shards, old.batches, details)
        if len(purged):
            log.info("rollback to %s would bring back the bytes of %d purged items: compacting "
                     "their shards", target, len(purged))
            manifest = _compact(root, manifest, LocalExecutor(progress=False),
                                set(shard_of(purged, manifest.num_shards).tolist()), details)
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
