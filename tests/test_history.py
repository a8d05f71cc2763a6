"""The version history's edge cases: fallback versions (which an older version may stand in for
a shard of the served one), gc of them, rollbacks past a purge, unlearned ids added again, and
the CLI over a prune that a compaction follows."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, forget_status, run_add, run_compact, run_delete
from indexer.executor import LocalExecutor
from indexer.history import fallback_versions, rollback
from indexer.manifest import IndexManifest
from indexer.segments import CompactionPolicy
from indexer.store import load_index
from indexer.tasks import shard_of, stored_ids
from tests.indexer_helpers import load_embeddings

LOCAL = LocalExecutor()
NEVER = CompactionPolicy(max_tombstone_fraction=1.0, max_segments=1000)


def flip(root: str, path: str) -> None:
    full = f"{root}/index/{path}"
    data = bytearray(open(full, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(full, "wb").write(bytes(data))


def test_purging_compaction_blocks_fallback_of_a_shard_it_only_merged(memory_copy):
    """(b) run_compact purges rows of shard 0 and only merges shard 1: shard 1 purged nothing,
    so its parent's files may stand in for it; the walk stops there because the manifest's
    purged count is global."""
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


def test_fallback_depth_is_spent_on_steps_that_left_the_shard_unchanged(memory_copy):
    """(b) ten one-item deletes in shard 0 after an add; shard 1's delta of the add goes bad:
    the build can serve shard 1 (nothing deleted there since), but the walk's depth of 10 is
    used up by versions whose shard-1 files are the same bad ones."""
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


def test_forget_status_after_a_rollback_past_the_purge_says_the_bytes_are_back(memory_copy):
    """delete --purge, then a rollback to the build: the items stay hidden (tombstoned again)
    but the live version's files hold their rows again, so the forget report no longer says
    their bytes were removed (it did)."""
    built = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    doomed = np.sort(load_embeddings(memory_copy, ["train-a"])[0][:5])
    compacted, report = run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), LOCAL, purge=True)
    delete_version = report["version"]
    assert forget_status(memory_copy, delete_version)["bytes_removed"]["version"] == compacted.version
    live = IndexManifest.read(memory_copy, rollback(memory_copy, built.version))
    held = np.concatenate([stored_ids(load_index(memory_copy, s, mmap=False))
                           for e in live.shards for s in e.segments])
    assert np.isin(doomed, held).all() and live.details["forgotten_tombstoned"] == 5
    status = forget_status(memory_copy, delete_version)
    assert status["bytes_removed"] is None and status["live"]


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
    assert back.count == added.count and back.details["forgotten_tombstoned"] == 0


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
