"""The version history's edge cases: fallback versions (which an older version may stand in for
a shard of the served one), gc of them, rollbacks past a purge, unlearned ids added again, and
the CLI over a prune that a compaction follows."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, forget_status, run_add, run_compact, run_delete
from indexer.executor import LocalExecutor
from indexer.history import fallback_ancestors, fallback_versions, rollback
from indexer.manifest import IndexManifest
from indexer.segments import CompactionPolicy
from indexer.store import load_index
from indexer.tasks import shard_of, stored_ids
from tests.indexer_helpers import load_embeddings

LOCAL = LocalExecutor()
NEVER = CompactionPolicy(max_tombstone_fraction=1.0, max_segments=1000)


def flip(root: str, path: str) -> None:
    """Corrupt one byte in the middle of ``ROOT/index/<path>``."""
    from pathlib import Path

    full = Path(root) / "index" / path
    data = bytearray(full.read_bytes())
    data[len(data) // 2] ^= 0xFF
    full.write_bytes(bytes(data))


def test_a_compaction_is_passed_for_a_shard_it_only_merged_though_it_purged_another(memory_copy):
    """run_compact purges rows of shard 0 and only merges shard 1: shard 1 purged nothing, so
    its parent's files may stand in for it (the manifest's purged count is the version's, not
    the shard's: the parent's tombstones tell)."""
    from serving.searchers import ShardGroup

    run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)            # both shards get a delta
    ids = load_embeddings(memory_copy, ["train-b"])[0]
    doomed = np.sort(ids[shard_of(ids, 2) == 0][:5])                 # shard 0 only
    deleted, _ = run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), LOCAL, policy=NEVER)
    assert deleted.shards[1].tombstones == []
    merged = run_compact(memory_copy, LOCAL)                         # compacts shards 0 and 1
    assert merged.details["purged"] == 5 and merged.details["shards"] == [0, 1]

    flip(memory_copy, merged.shards[1].segments[0].index_path)
    group = ShardGroup(memory_copy, (0, 1), merged.version)
    assert [m.version for m in fallback_versions(memory_copy, merged, [1])][:1] == [deleted.version]
    assert group.stale == {1: deleted.version}


def test_the_fallback_depth_counts_only_steps_that_changed_the_shard(memory_copy):
    """Ten one-item deletes in shard 0 after an add; shard 1's delta of the add goes bad: the
    build serves shard 1 (nothing deleted there since). The ten deletes left shard 1 as it was
    and do not count against the walk's depth of 10."""
    from serving.searchers import ShardGroup

    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    added = run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)
    ids = load_embeddings(memory_copy, ["train-a"])[0]
    mine = np.sort(ids[shard_of(ids, 2) == 0])
    latest = added
    for i in range(10):
        latest, _ = run_delete(memory_copy, ForgetRequest(ids=[int(mine[i])]), LOCAL, policy=NEVER)
    assert latest.shards[1] == added.shards[1]
    flip(memory_copy, added.shards[1].segments[1].index_path)
    group = ShardGroup(memory_copy, (0, 1), latest.version)
    assert group.stale == {1: built.version}


def test_gc_keeps_the_version_a_degraded_replica_serves_a_shard_from(memory_copy):
    """Shard 1 of LATEST (a compaction that purged nothing) fails its checksum and is served
    from the parent. gc --keep 1 keeps that parent (it removed its manifest and shard files,
    so the replica's next load, a retry or a restart, left shard 1 out); --no-fallbacks
    drops it."""
    import os

    from indexer.gc import run_gc
    from serving.searchers import ShardGroup

    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    added = run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)
    merged = run_compact(memory_copy, LOCAL)
    flip(memory_copy, merged.shards[1].segments[0].index_path)
    assert ShardGroup(memory_copy, (0, 1), merged.version).stale == {1: added.version}
    report = run_gc(memory_copy, keep=1, grace_seconds=0)
    assert report["versions_kept"][added.version] == [f"fallback of {merged.version}"]
    assert report["versions_kept"][built.version] == [f"fallback of {merged.version}"]
    assert all(os.path.exists(f"{memory_copy}/index/{p}") for p, _ in added.shards[1].files())
    again = ShardGroup(memory_copy, (0, 1), merged.version)  # what a retry or a restart does
    assert again.stale == {1: added.version}

    report = run_gc(memory_copy, keep=1, grace_seconds=0, fallbacks=False)
    assert report["versions_removed"] == [built.version, added.version]
    assert ShardGroup(memory_copy, (0, 1), merged.version).shards == (0,)


def test_a_rollback_past_a_purge_purges_again(memory_copy):
    """delete --purge, then a rollback to the build: the items stay hidden (tombstoned again)
    and their bytes, which the build's files still hold, leave the live version again at once
    (a compaction under the rollback's lock), so the forget report still says they were
    removed. A rollback used to bring the purged rows back into the live files silently."""
    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    doomed = np.sort(load_embeddings(memory_copy, ["train-a"])[0][:5])
    compacted, report = run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), LOCAL, purge=True)
    delete_version = report["version"]
    assert forget_status(memory_copy, delete_version)["bytes_removed"]["version"] == compacted.version
    live = IndexManifest.read(memory_copy, rollback(memory_copy, built.version))
    assert live.operation == "compact" and live.details["rolled_back_to"] == built.version
    rolled = IndexManifest.read(memory_copy, live.parent)
    assert rolled.operation == "rollback" and rolled.details["purged_again"] == 5
    assert rolled.details["forgotten_tombstoned"] == 5
    held = np.concatenate([stored_ids(load_index(memory_copy, s, mmap=False))
                           for e in live.shards for s in e.segments])
    assert not np.isin(doomed, held).any()
    assert live.count == built.count - 5
    status = forget_status(memory_copy, delete_version)
    assert status["live"] and status["bytes_removed"]["version"] == live.version
    # a rollback that brings back no purged bytes compacts nothing
    again = IndexManifest.read(memory_copy, rollback(memory_copy, compacted.version))
    assert again.operation == "rollback" and again.details["purged_again"] == 0


def _online_item(memory: str, key: str):
    from types import SimpleNamespace

    from indexer.store import resolve_version

    dim = resolve_version(memory).dim
    vector = np.random.default_rng(3).standard_normal((1, dim)).astype(np.float32)
    return [SimpleNamespace(key=key, label="New", source=None, image_base64=None)], vector / np.linalg.norm(vector)


def test_an_unlearned_online_item_cannot_be_added_again_under_its_key(memory_copy):
    """Deletions are permanent: an online item forgotten and then sent again under the same key
    (the same id) is refused with the reason, nothing committed. Accepting it left an id both
    live and in the forget ledger: every later compaction of its shard raised (the purged id
    in the new base) and a rollback to the version serving it dropped it again."""
    from indexer.forgotten import ForgottenIds
    from indexer.layout import read_latest
    from pipelines.manifest import BatchManifest
    from serving.editing import add_items

    run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    encoder = BatchManifest.read(memory_copy, "train-a").encoder
    item, vector = _online_item(memory_copy, "k-1")
    first = add_items(memory_copy, item, vector, encoder)
    forgot, _ = run_delete(memory_copy, ForgetRequest(keys=["k-1"]), LOCAL, policy=None)
    assert forgot.count == first.count - 1
    with pytest.raises(ForgottenIds, match="unlearned"):
        add_items(memory_copy, item, vector, encoder)
    assert read_latest(memory_copy) == forgot.version
    other, vector = _online_item(memory_copy, "k-2")
    added = add_items(memory_copy, other, vector, encoder)
    assert added.count == first.count
    compacted = run_compact(memory_copy, LOCAL)  # purges k-1's row; raised before
    assert compacted.count == added.count
    back = IndexManifest.read(memory_copy, rollback(memory_copy, added.version))
    rolled = IndexManifest.read(memory_copy, back.parent)  # k-1's row, purged, is purged again
    assert back.operation == "compact" and back.count == added.count
    assert rolled.details["forgotten_tombstoned"] == 0 and rolled.details["purged_again"] == 1


def test_cli_prune_hard_past_the_compaction_policy_prints_the_prune(memory_copy, capsys):
    """`vmem index prune hard` that tombstones more than the compaction policy allows is
    followed by a compaction: the command reports both, the prune's summary from its own
    version (it read the compaction's details and raised KeyError after the commit)."""
    import json

    from indexer.cli import main
    from indexer.layout import read_latest
    from indexer.manifest import IndexManifest
    from indexer.reliability import measure
    from indexer.store import resolve_version

    run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    reliability = measure(memory_copy, resolve_version(memory_copy), 20, LOCAL)
    threshold = int(np.percentile(reliability.v_wrong, 90))
    assert main(["prune", "--memory", memory_copy, "--no-ray", "hard", "--k", "20",
                 "--threshold", str(threshold)]) == 0
    latest = IndexManifest.read(memory_copy, read_latest(memory_copy))
    pruned = IndexManifest.read(memory_copy, latest.parent)
    assert (latest.operation, pruned.operation) == ("compact", "prune-hard")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == pruned.details["prune"]
    assert summary["removed"] == int((reliability.v_wrong >= threshold).sum()) > 0


def test_gc_keeps_every_manifest_the_walk_to_a_fallback_passes(memory_copy):
    """build, add (both shards get a delta), delete one item of shard 0 (LATEST). Shard 1 of
    LATEST is the add's shard 1; its delta fails to load; its fallback is the build. gc keeps
    the build and the add between (its shard-1 files are LATEST's, but the replica's walk
    reads its manifest to reach the build)."""
    from indexer.gc import run_gc
    from serving.searchers import ShardGroup

    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    added = run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)
    ids = load_embeddings(memory_copy, ["train-a"])[0]
    doomed = int(np.sort(ids[shard_of(ids, 2) == 0])[0])
    latest, _ = run_delete(memory_copy, ForgetRequest(ids=[doomed]), LOCAL, policy=NEVER)
    assert latest.shards[1] == added.shards[1]
    flip(memory_copy, added.shards[1].segments[1].index_path)
    assert ShardGroup(memory_copy, (0, 1), latest.version).stale == {1: built.version}

    report = run_gc(memory_copy, keep=1, grace_seconds=0)
    assert report["versions_kept"].get(built.version) == [f"fallback of {latest.version}"]
    # what a retry or a restart of the degraded replica does:
    again = ShardGroup(memory_copy, (0, 1), latest.version)
    assert again.stale == {1: built.version}, (again.shards, again.degraded, report["versions_removed"])


def _chain(root: str, top: IndexManifest, n: int, shards=None) -> IndexManifest:
    """n hand-made versions on top of ``top`` (operation "delete", the same shard entries
    unless ``shards`` is given): versions that never change the shards walked."""
    import dataclasses

    from indexer.layout import new_version_name, set_latest

    current = top
    for _ in range(n):
        child = dataclasses.replace(current, version=new_version_name(current.version),
                                    parent=current.version, operation="delete",
                                    shards=list(shards or current.shards))
        child.write(root)
        current = child
    set_latest(root, current.version)
    return current


def _stored_live(root: str, manifest: IndexManifest, shard: int) -> tuple[set, set]:
    from indexer.segments import Shard

    sh = Shard(root, manifest.shards[shard])
    stored = set(np.concatenate([sh.segment_ids(n) for n in range(len(sh.entry.segments))]).tolist())
    live = set(sh.live_metadata().column("id").to_pylist())
    return stored, live


def _check_fallbacks(root: str, manifest: IndexManifest, deleted: set) -> list:
    """Every fallback of every shard serves no deleted id and holds no bytes the manifest's
    shard no longer holds (purged)."""
    seen = []
    for s in range(manifest.num_shards):
        stored, live = _stored_live(root, manifest, s)
        for fb in fallback_versions(root, manifest, [s]):
            fstored, flive = _stored_live(root, fb, s)
            assert not (flive & deleted), (s, fb.version, fb.operation)
            assert flive <= live, (s, fb.version)
            assert fstored <= stored | live, (s, fb.version, sorted(fstored - stored)[:5])
            seen.append((s, fb.operation))
    return seen


class _DeleteDuring:
    """An executor that, after the compaction's shard files are written (before the lock),
    runs ``edit`` once: another writer's commit lands between snapshot and publish."""

    def __init__(self, edit):
        self.edit, self.done = edit, False
        self.name, self.task_cpu_seconds = "local", 0.0

    def submit(self, fn, *args, **kw):
        return fn(*args)

    def get(self, handles, what="tasks", sizes=None):
        if what == "compacting" and not self.done:
            self.done = True
            self.edit()
        return list(handles)


@pytest.mark.parametrize("order", ["delete-during", "delete-before-and-during", "rollback-during"])
def test_no_fallback_after_a_compaction_shows_deleted_or_purged_items(memory_copy, order):
    from indexer.edit import compact_if_due
    from indexer.history import rollback

    policy = CompactionPolicy(max_tombstone_fraction=1.0, max_segments=1)  # every shard due
    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)
    ids = load_embeddings(memory_copy, ["train-b"])[0]
    zero, one = np.sort(ids[shard_of(ids, 2) == 0]), np.sort(ids[shard_of(ids, 2) == 1])
    deleted: set = set()

    def delete(batch):
        deleted.update(int(i) for i in batch)
        run_delete(memory_copy, ForgetRequest(ids=[int(i) for i in batch]), LOCAL, policy=NEVER)

    if order == "delete-before-and-during":
        delete(one[:3])
    if order == "rollback-during":
        delete(zero[:3])
        edit = lambda: rollback(memory_copy, built.version)
        deleted.update(int(i) for i in ids)  # the rollback drops train-b altogether
    else:
        edit = lambda: delete(zero[3:6])
    compacted = compact_if_due(memory_copy, _DeleteDuring(edit), policy)
    assert compacted.operation == "compact" or order == "rollback-during", compacted.operation
    print(order, compacted.details, _check_fallbacks(memory_copy, compacted, deleted))
    # and once more after a plain compaction of what is left
    again = run_compact(memory_copy, LOCAL)
    print(order, again.details.get("purged"), _check_fallbacks(memory_copy, again, deleted))


def test_forget_status_names_the_compaction_that_purged_the_last_bytes(memory_copy):
    """A delete in shards 0 and 1; a compaction of shard 0 only (compact_if_due purges the
    shards past the policy), later one of shard 1: the bytes left the live version's files
    with the second, which forget-status names."""
    from indexer.edit import forget_status

    run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    ids = np.sort(load_embeddings(memory_copy, ["train-a"])[0])
    doomed = np.concatenate([ids[shard_of(ids, 2) == 0][:3], ids[shard_of(ids, 2) == 1][:3]])
    _, report = run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), LOCAL, policy=NEVER)
    first = run_compact(memory_copy, LOCAL, {0})
    assert forget_status(memory_copy, report["version"])["bytes_removed"] is None  # shard 1 holds them
    second = run_compact(memory_copy, LOCAL, {1})
    status = forget_status(memory_copy, report["version"])
    assert status["bytes_removed"]["version"] == second.version, (first.version, second.version, status["bytes_removed"])


def test_forget_status_after_rollback_and_repurge_names_the_repurge(memory_copy):
    """delete --purge (C1), rollback to the build: the rollback purges the rows it brought
    back at once (C2, its own compaction), and forget-status says the bytes left with C2; a
    later compaction finds nothing to purge and changes nothing. (Before, the rollback left
    the bytes live, forget-status said None until a compaction ran.)"""
    from indexer.edit import forget_status
    from indexer.history import rollback

    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    doomed = np.sort(load_embeddings(memory_copy, ["train-a"])[0][:5])
    c1, report = run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), LOCAL, purge=True)
    c2 = rollback(memory_copy, built.version)
    status = forget_status(memory_copy, report["version"])
    assert status["bytes_removed"] is not None and status["bytes_removed"]["version"] == c2, (
        c1.version, c2, status["bytes_removed"])
    assert run_compact(memory_copy, LOCAL).version == c2  # every shard compacted already
    assert forget_status(memory_copy, report["version"])["bytes_removed"]["version"] == c2


def test_gc_on_odd_histories_does_not_raise(memory_copy):
    """Shard counts change (rebuild with 3 shards), a rollback across them, a leased version
    whose parent is gone, gc run twice."""
    import shutil

    from indexer import leases
    from indexer.gc import run_gc
    from indexer.history import rollback

    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    added = run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)
    merged = run_compact(memory_copy, LOCAL)
    rebuilt = run_build(BuildConfig(memory_copy, num_shards=3), LOCAL)
    back = IndexManifest.read(memory_copy, rollback(memory_copy, merged.version))
    ids = load_embeddings(memory_copy, ["train-a"])[0]
    deleted, _ = run_delete(memory_copy, ForgetRequest(ids=[int(ids[0])]), LOCAL, policy=NEVER)
    last = run_compact(memory_copy, LOCAL)
    leases.renew_lease(memory_copy, "replica-a", added.version, 600)
    print({m.version: m.operation for m in (built, added, merged, rebuilt, back, deleted, last)})
    print("ancestors of last", [(a.version, a.operation) for a in fallback_ancestors(memory_copy, last)])
    report = run_gc(memory_copy, keep=0, grace_seconds=0)
    print(report["versions_kept"], report["versions_removed"])
    shutil.rmtree(f"{memory_copy}/index/{built.version}")  # the leased version's parent gone
    report = run_gc(memory_copy, keep=0, grace_seconds=0)
    print(report["versions_kept"], report["versions_removed"])


def test_a_shard_group_stops_reading_history_at_the_first_ancestor_that_loads(memory_copy, monkeypatch):
    """build, 500 versions that leave the shards alone, add (LATEST). Shard 1's delta of the add
    is bad; its parent, one manifest away, serves shard 1: the walk stops there (it listed
    every fallback version first, 500+ manifest reads for one failing shard)."""
    from serving.searchers import ShardGroup

    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    _chain(memory_copy, built, 500)
    added = run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)
    flip(memory_copy, added.shards[1].segments[1].index_path)
    reads = []
    real = IndexManifest.read.__func__
    monkeypatch.setattr(IndexManifest, "read",
                        classmethod(lambda cls, root, v: reads.append(v) or real(cls, root, v)))
    group = ShardGroup(memory_copy, (0, 1), added.version)
    assert group.stale == {1: added.parent}
    assert len(reads) <= 5, len(reads)
