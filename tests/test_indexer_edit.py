"""Edits of a published memory: add, delete (unlearning), prune, history, checksums."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from indexer.build import BuildConfig, run_build
from indexer.checksums import ChecksumMismatch
from indexer.edit import ForgetRequest, forget_status, run_add, run_compact, run_delete
from indexer.executor import LocalExecutor
from indexer.history import history, rollback
from indexer.layout import read_latest
from indexer.prune import run_hard_prune, run_soft_prune
from indexer.reliability import Reliability, leave_one_out_neighbours, measure
from indexer.search import ShardedIndex
from indexer.segments import CompactionPolicy
from indexer.store import load_index, resolve_version
from indexer.tasks import shard_of, stored_ids
from tests.indexer_helpers import assert_same_topk, brute_force, load_embeddings

LOCAL = LocalExecutor()
NEVER = CompactionPolicy(max_tombstone_fraction=1.0, max_segments=1000)  # compact only when asked


def test_add_then_search_equals_build_with_everything(embedded_memory, memory_copy, tmp_path):
    everything_root = str(tmp_path / "everything")
    shutil.copytree(memory_copy, everything_root)
    run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    added = run_add(memory_copy, ["train-b"], LOCAL)
    assert (added.operation, added.count, added.batches) == ("add", 600, ["train-a", "train-b"])
    assert run_add(memory_copy, ["train-b"], LOCAL).version == added.version  # idempotent
    full = run_build(BuildConfig(everything_root, num_shards=2), LOCAL)
    queries = load_embeddings(str(embedded_memory / "queries"))[1]
    after_add = ShardedIndex(memory_copy, added).search(queries, 20)
    built = ShardedIndex(everything_root, full).search(queries, 20)
    np.testing.assert_array_equal(after_add[1], built[1])
    np.testing.assert_allclose(after_add[0], built[0], atol=1e-6)


def test_add_refuses_live_or_repeated_ids_and_publishes_nothing(memory_copy):
    """Each shard's segment task checks its own incoming ids (no id list on the driver): an
    id already live, or the same id in two new batches, fails the add; LATEST stays and the
    half-written version folder is removed."""
    from indexer.layout import list_versions
    from indexer.reader import DuplicateIds
    from pipelines.manifest import BatchManifest, read_embeddings, write_embedding_batch

    base = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    encoder = BatchManifest.read(memory_copy, "train-a").encoder
    write_embedding_batch(memory_copy, "again", read_embeddings(memory_copy, "train-a").slice(10, 30),
                          encoder, "test")
    with pytest.raises(DuplicateIds, match="ids of the new rows are already in the memory"):
        run_add(memory_copy, ["again"], LOCAL)
    b = read_embeddings(memory_copy, "train-b")
    write_embedding_batch(memory_copy, "b-copy", b.slice(0, 7), encoder, "test")
    with pytest.raises(DuplicateIds, match="occur more than once"):
        run_add(memory_copy, ["train-b", "b-copy"], LOCAL)
    assert read_latest(memory_copy) == base.version
    assert list_versions(memory_copy) == [base.version]
    assert run_add(memory_copy, ["train-b"], LOCAL).count == base.count + b.num_rows


def test_add_to_ivfpq_uses_the_trained_quantizer(memory_copy):
    base = run_build(BuildConfig(memory_copy, batches=["train-a"], factory="IVF8,PQ16x8"), LOCAL)
    added = run_add(memory_copy, ["train-b"], LOCAL)
    assert added.factory == base.factory and added.count == 600
    assert added.trained_path == base.trained_path  # one trained index for every segment
    import faiss

    from indexer.quantizer import is_stripped, trained_index

    segments = added.shards[0].segments
    assert len(segments) == 2 and all(is_stripped(load_index(memory_copy, s)) for s in segments)
    trained = faiss.extract_index_ivf(trained_index(memory_copy, added).index).quantizer.reconstruct_n(0, 8)
    for segment in segments:  # no retraining: each segment searches with the version's centroids
        index = load_index(memory_copy, segment, manifest=added)
        np.testing.assert_array_equal(faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 8), trained)


def test_delete_forgets_everywhere_and_changes_nothing_else(embedded_memory, memory_copy, tmp_path):
    """Unlearning (method.md section 5): the deleted items are gone from every shard file, no
    query returns them, and the answers equal those of a memory built without them."""
    run_build(BuildConfig(memory_copy, num_shards=3), LOCAL)
    ids, vectors, labels = load_embeddings(memory_copy)
    keys_table = ShardedIndex(memory_copy, resolve_version(memory_copy)).metadata()
    some_keys = [k for k, l in zip(keys_table.column("key").to_pylist(),
                                   keys_table.column("label").to_pylist()) if l == "Sneaker"][:7]
    manifest, report = run_delete(memory_copy, ForgetRequest(labels=["Bag"], keys=some_keys + ["nope"]),
                                  LOCAL, policy=NEVER)
    forgotten = np.asarray(report["ids"])
    assert report["removed"] == 60 + 7 and report["labels"] == {"Bag": 60, "Sneaker": 7}
    assert report["not_found"]["keys"] == ["nope"] and manifest.count == 600 - 67
    assert manifest.operation == "delete" and report["bytes_removed"] is None  # tombstones only
    assert all(len(e.tombstones) == 1 for e in manifest.shards)

    queries = np.concatenate([vectors[np.isin(ids, forgotten)],  # the forgotten images themselves
                              load_embeddings(str(embedded_memory / "queries"))[1]])
    queries = np.resize(np.concatenate([queries, vectors]), (1000, vectors.shape[1]))
    keep = ~np.isin(ids, forgotten)
    exact_scores, exact_ids = brute_force(ids[keep], vectors[keep], queries, 100)
    scores, found = ShardedIndex(memory_copy, manifest).search(queries, 100)
    assert not np.isin(found, forgotten).any()
    assert_same_topk((scores, found), (exact_scores, exact_ids))  # as if they had never been added

    compacted = run_compact(memory_copy, LOCAL)  # bytes leave every file of the live version
    assert compacted.operation == "compact" and compacted.count == 600 - 67
    for entry in compacted.shards:
        assert entry.compacted
        assert not np.isin(stored_ids(load_index(memory_copy, entry, mmap=False)), forgotten).any()
    scores, found = ShardedIndex(memory_copy, compacted).search(queries, 100)
    # physically gone; the same top-100 as brute force (near-ties within float rounding of two
    # BLAS blockings may swap: which ones depends on the ids, hence on the shard split)
    assert_same_topk((scores, found), (exact_scores, exact_ids), atol=1e-6)
    status = forget_status(memory_copy, manifest.version)
    assert status["bytes_removed"]["version"] == compacted.version
    assert status["stopped_returning"]["version"] == manifest.version
    with pytest.raises(FileNotFoundError, match=f"version {compacted.version} .* is not a delete"):
        forget_status(memory_copy, compacted.version)


def test_edits_on_ray_leave_the_shards_they_do_not_touch_as_they_were(memory_copy, ray_executor):
    """A delete that names items of one shard only, then a compaction of that shard alone, on
    real Ray tasks (``vmem index delete`` and ``compact`` run there by default): the other
    shard's entry is carried over unchanged, the deleted items never come back."""
    run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    parent = resolve_version(memory_copy)
    ids = stored_ids(load_index(memory_copy, parent.shards[0], mmap=False))
    doomed = ids[shard_of(ids, 2) == 0][:3]
    deleted, report = run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), ray_executor,
                                 policy=NEVER)
    assert report["removed"] == 3 and deleted.count == parent.count - 3
    assert deleted.shards[1] == parent.shards[1] and len(deleted.shards[0].tombstones) == 1
    compacted = run_compact(memory_copy, ray_executor)  # shard 0 only: shard 1 is compacted
    assert compacted.operation == "compact" and compacted.shards[1] == parent.shards[1]
    assert compacted.shards[0].compacted and compacted.count == parent.count - 3
    _, vectors, _ = load_embeddings(memory_copy)
    assert not np.isin(ShardedIndex(memory_copy, compacted).search(vectors[:200], 100)[1], doomed).any()
    assert not np.isin(stored_ids(load_index(memory_copy, compacted.shards[0], mmap=False)), doomed).any()


def test_forget_report_is_written_with_the_version(memory_copy):
    from pipelines import storage

    run_build(BuildConfig(memory_copy), LOCAL)
    manifest, report = run_delete(memory_copy, ForgetRequest(labels=["Coat"]), LOCAL)
    stored = storage.read_json(f"{memory_copy}/index/{manifest.version}/forget-report.json")
    assert stored["removed"] == 60 and stored["seconds_per_item"] > 0
    assert stored["stopped_returning"]["version"] == manifest.version
    with pytest.raises(ValueError, match="nothing to delete"):
        run_delete(memory_copy, ForgetRequest(labels=["Coat"]), LOCAL)


def test_unlearned_items_stay_out_of_rebuilds_and_adds(memory_copy):
    from indexer.forgotten import forgotten_ids

    run_build(BuildConfig(memory_copy), LOCAL)
    manifest, report = run_delete(memory_copy, ForgetRequest(labels=["Coat"]), LOCAL)
    assert np.array_equal(forgotten_ids(memory_copy), np.sort(report["ids"]))
    # The embedding batches still hold the rows; a rebuild from them must not bring them back.
    rebuilt = run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    assert rebuilt.count == 600 - 60 and rebuilt.details["unlearned_rows_left_out"] == 60
    assert not np.isin(ShardedIndex.ids_of(memory_copy, rebuilt), report["ids"]).any()
    # Pruning is not unlearning: hard-pruned items are not written to the ledger.
    run_hard_prune(memory_copy, LOCAL, 100, 32)
    assert len(forgotten_ids(memory_copy)) == 60


def test_leave_one_out_drops_self_or_last():
    found = np.array([[5, 1, 2, 3], [1, 2, 3, 4]])
    kept = leave_one_out_neighbours(np.array([1, 9]), found, 3)
    assert kept.tolist() == [[5, 2, 3], [1, 2, 3]]


def test_reliability_counts_equal_brute_force(memory_copy, ray_executor):
    run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    k = 10
    measured = measure(memory_copy, resolve_version(memory_copy), k, ray_executor)
    ids, vectors, labels = load_embeddings(memory_copy)
    labels = np.asarray(labels, dtype=object)
    _, found = brute_force(ids, vectors, vectors, k + 1)
    neighbours = leave_one_out_neighbours(ids, found, k)
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    wrong = {i: 0 for i in ids.tolist()}
    for query_label, row in zip(labels, neighbours):
        for neighbour in row.tolist():
            wrong[neighbour] += label_of[neighbour] != query_label
    order = np.argsort(ids)
    assert measured.ids.tolist() == ids[order].tolist()
    assert measured.v_wrong.tolist() == [wrong[i] for i in ids[order].tolist()]
    assert int(measured.v_wrong.sum() + measured.v_correct.sum()) == len(ids) * k


def test_soft_weights_follow_the_paper():
    r = Reliability(np.arange(4), np.array([0, 1, 10, 100]), np.zeros(4, int), 10, 0.0)
    assert r.soft_weights().tolist() == pytest.approx([1.0, 0.875, 1.75 / 11, 1.75 / 101])


def test_hard_and_soft_pruning_make_versions(memory_copy):
    run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    base = resolve_version(memory_copy)
    reliability = measure(memory_copy, base, 20, LOCAL)
    threshold = int(np.percentile(reliability.v_wrong, 90))
    expected = set(reliability.ids[reliability.v_wrong >= threshold].tolist())
    hard, report = run_hard_prune(memory_copy, LOCAL, k=20, threshold=threshold)
    assert set(report["ids"]) == expected and hard.count == 600 - len(expected)

    soft = run_soft_prune(memory_copy, LOCAL, k=10)
    meta = ShardedIndex(memory_copy, soft).metadata()
    weights = meta.column("weight").to_numpy()
    assert soft.operation == "prune-soft" and (weights < 1).any() and (weights == 1).any()
    assert [e.index_path for e in soft.shards] == [e.index_path for e in hard.shards]  # shared files


def test_log_and_rollback(memory_copy):
    first = run_build(BuildConfig(memory_copy), LOCAL)
    second, _ = run_delete(memory_copy, ForgetRequest(labels=["Dress"]), LOCAL, policy=NEVER)
    rows = history(memory_copy)
    assert [(r["version"], r["latest"]) for r in rows] == [(first.version, False), (second.version, True)]
    back = rollback(memory_copy)  # a new version with the first one's files: versions move forward
    assert back == read_latest(memory_copy) and back > second.version
    restored = resolve_version(memory_copy)
    # the unlearned Dress items stay forgotten: tombstoned again over the first version's files
    removed = first.count - second.count
    assert removed > 0 and restored.operation == "rollback" and restored.count == second.count
    assert restored.details["forgotten_tombstoned"] == removed
    assert [e.segments for e in restored.shards] == [e.segments for e in first.shards]
    ids, vectors, labels = load_embeddings(memory_copy)
    dresses = set(ids[np.asarray(labels) == "Dress"].tolist())
    found = ShardedIndex(memory_copy, restored).search(vectors, 10)[1]
    assert dresses and not dresses & set(found.ravel().tolist())


def test_rollback_command_names_the_version_it_restored(memory_copy, capsys):
    from indexer.cli import main as index

    first = run_build(BuildConfig(memory_copy), LOCAL)
    run_delete(memory_copy, ForgetRequest(labels=["Dress"]), LOCAL, policy=NEVER)
    assert index(["rollback", "--memory", memory_copy, "--to", first.version]) == 0
    assert capsys.readouterr().out.strip() == (f"LATEST -> {read_latest(memory_copy)} "
                                               f"(the files of version {first.version})")


def test_corrupted_shard_is_detected_by_checksum(memory_copy):
    manifest = run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    path = f"{memory_copy}/index/{manifest.shards[1].index_path}"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ChecksumMismatch, match="does not match"):
        ShardedIndex(memory_copy, manifest)
    from vmem.cli import main

    assert main(["index", "verify", "--memory", memory_copy]) == 1


def test_compaction_equals_a_rebuild_and_no_file_keeps_a_deleted_byte(memory_copy):
    """Segments + tombstones, then compaction: the answers of a rebuild without the deleted
    items, and no file of the compacted version holds their ids or their vectors' bytes."""
    run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2, keep_vectors="fp16"), LOCAL)
    run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)  # a delta segment per shard
    ids, vectors, _ = load_embeddings(memory_copy)
    doomed = np.sort(np.random.default_rng(0).choice(ids, 50, replace=False))
    deleted, report = run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), LOCAL, policy=NEVER)
    assert all(len(e.segments) == 2 and len(e.tombstones) == 1 for e in deleted.shards)
    compacted = run_compact(memory_copy, LOCAL)
    assert all(e.compacted for e in compacted.shards) and compacted.count == 600 - 50

    rebuilt_root = memory_copy + "-rebuilt"
    shutil.copytree(memory_copy, rebuilt_root)  # batches + the forget ledger: rebuild leaves them out
    rebuilt = run_build(BuildConfig(rebuilt_root, num_shards=2, keep_vectors="fp16"), LOCAL)
    assert rebuilt.count == compacted.count
    queries = np.concatenate([vectors[np.isin(ids, doomed)], vectors[:200]])
    after = ShardedIndex(memory_copy, compacted).search(queries, 50)
    np.testing.assert_array_equal(after[1], ShardedIndex(rebuilt_root, rebuilt).search(queries, 50)[1])
    assert not np.isin(after[1], doomed).any()

    gone = vectors[np.isin(ids, doomed)]
    needles = ([int(i).to_bytes(8, "little", signed=True) for i in doomed]
               + [row.astype(np.float32).tobytes() for row in gone]
               + [row.astype(np.float16).tobytes() for row in gone])
    for path, _ in compacted.files():
        data = open(f"{memory_copy}/index/{path}", "rb").read()
        assert not any(needle in data for needle in needles), path
    status = forget_status(memory_copy, deleted.version)
    assert status["bytes_removed"]["version"] == compacted.version


def test_compaction_runs_beside_edits_and_keeps_them(memory_copy, monkeypatch):
    """compact_if_due works on a snapshot without the writer lock; an add and a delete that
    land meanwhile are rebased onto the compacted base, not lost."""
    import indexer.edit as edit

    run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    ids, vectors, _ = load_embeddings(memory_copy)
    # chosen by id, per shard (id mod 2), not by row order (Beam's, which varies between runs):
    # 30 of each shard's ~150 items (20 %: both shards are due) and then 3 + 2 more
    built = np.sort(load_embeddings(memory_copy, ["train-a"])[0])
    first = np.sort(np.concatenate([built[built % 2 == shard][:30] for shard in (0, 1)]))
    first_delete, _ = run_delete(memory_copy, ForgetRequest(ids=first.tolist()), LOCAL, policy=NEVER)
    rest = np.setdiff1d(built, first)
    later = np.sort(np.concatenate([rest[rest % 2 == 0][:3], rest[rest % 2 == 1][:2]]))
    later_delete = []
    real_compact = edit.compact_shard

    def compact_while_editing(root, folder, entry):
        result = real_compact(root, folder, entry)
        if entry.shard == 0:  # edits land while the compaction works
            later_delete.append(run_delete(root, ForgetRequest(ids=later.tolist()), LOCAL, policy=NEVER)[0])
            run_add(root, ["train-b"], LOCAL, policy=NEVER)
        return result

    monkeypatch.setattr(edit, "compact_shard", compact_while_editing)
    compacted = edit.compact_if_due(memory_copy, LOCAL)
    assert compacted.operation == "compact" and compacted.count == 600 - 60 - 5
    assert all(len(e.segments) == 2 and len(e.tombstones) == 1 for e in compacted.shards)  # rebased
    keep = ~np.isin(ids, np.concatenate([first, later]))
    exact = brute_force(ids[keep], vectors[keep], vectors[:300], 30)
    found = ShardedIndex(memory_copy, compacted).search(vectors[:300], 30)
    assert not np.isin(found[1], np.concatenate([first, later])).any()
    assert_same_topk(found, exact)
    assert forget_status(memory_copy, first_delete.version)["bytes_removed"]["version"] == compacted.version
    assert forget_status(memory_copy, later_delete[0].version)["bytes_removed"] is None  # still a tombstone


def test_a_compaction_that_purged_nothing_is_passed_to_an_older_fallback(memory_copy):
    """Case I5 with a compaction on top: a shard file of the version served goes bad; the
    replica answers that shard from the newest ancestor no step since which deleted or purged
    anything in it (indexer.history.fallback_versions). A compaction that only merged segments
    is such a step; one that purged rows is not (its parent's files still hold the bytes)."""
    from indexer.history import fallback_versions
    from serving.searchers import ShardGroup

    base = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LOCAL)
    added = run_add(memory_copy, ["train-b"], LOCAL, policy=NEVER)
    merged = run_compact(memory_copy, LOCAL)
    assert merged.details["purged"] == 0
    assert [m.version for m in fallback_versions(memory_copy, merged)] == [added.version, base.version]

    path = f"{memory_copy}/index/{merged.shards[1].segments[0].index_path}"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    group = ShardGroup(memory_copy, (0, 1), merged.version)
    assert group.shards == (0, 1) and group.stale == {1: added.version}
    queries = load_embeddings(memory_copy)[1][:50]
    expected = ShardedIndex(memory_copy, added).search(queries, 20)
    found = group.search(queries, 20, group.defaults)
    np.testing.assert_array_equal(found.ids, expected[1])

    ids = load_embeddings(memory_copy, ["train-b"])[0]
    doomed = np.sort(ids[ids % 2 == 0][:5])  # shard 0's
    run_delete(memory_copy, ForgetRequest(ids=doomed.tolist()), LOCAL, policy=NEVER)
    purging = run_compact(memory_copy, LOCAL)
    assert purging.details["purged"] == 5
    assert list(fallback_versions(memory_copy, purging, [0])) == []


def test_the_delete_command_starts_ray_only_for_a_compaction(memory_copy, capsys, monkeypatch):
    """`vmem index delete` tombstones in its own process (O(items), like resolving them): a
    delete that leaves the compaction policy untouched starts no Ray instance (one item took
    12 s, 8 of them Ray's start-up); `--purge` compacts, on Ray."""
    from indexer import executor as executors
    from indexer.cli import main as index

    made = []
    monkeypatch.setattr(executors, "RayExecutor",
                        lambda *args, **kwargs: made.append(args) or LocalExecutor())
    run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    ids = ShardedIndex(memory_copy, resolve_version(memory_copy)).metadata().column("id").to_numpy()
    assert index(["delete", "--memory", memory_copy, "--id", str(ids[0])]) == 0
    assert made == [] and "forgot 1 items" in capsys.readouterr().out
    latest = resolve_version(memory_copy)
    assert latest.operation == "delete" and latest.count == 600 - 1
    assert int(ids[0]) not in ShardedIndex(memory_copy, latest).metadata().column("id").to_pylist()

    assert index(["delete", "--memory", memory_copy, "--id", str(ids[1]), "--purge"]) == 0
    assert len(made) == 1 and resolve_version(memory_copy).operation == "compact"


def test_a_delete_whose_due_compaction_fails_stands_and_says_so(memory_copy, capsys, monkeypatch):
    """The compaction a committed delete made due fails (here: a local Ray instance that
    cannot start): the delete stands, is reported as done, and its shards stay due; nothing
    reads as failed (a retry would find nothing to delete). A cluster address is joined up
    front, so a wrong one fails before anything is committed."""
    from indexer import executor as executors
    from indexer.cli import main as index

    def no_ray(*args, **kwargs):
        raise ConnectionError("cannot start Ray here")

    monkeypatch.setattr(executors, "RayExecutor", no_ray)
    first = run_build(BuildConfig(memory_copy, num_shards=2), LOCAL)
    assert index(["delete", "--memory", memory_copy, "--label", "Bag", "--label", "Dress"]) == 0
    latest = resolve_version(memory_copy)
    assert latest.operation == "delete" and latest.count == 600 - 120  # 20 % tombstoned: due
    printed = capsys.readouterr()  # the command's own logging set-up writes to stderr
    assert "bytes remain until compaction" in printed.out
    assert "the compaction it made due failed (ConnectionError: cannot start Ray here)" in printed.err

    with pytest.raises(ConnectionError):
        index(["delete", "--memory", memory_copy, "--label", "Coat", "--ray-address", "127.0.0.1:1"])
    assert read_latest(memory_copy) == latest.version and first.version != latest.version
