"""Publishing a version: one successor per generation, claimed with a put-if-absent, so two
writers that no lock reaches (the serving writer and a scheduled `vmem update` on an object
store) cannot both commit from the same version, and no reader ever goes back a version."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from indexer import layout
from indexer.layout import ConcurrentEdit, commit_latest, read_head, read_latest, set_latest
from pipelines import storage


def test_of_writers_racing_from_one_version_exactly_one_commits(tmp_path):
    root = str(tmp_path / "memory")
    set_latest(root, "v0")
    writers = 8
    start, outcomes = threading.Barrier(writers), [None] * writers

    def write(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = commit_latest(root, f"v1-{i}", "v0")
        except ConcurrentEdit as error:
            outcomes[i] = error

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, layout.Head)]
    assert len(won) == 1 and sum(isinstance(o, ConcurrentEdit) for o in outcomes) == writers - 1
    assert read_head(root) == layout.Head(f"v1-{won[0]}", 2)
    claims = storage.list_names(storage.join(root, "index", layout.COMMITS))
    assert [c for c in claims if not c.startswith(".")] == [f"{1:020d}.json", f"{2:020d}.json"]
    with pytest.raises(ConcurrentEdit, match="moved to version v1-"):
        commit_latest(root, "v2", "v0")  # a writer that started from v0 after the race: refused too


def test_an_object_store_claim_is_a_put_if_absent(tmp_path):
    """Elsewhere than a local disk the claim is fsspec's pipe_file(mode="create") (memory:// here;
    gcsfs and s3fs make it a conditional write): a taken generation is refused."""
    root = f"memory://commit-{tmp_path.name}"
    assert commit_latest(root, "v0", None) == layout.Head("v0", 1)
    with pytest.raises(ConcurrentEdit, match="generation 1 first"):
        layout._claim(root, layout.Head(None, 0), "other")
    assert read_latest(root) == "v0"


def test_readers_follow_commits_past_a_late_or_missing_latest_hint(tmp_path, monkeypatch):
    root = str(tmp_path / "memory")
    for version, parent in (("v0", None), ("v1", "v0"), ("v2", "v1")):
        commit_latest(root, version, parent)
    # a slow writer's hint, written after newer commits, must not move readers back
    storage.write_json_atomic(storage.join(root, "index", layout.LATEST), {"version": "v0", "generation": 1})
    assert read_latest(root) == "v2" and read_head(root).generation == 3

    def lost(url, value):
        raise OSError("the store timed out")

    monkeypatch.setattr(storage, "write_json_atomic", lost)
    assert commit_latest(root, "v3", "v2") == layout.Head("v3", 4)  # killed after the claim: committed
    monkeypatch.undo()
    assert read_latest(root) == "v3"
    with pytest.raises(ConcurrentEdit):
        commit_latest(root, "v3b", "v2")
    # a pointer written before generations existed reads as generation 0
    legacy = str(tmp_path / "legacy")
    storage.write_json_atomic(storage.join(legacy, "index", layout.LATEST), {"version": "old"})
    assert read_head(legacy) == layout.Head("old", 0)
    assert commit_latest(legacy, "new", "old") == layout.Head("new", 1)


def test_an_edit_made_from_a_stale_version_commits_nothing_and_a_forgotten_item_stays_forgotten(memory_copy):
    """Writer A (say `vmem update` on another machine) prepared a version from the base while
    writer B (the serving writer) unlearned items: A's publish is refused, its files removed,
    and B's version, without the items, stays the memory's."""
    from indexer.build import BuildConfig, run_build
    from indexer.edit import ForgetRequest, publish, run_delete
    from indexer.executor import LocalExecutor
    from indexer.layout import list_versions, new_version_name, version_dir
    from indexer.search import ShardedIndex
    from indexer.store import resolve_version

    base = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LocalExecutor())
    forgotten = [int(i) for i in ShardedIndex.ids_of(memory_copy, base)[:5]]
    deleted, _ = run_delete(memory_copy, ForgetRequest(ids=forgotten), LocalExecutor(), policy=None)
    stale = new_version_name(base.version)
    with pytest.raises(ConcurrentEdit, match=f"moved to version {deleted.version}"):
        publish(memory_copy, base, stale, "add", base.shards, base.batches, {})
    assert read_latest(memory_copy) == deleted.version
    assert not storage.exists(version_dir(memory_copy, stale)) and stale not in list_versions(memory_copy)
    served = ShardedIndex.ids_of(memory_copy, resolve_version(memory_copy, read_latest(memory_copy)))
    assert len(served) == base.count - 5 and not np.isin(forgotten, served).any()


def test_a_create_retried_after_its_first_try_landed_is_this_writers_commit(tmp_path, monkeypatch):
    """A driver that retries a conditional create whose answer was lost sees its own claim as
    'exists': the claim names the version, so the commit stands (and nothing is cleaned up);
    a hint that fails in any way after the claim leaves the commit standing too."""
    root = str(tmp_path / "memory")
    commit_latest(root, "v0", None)
    real = storage.create_exclusive

    def answer_lost(url, data):
        real(url, data)
        raise FileExistsError(url)  # the retry's 412

    monkeypatch.setattr(storage, "create_exclusive", answer_lost)
    assert commit_latest(root, "v1", "v0") == layout.Head("v1", 2)
    with pytest.raises(ConcurrentEdit):  # someone else's claim is still a lost race
        layout._claim(root, layout.Head("v0", 1), "v1-other")
    monkeypatch.undo()

    def http_error(url, value):
        raise RuntimeError("HttpError 503 after retries")

    monkeypatch.setattr(storage, "write_json_atomic", http_error)
    assert commit_latest(root, "v2", "v1") == layout.Head("v2", 3)
    monkeypatch.undo()
    assert read_latest(root) == "v2"


def test_exclusive_create_without_hard_links_is_still_exclusive(tmp_path, monkeypatch):
    import os

    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")  # gcsfuse and other FUSE mounts

    monkeypatch.setattr(os, "link", no_links)
    url = str(tmp_path / "claim.json")
    storage.create_exclusive(url, b"first")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(url, b"second")
    assert (tmp_path / "claim.json").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["claim.json"]  # no temp file left


def test_compaction_after_a_committed_edit_never_fails_the_edit(monkeypatch):
    """The compaction that follows an add or a delete may lose a commit race to another
    machine's edit: the edit stands (its version is returned); a purge retries on the new
    LATEST a bounded number of times."""
    from indexer import edit

    calls = []

    def losing(root, parent, executor, shards):
        calls.append(parent)
        raise ConcurrentEdit("another writer came first")

    monkeypatch.setattr(edit, "_compact", losing)
    monkeypatch.setattr(edit, "resolve_version", lambda root, version=None: "head")

    class Due:
        def due(self, entry):
            return True

    class Manifest:
        version, shards = "v7", [type("Entry", (), {"shard": 0})()]

    manifest = Manifest()
    assert edit._maybe_compact("root", manifest, None, Due()) is manifest
    calls.clear()
    assert edit._purge("root", manifest, None, {0}) is manifest
    assert calls == [manifest, "head", "head"]  # retried on LATEST, PURGE_ATTEMPTS times in all
    monkeypatch.setattr(edit, "_compact", lambda root, parent, executor, shards: "compacted")
    assert edit._purge("root", manifest, None, {0}) == "compacted"


def test_a_delete_that_loses_the_commit_race_leaves_no_ledger_record_and_a_build_refuses_edits_made_meanwhile(
        memory_copy, monkeypatch):
    from indexer import edit
    from indexer.build import BuildConfig, _check_unchanged, run_build
    from indexer.edit import ForgetRequest, run_delete
    from indexer.executor import LocalExecutor
    from indexer.forgotten import forgotten_ids
    from indexer.layout import new_version_name
    from indexer.manifest import IndexManifest
    from indexer.reader import plan_inputs
    from indexer.search import ShardedIndex

    base = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LocalExecutor())
    ids = [int(i) for i in ShardedIndex.ids_of(memory_copy, base)[:3]]

    def another_machine(name: str, parent: IndexManifest, **changes) -> IndexManifest:
        fields = {**storage.read_json(IndexManifest.url_for(memory_copy, parent.version)),
                  "version": name, "parent": parent.version, **changes}
        foreign = IndexManifest.from_fields(fields)
        foreign.write(memory_copy)
        commit_latest(memory_copy, name, parent.version)
        return foreign

    building = new_version_name()  # a build that started now
    record = edit.record_forgotten

    def then_commit_elsewhere(root, version, forget):
        url = record(root, version, forget)
        another_machine(new_version_name(), base)  # lands while the delete is being written
        return url

    monkeypatch.setattr(edit, "record_forgotten", then_commit_elsewhere)
    with pytest.raises(ConcurrentEdit):
        run_delete(memory_copy, ForgetRequest(ids=ids), LocalExecutor(), policy=None)
    monkeypatch.undo()
    assert not np.isin(ids, forgotten_ids(memory_copy)).any()  # nothing committed, nothing recorded

    inputs = plan_inputs(memory_copy, ["train-a"])
    head = read_latest(memory_copy)
    with pytest.raises(RuntimeError, match="was published while the build ran"):
        _check_unchanged(memory_copy, building, inputs, base.version, head)
    added = another_machine(new_version_name(), IndexManifest.read(memory_copy, head),
                            batches=["train-a", "train-b"])
    with pytest.raises(RuntimeError, match=r"batches \['train-b'\] were added"):
        _check_unchanged(memory_copy, new_version_name(), inputs, base.version, added.version)
    _check_unchanged(memory_copy, new_version_name(), inputs, added.version, added.version)  # nothing landed


def test_the_serving_writer_answers_a_lost_commit_race_with_503(tmp_path):
    """An API edit refused by the commit (another machine's edit came first) is a 503 (the
    router adds Retry-After; the client retries), not a 500: nothing was committed."""
    import asyncio

    from serving.writer import EditFailure, WriterService

    def loses():
        raise ConcurrentEdit("the memory moved to version v9 while this edit of v8 ran")

    failure = asyncio.run(WriterService(str(tmp_path))._run(loses, "ids", ()))
    assert failure == EditFailure(503, "memory", "the memory moved to version v9 while this edit of v8 ran")


def test_history_lists_committed_versions_only(memory_copy):
    """A version whose manifest is written but whose commit is not yet claimed (a publish in
    flight, such as the Writer's background compaction) is not history yet; once claimed it is
    the newest row and the latest."""
    import shutil

    from indexer.build import BuildConfig, run_build
    from indexer.executor import LocalExecutor
    from indexer.history import history
    from indexer.layout import list_versions, new_version_name, version_dir

    base = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LocalExecutor())
    in_flight = new_version_name(base.version)
    shutil.copytree(version_dir(memory_copy, base.version), version_dir(memory_copy, in_flight))
    assert in_flight in list_versions(memory_copy)
    rows = history(memory_copy)
    assert [row["version"] for row in rows] == [base.version] and rows[-1]["latest"]
    commit_latest(memory_copy, in_flight, base.version)
    rows = history(memory_copy)
    assert [row["version"] for row in rows] == [base.version, in_flight] and rows[-1]["latest"]


def test_version_names_sort_after_their_parent_and_stay_valid_whatever_the_clock():
    """A child named while the clock reads before its parent (a clock stepped back, another
    host's clock, three versions in one millisecond) takes the parent's time + 1 ms: it sorts
    after it, keeps one suffix, and a request naming it (min_version, rollback's ``to``) is
    accepted, as the names of older memories ('~' chains) are."""
    import re

    from indexer.layout import VERSION_PATTERN, new_version_name
    from serving.models import QueryRequest, RollbackRequest

    chain = ["29990101T000000000-ffffff"]
    for _ in range(50):
        chain.append(new_version_name(chain[-1]))
    assert chain == sorted(chain) and len(set(chain)) == len(chain)
    assert {len(name) for name in chain} == {25} and chain[-1].startswith("29990101T000000050-")
    for name in chain + ["29990101T000000000~87f49a~a3e2ac", new_version_name()]:
        assert re.match(VERSION_PATTERN, name)
        assert QueryRequest(min_version=name).min_version == RollbackRequest(to=name).to == name
    for bad in ("../../etc", "nope", "29990101T000000000-ffffff/..", "29990101T000000000"):
        assert not re.match(VERSION_PATTERN, bad)
    assert QueryRequest(min_version="").min_version == RollbackRequest(to="").to == ""  # none
