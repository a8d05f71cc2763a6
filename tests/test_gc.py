"""Garbage collection (indexer/gc.py, `vmem index gc`): old versions go file by file, shared
files, LATEST, pinned and leased versions stay, leftovers of killed runs go after the grace."""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from indexer import leases
from indexer.build import BuildConfig, run_build
from indexer.edit import run_add
from indexer.executor import LocalExecutor
from indexer.forgotten import record_forgotten
from indexer.gc import run_gc
from indexer.layout import list_versions, new_version_name, read_latest, set_latest
from indexer.manifest import IndexManifest
from indexer.search import ShardedIndex
from indexer.store import resolve_version, verify_version
from pipelines.manifest import write_embedding_batch
from pipelines.records import stable_id
from pipelines.schema import embedding_batch

DIM, ENCODER, HOUR = 8, "test-encoder", 3600.0
LOCAL = LocalExecutor()


def add_batch(root: str, name: str, n: int, seed: int) -> None:
    keys = [f"{name}-{i:03d}" for i in range(n)]
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.Table.from_batches([embedding_batch(
        [stable_id(k) for k in keys], keys, [f"label-{i % 4}" for i in range(n)], [None] * n,
        ["h"] * n, vectors, ENCODER)])
    write_embedding_batch(root, name, table, ENCODER, "api")


def age(path: Path, seconds: float) -> None:
    """Make a file or folder (and everything in it) look ``seconds`` old."""
    stamp = time.time() - seconds
    for inner in sorted(path.rglob("*"), reverse=True) if path.is_dir() else []:
        os.utime(inner, (stamp, stamp))
    os.utime(path, (stamp, stamp))


def write(path: Path, data: bytes = b"x" * 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def stale(path: Path) -> Path:
    """A leftover file two hours old (past the default grace period)."""
    write(path)
    age(path, 2 * HOUR)
    return path


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def check_loads(root: str, version: str) -> None:
    """The version verifies (every file's checksum) and answers a query."""
    manifest = IndexManifest.read(root, version)
    assert verify_version(root, manifest) == len(manifest.files())
    query = np.eye(1, DIM, dtype=np.float32)
    _, ids = ShardedIndex(root, manifest).search(query, 5)
    assert (ids >= 0).sum() == min(5, manifest.count)


@pytest.fixture
def memory(tmp_path) -> dict:
    """Versions v0 (build), v1 (build), v2 (add onto v1: reuses v1's files), v3 (build of
    everything), v4 (add onto v3: LATEST). v2 pinned, v3 named by a live replica lease, v0
    by an expired one."""
    root = str(tmp_path / "memory")
    add_batch(root, "base", 40, seed=1)
    v0 = run_build(BuildConfig(root, num_shards=2), LOCAL).version
    v1 = run_build(BuildConfig(root, num_shards=2), LOCAL).version
    add_batch(root, "online-listed", 6, seed=2)  # an API add that succeeded
    v2 = run_add(root, ["online-listed"], LOCAL).version
    v3 = run_build(BuildConfig(root, num_shards=2), LOCAL).version
    add_batch(root, "more", 5, seed=3)
    v4 = run_add(root, ["more"], LOCAL).version
    assert list_versions(root) == [v0, v1, v2, v3, v4] and read_latest(root) == v4
    leases.pin(root, v2)
    leases.renew_lease(root, "router-a", v3, ttl_s=600)
    leases.renew_lease(root, "router-old", v0, ttl_s=-1)  # expired: keeps nothing
    record_forgotten(root, v1, np.array([stable_id("base-000")]))  # the ledger: never touched
    return {"root": root, "path": Path(root), "versions": [v0, v1, v2, v3, v4]}


def test_gc_removes_exactly_what_nothing_needs(memory):
    root, path = memory["root"], memory["path"]
    v0, v1, v2, v3, v4 = memory["versions"]
    index = path / "index"
    v1_files = files_under(index / v1)
    shared_v1 = {p.split("/", 1)[1] for v in (v2, v3, v4)
                 for p, _ in IndexManifest.read(root, v).files() if p.startswith(f"{v1}/")}
    assert shared_v1 and shared_v1 < v1_files  # v2 reads v1's segments and trained index
    # leftovers: stale (2 h old) and fresh
    stale_tmp = [stale(index / v4 / ".tmp-shard-00000.faiss-0123456789ab"),
                 stale(index / ".tmp-LATEST-0123456789ab"),
                 stale(path / "embeddings" / "base" / ".tmp-part-base-00001.parquet-0123456789ab")]
    fresh_tmp = write(index / ".tmp-LATEST-ba9876543210")
    orphan = index / new_version_name(v4)
    write(orphan / "shard-00000.faiss"), write(orphan / "shard-00000.meta.arrow")
    age(orphan, 2 * HOUR)
    running = index / new_version_name(orphan.name)  # a build still writing: too young
    write(running / "shard-00000.faiss")
    add_batch(root, "online-failed", 3, seed=4)  # a failed API add: in no manifest
    age(path / "embeddings" / "online-failed", 2 * HOUR)
    add_batch(root, "online-inflight", 3, seed=5)  # an add in progress: young
    age(path / "embeddings" / "online-listed", 2 * HOUR)  # old but listed by v2..v4
    leased_tmp = stale(index / ".leases" / ".tmp-x.json-0123456789ab")
    untouchable = {p for p in files_under(path)
                   if p.startswith(("index/forgotten/", "index/.leases/", "index/.pins/"))
                   or p in ("index/LATEST", "index/.writer.lock")}
    before = files_under(path)
    sizes = {p: (path / p).stat().st_size for p in before}

    dry = run_gc(root, keep=1, dry_run=True)
    assert files_under(path) == before  # a dry run removes nothing

    report = run_gc(root, keep=1)

    assert {k: v for k, v in report.items() if k != "seconds"} == {
        k: v for k, v in dry.items() if k not in ("seconds", "dry_run")} | {"dry_run": False}
    assert report["versions_kept"] == {v2: ["pinned"], v3: ["leased by router-a", f"fallback of {v4}"],
                                       v4: ["newest", "latest"]}
    assert report["versions_removed"] == [v0, v1]
    assert list_versions(root) == [v2, v3, v4]
    # v0: nothing of it is read any more: the whole folder goes
    assert not (index / v0).exists()
    # v1: its manifest goes (the version is gone), the files v2 reads stay, nothing else
    assert files_under(index / v1) == shared_v1
    assert report["shared_files_kept"] == sorted(f"index/{v1}/{p}" for p in shared_v1)
    expected = ({p for p in before if p.startswith(f"index/{v0}/")}
                | {f"index/{v1}/{p}" for p in v1_files - shared_v1}
                | {str(p.relative_to(path)) for p in stale_tmp}
                | {f"index/{orphan.name}/shard-00000.faiss", f"index/{orphan.name}/shard-00000.meta.arrow"}
                | {p for p in before if p.startswith("embeddings/online-failed/")})
    assert set(report["files_removed"]) == expected
    assert files_under(path) == before - expected
    assert report["temp_files_removed"] == sorted(str(p.relative_to(path)) for p in stale_tmp)
    assert report["orphan_folders_removed"] == [f"index/{orphan.name}"]
    assert report["online_batches_removed"] == ["embeddings/online-failed"]
    assert report["files_freed"] == len(expected)
    assert report["bytes_freed"] == sum(sizes[p] for p in expected)
    assert not orphan.exists() and not (path / "embeddings" / "online-failed").exists()
    for kept in (fresh_tmp, running / "shard-00000.faiss", leased_tmp,
                 path / "embeddings" / "online-inflight" / "_manifest.json",
                 path / "embeddings" / "online-listed" / "_manifest.json"):
        assert kept.exists(), kept
    assert untouchable <= files_under(path)
    for version in (v2, v3, v4):
        check_loads(root, version)

    again = run_gc(root, keep=1)  # nothing left to collect
    assert again["files_removed"] == [] and again["versions_removed"] == []

    # Unpinned and unleased, v2 goes, and v3 stays as LATEST's fallback (v4 only added to it:
    # a replica whose v4 file fails serves that shard from v3) unless asked; v1's files, read
    # only by v2, go once older than the grace period (a folder without a manifest is a
    # leftover).
    leases.unpin(root, v2)
    leases.drop_lease(root, "router-a")
    later = run_gc(root, keep=1, now=time.time() + 2 * HOUR)
    assert later["versions_kept"] == {v3: [f"fallback of {v4}"], v4: ["newest", "latest"]}
    assert later["versions_removed"] == [v2]
    later = run_gc(root, keep=1, now=time.time() + 2 * HOUR, fallbacks=False)
    assert later["versions_kept"] == {v4: ["newest", "latest"]}
    assert later["versions_removed"] == [v3]
    shared_v3 = {p.split("/", 1)[0] for p, _ in IndexManifest.read(root, v4).files()}
    assert shared_v3 == {v3, v4}  # v4 reads v3's base segments
    remaining = {p.name for p in index.iterdir() if not p.name.startswith(".")}
    assert remaining == {"LATEST", "forgotten", v3, v4}
    assert not (index / v3 / "manifest.json").exists()
    check_loads(root, v4)
    assert untouchable - {f"index/.pins/{v2}", "index/.leases/router-a.json"} <= files_under(path)


def test_a_file_in_a_dropped_folder_stays_while_a_kept_version_reads_it(tmp_path):
    """File level, with a version made by hand: its shard 0 is the old version's files (in the
    old folder), its shard 1 its own copies. Dropping the old version removes its manifest and
    its shard-1 files, keeps its shard-0 files and the trained index."""
    root = str(tmp_path / "memory")
    index = tmp_path / "memory" / "index"
    add_batch(root, "base", 30, seed=1)
    old = run_build(BuildConfig(root, num_shards=2), LOCAL)
    new = new_version_name(old.version)
    shard1 = old.shards[1]
    segments = []
    for segment in shard1.segments:
        moved = {}
        for field in ("index_path", "metadata_path", "vectors_path", "keys_path"):
            source = getattr(segment, field)
            if source:
                target = f"{new}/{source.split('/', 1)[1]}"
                write(index / target, (index / source).read_bytes())
                moved[field] = target
        segments.append(dataclasses.replace(segment, **moved))
    manifest = dataclasses.replace(
        old, version=new, parent=old.version, operation="rollback",
        shards=[old.shards[0], dataclasses.replace(shard1, segments=segments)])
    manifest.write(root)
    set_latest(root, new)
    old_files = files_under(index / old.version)
    read_by_new = {p.split("/", 1)[1] for p, _ in manifest.files() if p.startswith(f"{old.version}/")}
    assert read_by_new == {p.split("/", 1)[1] for p, _ in old.shards[0].files()} | {"trained.faiss"}

    report = run_gc(root, keep=1)

    assert report["versions_removed"] == [old.version]
    assert files_under(index / old.version) == read_by_new
    assert set(report["files_removed"]) == {f"index/{old.version}/{p}"
                                            for p in old_files - read_by_new}
    assert report["folders_removed"] == []
    check_loads(root, new)
    assert resolve_version(root).version == new


def test_keep_counts_complete_versions_and_validates(tmp_path):
    root = str(tmp_path / "memory")
    add_batch(root, "base", 20, seed=1)
    versions = [run_build(BuildConfig(root), LOCAL).version for _ in range(3)]
    set_latest(root, versions[0])  # rolled back: LATEST is the oldest
    report = run_gc(root, keep=1)
    assert report["versions_kept"] == {versions[0]: ["latest"], versions[2]: ["newest"]}
    assert report["versions_removed"] == [versions[1]]
    assert run_gc(root, keep=0)["versions_removed"] == [versions[2]]
    assert list_versions(root) == [versions[0]]
    check_loads(root, versions[0])
    with pytest.raises(ValueError, match="keep"):
        run_gc(root, keep=-1)
    with pytest.raises(ValueError, match="grace"):
        run_gc(root, keep=1, grace_seconds=-5)


def test_gc_waits_for_the_writer_lock(tmp_path):
    root = str(tmp_path / "memory")
    add_batch(root, "base", 20, seed=1)
    run_build(BuildConfig(root), LOCAL)
    outcome = []

    def collect() -> None:
        try:
            run_gc(root, 0, lock_timeout_s=0.2)
        except leases.WriterBusy as error:
            outcome.append(error)

    with leases.writer_lock(root):
        thread = threading.Thread(target=collect)
        thread.start()
        thread.join(30)
    assert len(outcome) == 1


def test_command_line_dry_run_prints_json_and_summary(tmp_path, capsys):
    from indexer.cli import main

    root = str(tmp_path / "memory")
    add_batch(root, "base", 20, seed=1)
    first = run_build(BuildConfig(root), LOCAL).version
    run_build(BuildConfig(root), LOCAL)
    assert main(["gc", "--memory", root, "--keep", "1", "--dry-run", "--grace-seconds", "60"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["dry_run"] and report["versions_removed"] == [first]
    assert report["grace_seconds"] == 60.0
    assert "would remove 1 version," in out.err
    assert first in list_versions(root)
