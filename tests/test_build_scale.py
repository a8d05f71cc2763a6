"""The out-of-core build (issue 13): streamed parts under a task memory budget, piece files
merged per shard, one trained quantizer per version, an HNSW coarse quantizer, lean build
workers, a task killed mid-add retried to the same result, and a killed build publishing
nothing. Real FAISS, real Ray (a fresh local instance in a subprocess where a process dies)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from bench.synthetic import mixture, write_batch
from indexer.build import BuildConfig, run_build
from indexer.checksums import ChecksumMismatch
from indexer.executor import LocalExecutor
from indexer.faults import ENV as CRASH_ENV
from indexer.layout import index_root, read_latest
from indexer.quantizer import is_stripped
from indexer.reader import DuplicateIds
from indexer.search import ShardedIndex
from indexer.segments import stored_ids
from indexer.store import load_index, load_metadata, resolve_version
from tests.indexer_helpers import brute_force

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "IVF16,PQ8x8"


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return mixture(6_200, 32, clusters=20, seed=11)


@pytest.fixture
def memory(vectors, tmp_path) -> str:
    root = str(tmp_path / "memory")
    write_batch(root, "synthetic", vectors[:6_000], parts=3)
    return root


def _codes_by_id(root: str, manifest) -> dict[int, tuple[int, bytes]]:
    """Every stored (id -> (list number, PQ code bytes)) of a version, read from its segment
    files."""
    codes = {}
    for entry in manifest.shards:
        for segment in entry.segments:
            index = load_index(root, segment, mmap=False)  # keep it alive: ivf is a view
            codes.update(_lists_of(index))
    return codes


def _lists_of(index: faiss.Index) -> dict[int, tuple[int, bytes]]:
    ivf = faiss.extract_index_ivf(index)
    lists, codes = ivf.invlists, {}
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
        raw = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy()
        for row, item in enumerate(ids):
            codes[int(item)] = (number, raw[row * lists.code_size:(row + 1) * lists.code_size].tobytes())
    return codes


def _list_arrays(index: faiss.Index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An IVF index's lists as arrays: (nlist,) sizes, then every list's ids and codes
    concatenated in list order."""
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    sizes = np.array([lists.list_size(number) for number in range(ivf.nlist)], dtype=np.int64)
    ids = [faiss.rev_swig_ptr(lists.get_ids(n), int(s)).copy() for n, s in enumerate(sizes) if s]
    codes = [faiss.rev_swig_ptr(lists.get_codes(n), int(s) * lists.code_size).copy()
             for n, s in enumerate(sizes) if s]
    return sizes, np.concatenate(ids), np.concatenate(codes)


def _version_files(root: str, manifest) -> list[str]:
    folder = Path(index_root(root)) / manifest.version
    return sorted(p.name for p in folder.iterdir())


def test_a_part_larger_than_the_task_budget_builds_in_chunks_to_the_same_index(memory, tmp_path):
    """1 MB per task reads 744 rows of 32 floats at a time (parts hold 2,000): the
    streamed build equals the build that reads each part at once, id for id, code for code."""
    copy = str(tmp_path / "copy")
    shutil.copytree(memory, copy)
    small = run_build(BuildConfig(memory, num_shards=2, factory=FACTORY, task_memory_mb=1), LocalExecutor())
    large = run_build(BuildConfig(copy, num_shards=2, factory=FACTORY, task_memory_mb=4096), LocalExecutor())
    assert small.details["chunk_rows"] < 2_000 <= large.details["chunk_rows"]
    assert small.count == large.count == 6_000
    assert _codes_by_id(memory, small) == _codes_by_id(copy, large)
    for a, b in zip(small.shards, large.shards):
        assert load_metadata(memory, a.base).equals(load_metadata(copy, b.base))
    assert ".build" not in _version_files(memory, small)  # piece files are gone


def test_a_builds_own_instance_is_made_at_the_add_after_the_driver_has_trained(memory, tmp_path, monkeypatch):
    """``vmem index build`` on a local instance of its own defers it (indexer/cli.py): the
    sampling pass reads in the driver, training ends, then the executor is made for the add.
    The version equals one built with the executor up from the start, code for code."""
    from indexer import factory as factories
    from indexer.executor import DeferredExecutor

    events: list[str] = []
    train = factories.train
    monkeypatch.setattr(factories, "train", lambda *a, **k: events.append("trained") or train(*a, **k))
    deferred = DeferredExecutor(lambda: events.append("made") or LocalExecutor(), "ray")
    assert (deferred.running, deferred.name, deferred.task_cpu_seconds) == (False, "ray", 0.0)
    copy = str(tmp_path / "copy")
    shutil.copytree(memory, copy)
    built = run_build(BuildConfig(memory, num_shards=2, factory=FACTORY), deferred)
    assert events == ["trained", "made"]
    assert deferred.running and built.details["executor"] == "local"  # the made executor's
    assert list(built.details["phases"]).index("starting ray") == list(built.details["phases"]).index("adding") - 1
    reference = run_build(BuildConfig(copy, num_shards=2, factory=FACTORY), LocalExecutor())
    assert _codes_by_id(memory, built) == _codes_by_id(copy, reference)


def test_only_a_build_that_would_start_its_own_instance_defers_it(monkeypatch, tmp_path):
    """``vmem index build`` defers Ray (indexer.executor.DeferredExecutor) only when it would
    start a local instance of its own: not with --no-ray or --ray-address, not in a Ray job
    (RAY_ADDRESS), not beside an instance ``ray start`` left on this machine."""
    import ray._private.utils as ray_utils

    from indexer import build, cli, executor as executors
    from indexer.executor import DeferredExecutor, starts_local_instance

    given = []
    monkeypatch.setattr(build, "run_build", lambda config, executor: given.append(executor) or 1 / 0)
    monkeypatch.setattr(executors, "make_executor", lambda address, use_ray=True, num_cpus=None: (address, use_ray))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_utils, "read_ray_address", lambda temp_dir=None: None)
    for flags in ([], ["--no-ray"], ["--ray-address", "ray://10.0.0.1:10001"]):
        with pytest.raises(ZeroDivisionError):
            cli.main(["build", "--memory", str(tmp_path), *flags])
    deferred, local, joined = given
    assert isinstance(deferred, DeferredExecutor) and not deferred.made
    assert deferred.resolve() == (None, True)
    assert (local, joined) == ((None, False), ("ray://10.0.0.1:10001", True))
    assert starts_local_instance(None) and not starts_local_instance(None, use_ray=False)
    assert not starts_local_instance("auto") and not starts_local_instance("ray://10.0.0.1:10001")
    monkeypatch.setattr(ray_utils, "read_ray_address", lambda temp_dir=None: "127.0.0.1:6379")
    assert not starts_local_instance(None)  # `ray start` left an instance here: ray.init joins it
    monkeypatch.setattr(ray_utils, "read_ray_address", lambda temp_dir=None: None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a Ray job's driver joins its cluster
    assert not starts_local_instance(None)


def test_the_local_executor_runs_tasks_when_asked_with_the_phases_progress(capsys):
    ran = []
    local = LocalExecutor()
    handles = [local.submit(lambda n: ran.append(n) or n * n, n) for n in range(3)]
    assert ran == []
    assert local.get(handles, "sampling", [10, 20, 30]) == [0, 1, 4] and ran == [0, 1, 2]
    err = capsys.readouterr().err
    assert "sampling: 100%" in err and "60.0/60.0" in err


def test_the_local_executor_retries_an_oserror_as_ray_does_and_nothing_else():
    """LocalExecutor(max_retries=N) runs a task raising OSError again, up to N times (Ray's
    ``retry_exceptions=[OSError]``); other errors, and OSError past N retries or with the
    default 0, end ``get`` at once."""
    calls: list[str] = []

    def flaky(name: str, failures: int, error: type[Exception] = OSError) -> str:
        calls.append(name)
        if calls.count(name) <= failures:
            raise error(f"{name}: transient")
        return name

    retrying = LocalExecutor(progress=False, max_retries=2)
    assert retrying.get([retrying.submit(flaky, "a", 2), retrying.submit(flaky, "b", 0)]) == ["a", "b"]
    assert calls == ["a", "a", "a", "b"]
    with pytest.raises(OSError, match="c: transient"):
        retrying.get([retrying.submit(flaky, "c", 3)])
    assert calls.count("c") == 3  # one run and two retries
    with pytest.raises(ValueError):
        retrying.get([retrying.submit(flaky, "d", 1, ValueError)])
    assert calls.count("d") == 1
    once = LocalExecutor(progress=False)
    with pytest.raises(OSError):
        once.get([once.submit(flaky, "e", 1)])
    assert calls.count("e") == 1


def test_a_build_sampling_in_the_driver_retries_a_failed_read(memory, tmp_path, monkeypatch):
    """The in-driver sampling pass of a build whose Ray instance starts at the add
    (DeferredExecutor) re-runs a part's read that raised OSError, as a Ray task would be, and
    the version equals one built without the fault, code for code."""
    from indexer import build
    from indexer.executor import DeferredExecutor

    sample = build.sample_part
    failed: list[int] = []

    def read_fails_once(part, number, *args):
        if number not in failed:
            failed.append(number)
            raise OSError(f"connection reset while reading part {number}")
        return sample(part, number, *args)

    copy = str(tmp_path / "copy")
    shutil.copytree(memory, copy)
    monkeypatch.setattr(build, "sample_part", read_fails_once)
    built = run_build(BuildConfig(memory, num_shards=2, factory=FACTORY),
                      DeferredExecutor(LocalExecutor, "ray"))
    monkeypatch.setattr(build, "sample_part", sample)
    assert len(failed) >= 2  # every part's first read failed
    reference = run_build(BuildConfig(copy, num_shards=2, factory=FACTORY), LocalExecutor())
    assert _codes_by_id(memory, built) == _codes_by_id(copy, reference)


@pytest.mark.parametrize("factory", ["OPQ8_16,IVF16,PQ8x8", "IVF16_HNSW32,PQ8x8", "IVF16,Flat"])
def test_every_row_gets_the_code_faiss_gives_it_whatever_the_shard_count(memory, tmp_path, factory):
    """A chunk is encoded once and its rows filed into their shards (quantizer.encode /
    add_codes): each id's list and code are those of FAISS's add_with_ids of the whole input on
    the version's trained index, at 1 shard and at 60 (about 12 rows per shard per chunk; one
    add_with_ids per shard's rows, as before, encoded batches of that size)."""
    from indexer.quantizer import trained_index
    from indexer.reader import plan_inputs, read_part

    copy = str(tmp_path / "copy")
    shutil.copytree(memory, copy)
    one = run_build(BuildConfig(memory, num_shards=1, factory=factory, task_memory_mb=1), LocalExecutor())
    many = run_build(BuildConfig(copy, num_shards=60, factory=factory, task_memory_mb=1), LocalExecutor())
    reference = faiss.clone_index(trained_index(memory, one).index)
    metadata, vectors = zip(*(read_part(part) for part in plan_inputs(memory).parts))
    reference.add_with_ids(np.concatenate(vectors), np.concatenate([m.column("id").to_numpy() for m in metadata]))
    expected = _lists_of(reference)
    assert len(expected) == 6_000
    assert _codes_by_id(memory, one) == expected
    # the same trained index (same sample and seed), so the same codes at 60 shards
    assert trained_index(copy, many).stripped == trained_index(memory, one).stripped
    assert _codes_by_id(copy, many) == expected


def test_only_kinds_whose_codes_can_be_filed_are_encoded_and_non_finite_rows_are_refused(vectors):
    """quantizer.encode: codes for an IVF level alone or under one OPQ/PCA pre-transform
    (filed into a segment exactly as add_with_ids would); None for a kind that cannot be added
    from such codes (the caller then adds vectors); a NaN row is refused, not filed into a
    list the quantizer never assigned."""
    from indexer.quantizer import Trained, add_codes, encode, serialize_stripped

    sample = vectors[:2_000]
    for kind, encodes in [("IVF16,PQ4", True), ("OPQ4_16,IVF16,PQ4", True), ("PCA16,IVF16,SQ8", True),
                          ("IVF16,Flat", True), ("IDMap2,IVF16,PQ4", False), ("IVF16,PQ4,RFlat", False),
                          ("IVF16,PQ4x4fs", False), ("IDMap2,Flat", False)]:
        index = faiss.index_factory(32, kind, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        codes = encode(index, vectors[2_000:2_100])
        assert (codes is not None) == encodes, kind
        if encodes:
            trained = Trained(index, serialize_stripped(index))
            by_codes, by_vectors = trained.empty(), trained.empty()
            ids = np.arange(100, dtype=np.int64) * 7
            add_codes(by_codes, codes, ids)
            by_vectors.add_with_ids(vectors[2_000:2_100], ids)
            assert by_codes.ntotal == by_vectors.ntotal == 100
            assert _lists_of(by_codes) == _lists_of(by_vectors), kind
    broken = vectors[2_000:2_010].copy()
    broken[3, 5] = np.nan
    index = faiss.index_factory(32, "IVF16,PQ4", faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    with pytest.raises(ValueError, match="1 of 10 vectors"):
        encode(index, broken)


@pytest.mark.parametrize("factory, says", [("IVF16,PQ8x8,RFlat", "refinement"), ("OPQ8,IVF16,PQ8,RFlat", "refinement"),
                                           ("IVF16,PQ8x8,Refine(SQfp16)", "refinement"),
                                           ("IDMap2,IVF16,PQ8", "IDMap"), ("IVF16,LSQ4x8", "local-search"),
                                           ("IVF16,PQ4x4fs", "fast-scan")])
def test_factories_the_memory_cannot_hold_are_refused_before_sampling(memory, factory, says):
    """A refinement index, an IDMap over IVF lists, batch-dependent LSQ codes or fast-scan
    lists: refused with the reason, before the sampling pass (FAISS used to fail after
    training, LSQ built segments that did not equal one index of the same rows, and merging
    fast-scan pieces aborted the process); nothing is published."""
    with pytest.raises(ValueError, match=says):
        run_build(BuildConfig(memory, num_shards=3, factory=factory), LocalExecutor())
    assert not os.path.exists(index_root(memory)) or not os.listdir(index_root(memory))


def test_segments_hold_lists_only_and_share_the_versions_trained_index(memory, vectors):
    manifest = run_build(BuildConfig(memory, num_shards=4, factory=FACTORY, keep_vectors="fp16"),
                         LocalExecutor())
    assert manifest.trained_path == f"{manifest.version}/trained.faiss"
    assert (manifest.trained_path, manifest.trained_sha256) in manifest.files()
    for entry in manifest.shards:
        assert is_stripped(load_index(memory, entry.base))  # as stored: lists, no centroids
        assert not is_stripped(load_index(memory, entry.base, manifest=manifest))
    # searched with the version's quantizer, answers equal a brute force over the PQ codes
    index = ShardedIndex(memory, manifest)
    queries = vectors[6_000:6_050]
    found = index.search(queries, 10)[1]
    exact = brute_force(np.arange(1, 6_001), vectors[:6_000], queries, 10)[1]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall > 0.8


def test_an_opq_memory_keeps_its_rotation_once_and_answers_as_one_faiss_index(memory, vectors):
    """OPQ segment files hold the IVF level alone (no centroids, no rotation: those are in the
    version's trained file); loaded with their version they search through its rotation and
    quantizer. A build, an add and a compaction answer exactly as one in-process FAISS index of
    the version's trained kind holding the same rows."""
    from indexer.edit import run_add, run_compact
    from indexer.quantizer import trained_index
    from indexer.search import SearchParams
    from tests.indexer_helpers import assert_same_topk

    built = run_build(BuildConfig(memory, num_shards=2, factory="OPQ8_16,IVF16,PQ8x8"),
                      LocalExecutor())
    write_batch(memory, "more", vectors[6_000:6_150], parts=1, first_id=6_001)
    added = run_add(memory, ["more"], LocalExecutor())
    compacted = run_compact(memory, LocalExecutor())
    assert [len(s.segments) for s in added.shards] == [2, 2]
    assert [len(s.segments) for s in compacted.shards] == [1, 1]
    for version in (built, added, compacted):
        assert version.trained_path == built.trained_path
        for entry in version.shards:
            for segment in entry.segments:
                stored = load_index(memory, segment)  # kept: a downcast view does not own it
                assert isinstance(faiss.downcast_index(stored), faiss.IndexIVFPQ)
                assert is_stripped(stored)
                loaded = load_index(memory, segment, manifest=version)
                assert isinstance(faiss.downcast_index(loaded), faiss.IndexPreTransform)
                assert not is_stripped(loaded)
    reference = faiss.clone_index(trained_index(memory, built).index)  # rotation + quantizer
    reference.add_with_ids(vectors[:6_150], np.arange(1, 6_151, dtype=np.int64))
    queries = vectors[6_150:6_200]
    params = faiss.SearchParametersPreTransform(index_params=faiss.SearchParametersIVF(nprobe=4))
    expected = reference.search(queries, 10, params=params)
    for version in (added, compacted):
        found = ShardedIndex(memory, version).search(queries, 10, SearchParams(nprobe=4),
                                                     rerank=False)
        assert_same_topk(found, expected)
    old = ShardedIndex(memory, built).search(queries, 10, SearchParams(nprobe=4), rerank=False)
    assert not np.isin(old[1], np.arange(6_001, 6_151)).any()  # the build is unchanged


def test_a_version_in_a_newer_format_is_refused_not_misread(memory):
    """A reader never searches files it does not know how to read (format 3 segment files of
    an OPQ index hold no rotation: a format-2 reader would search them unrotated)."""
    from indexer.manifest import FORMAT_VERSION, IndexManifest

    manifest = run_build(BuildConfig(memory, factory=FACTORY), LocalExecutor())
    assert manifest.format_version == FORMAT_VERSION == 3
    path = Path(IndexManifest.url_for(memory, manifest.version))
    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"format {FORMAT_VERSION + 1}.*upgrade"):
        resolve_version(memory)
    path.write_text(json.dumps({**fields, "format_version": 2}))  # older formats still read
    assert resolve_version(memory).version == manifest.version


def test_the_trained_index_is_verified_before_it_is_used_by_searches_and_edits(memory, vectors):
    manifest = run_build(BuildConfig(memory, factory=FACTORY), LocalExecutor())
    path = os.path.join(index_root(memory), manifest.trained_path)
    with open(path, "r+b") as handle:  # flip one byte of the centroids
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumMismatch):
        ShardedIndex(memory, resolve_version(memory))
    # an edit encodes with the same file: it refuses it too, and publishes nothing
    from indexer.edit import add_rows, run_add
    from indexer.metadata import conform

    write_batch(memory, "later", vectors[6_000:6_100], parts=1, first_id=50_000)
    with pytest.raises(ChecksumMismatch):
        run_add(memory, ["later"], LocalExecutor())
    rows = conform(pa.table({"id": pa.array([90_001], pa.int64()), "key": ["k"], "label": ["l"]}))
    with pytest.raises(ChecksumMismatch):
        add_rows(memory, rows, vectors[6_100:6_101], "online")
    assert read_latest(memory) == manifest.version


def test_duplicate_ids_are_found_at_the_merge_and_nothing_is_published(memory, vectors):
    write_batch(memory, "again", vectors[:10], parts=1)  # ids 1..10 a second time
    with pytest.raises(DuplicateIds, match="ids occur more than once"):
        run_build(BuildConfig(memory, num_shards=3, factory=FACTORY), LocalExecutor())
    assert read_latest(memory) is None
    assert not os.path.exists(index_root(memory)) or not [
        p for p in os.listdir(index_root(memory)) if not p.startswith(".")]


@pytest.mark.parametrize("count, dim, budget, expected", [
    (1_000_000, 384, 64, "OPQ64_256,IVF4096,PQ64x8"),  # at most 4 dims per sub-quantizer
    (10_000_000, 128, 48, "OPQ48_144,IVF16384,PQ48x8"),  # 48 does not divide 128: padded, as autofaiss
    (120_000, 32, 64, "OPQ16,IVF1024,PQ16x8"),  # at least 2 dims per sub-quantizer
    (120_000, 100, 16, "OPQ16_64,IVF1024,PQ16x8"),
    (50_000, 384, 64, "IDMap2,Flat")])
def test_factory_rule_sizes_the_code_to_the_budget(count, dim, budget, expected):
    from indexer.factory import choose_factory, make_index

    assert choose_factory(count, dim, budget) == expected
    make_index(expected, dim)  # a string faiss accepts


def test_an_hnsw_coarse_quantizer_is_chosen_for_large_nlist_and_searches(tmp_path, monkeypatch):
    import indexer.tasks
    from indexer.factory import choose_factory

    beams = []  # (beam, the quantizer's beam after): what each add task assigned with
    narrow = indexer.tasks.set_quantizer_beam

    def spy(index, ef_search):
        narrow(index, ef_search)
        beams.append((ef_search, faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).hnsw.efSearch))

    monkeypatch.setattr(indexer.tasks, "set_quantizer_beam", spy)

    assert choose_factory(1_000_000_000, 128) == "OPQ64,IVF65536_HNSW32,PQ64x8"
    assert choose_factory(10_000_000, 128) == "OPQ64,IVF16384,PQ64x8"  # flat: a BLAS product is cheaper
    data = mixture(8_000, 32, clusters=40, seed=3)
    root = str(tmp_path / "memory")
    write_batch(root, "synthetic", data[:7_900], parts=2)
    manifest = run_build(BuildConfig(root, num_shards=2, factory="IVF64_HNSW16,PQ16x8"), LocalExecutor())
    trained = faiss.read_index(os.path.join(index_root(root), manifest.trained_path))
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(trained).quantizer)
    assert isinstance(quantizer, faiss.IndexHNSWFlat) and quantizer.hnsw.efSearch == 128  # search's beam
    assert beams and set(beams) == {(64, 64)}  # the add tasks' private copies: the build's narrower beam
    index = ShardedIndex(root, manifest)
    searched = faiss.extract_index_ivf(index.shards[0].segments[0].index).quantizer
    assert isinstance(faiss.downcast_index(searched), faiss.IndexHNSWFlat)
    assert faiss.downcast_index(searched).hnsw.efSearch == 128  # serving never sees the build's beam
    found = index.search(data[7_900:], 10, 64)[1]  # nprobe = nlist: every list visited
    exact = brute_force(np.arange(1, 7_901), data[:7_900], data[7_900:], 10)[1]
    assert np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]) > 0.8


def test_build_workers_import_neither_torch_nor_beam(memory):
    """The build's whole task path (plan, sample, train, add, merge, tune, publish) in a fresh
    interpreter: the modules a Ray worker unpickles must not pull torch or Beam."""
    script = textwrap.dedent(f"""
        import json, sys
        from indexer.build import BuildConfig, run_build
        from indexer.executor import LocalExecutor
        import indexer.tasks, indexer.edit, indexer.tuning
        manifest = run_build(BuildConfig({memory!r}, num_shards=2, factory={FACTORY!r}), LocalExecutor())
        print(json.dumps({{"count": manifest.count,
                          "heavy": sorted(m for m in ("torch", "apache_beam", "torchvision")
                                          if m in sys.modules)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"count": 6_000, "heavy": []}


def _build_process(memory: str, crash_at: str, marker: Path, ray: bool = True) -> subprocess.CompletedProcess:
    """``vmem index build`` in a child process that dies at ``crash_at`` once
    (indexer/faults.py), on a fresh local Ray instance (2 CPUs) or in-process (``ray``)."""
    marker.write_text("crash once")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[CRASH_ENV] = f"{crash_at}:{marker}"
    where = ["--num-cpus", "2"] if ray else ["--no-ray"]
    return subprocess.run([sys.executable, "-m", "indexer", "build", "--memory", memory,
                           "--shards", "2", "--factory", FACTORY, "--task-memory-mb", "1", *where],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_task_killed_mid_add_is_retried_and_the_result_is_identical(memory, tmp_path):
    reference_root = str(tmp_path / "reference")
    shutil.copytree(memory, reference_root)
    reference = run_build(BuildConfig(reference_root, num_shards=2, factory=FACTORY,
                                      task_memory_mb=1), LocalExecutor())
    marker = tmp_path / "crash-add"
    result = _build_process(memory, "add_part", marker)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()  # a worker died mid-add; Ray re-ran its task
    built = resolve_version(memory)
    assert built.count == reference.count == 6_000
    assert _codes_by_id(memory, built) == _codes_by_id(reference_root, reference)
    for a, b in zip(built.shards, reference.shards):
        assert np.array_equal(np.sort(stored_ids(load_index(memory, a.base, mmap=False))),
                              np.sort(stored_ids(load_index(reference_root, b.base, mmap=False))))
    assert ".build" not in _version_files(memory, built)


def test_a_killed_build_publishes_nothing_and_gc_removes_its_files(memory, tmp_path):
    from indexer.gc import run_gc

    first = run_build(BuildConfig(memory, factory=FACTORY), LocalExecutor())
    marker = tmp_path / "crash-publish"
    result = _build_process(memory, "publish", marker, ray=False)  # the driver dies
    assert result.returncode != 0 and not marker.exists()
    assert read_latest(memory) == first.version  # the previous version still serves
    orphans = [p for p in os.listdir(index_root(memory))
               if p != first.version and not p.startswith(".") and p != "LATEST"
               and os.path.isdir(os.path.join(index_root(memory), p))]
    assert len(orphans) == 1  # the killed build's files, never named by a manifest
    run_gc(memory, keep=0, grace_seconds=0)
    assert not os.path.exists(os.path.join(index_root(memory), orphans[0]))
    assert read_latest(memory) == first.version
    assert ShardedIndex(memory, resolve_version(memory)).search(np.zeros((1, 32), np.float32) + 0.1, 5)[1].shape == (1, 5)


def test_the_streamed_ground_truth_top_k_equals_a_full_sort_ties_included():
    """Tuning's exact neighbours are taken chunk by chunk with a partial sort; with many tied
    scores the result must equal the full (score desc, id asc) sort."""
    from indexer.search import merge_topk
    from indexer.tuning import chunk_topk

    rng = np.random.default_rng(0)
    for _ in range(50):
        width, k = int(rng.integers(1, 300)), int(rng.integers(1, 20))
        scores = rng.integers(0, 5, (7, width)).astype(np.float32)
        ids = rng.permutation(10**6)[:width].astype(np.int64)
        full = merge_topk([scores], [np.ascontiguousarray(np.broadcast_to(ids, scores.shape))], k)
        found = chunk_topk(scores, ids, k)
        np.testing.assert_array_equal(found[1], full[1])
        np.testing.assert_array_equal(found[0], full[0])


@pytest.mark.parametrize("block_rows", [1, 7, 32768])
def test_the_streamed_exact_top_k_equals_a_full_sort_over_many_chunks_ties_included(block_rows, monkeypatch):
    """ExactTopK fed chunk by chunk, each scored in blocks of ``block_rows`` (after the first
    block only the columns at or above each query's k-th best so far are kept) equals one full
    (score desc, id asc) sort."""
    from indexer import tuning
    from indexer.search import merge_topk
    from indexer.tuning import ExactTopK

    monkeypatch.setattr(tuning, "BLOCK_ROWS", block_rows)
    rng = np.random.default_rng(1)
    for _ in range(30):
        dim, k, rows = int(rng.integers(2, 6)), int(rng.integers(1, 25)), int(rng.integers(1, 400))
        vectors = rng.integers(-2, 3, (rows, dim)).astype(np.float32)  # many tied scores
        queries = rng.integers(-2, 3, (6, dim)).astype(np.float32)
        ids = rng.permutation(10**6)[:rows].astype(np.int64)
        exact = ExactTopK(queries, k)
        for chunk in np.array_split(np.arange(rows), int(rng.integers(1, 9))):
            exact.update(vectors[chunk], ids[chunk])
        scores = queries @ vectors.T
        full = merge_topk([scores], [np.ascontiguousarray(np.broadcast_to(ids, scores.shape))], k)
        np.testing.assert_array_equal(exact.result[1], full[1])
        np.testing.assert_array_equal(exact.result[0], full[0])


def test_the_add_pass_exact_neighbours_equal_brute_force_over_every_part():
    """The build finds its tuning queries' exact neighbours from the chunks its add tasks read
    (tuning.ExactTopK, one per part, merged): equal to one full sort over all rows, ties
    (duplicated vectors) by id, however the rows are cut into parts and chunks."""
    from indexer.search import merge_topk
    from indexer.tuning import ExactTopK

    rng = np.random.default_rng(5)
    vectors = rng.integers(-2, 3, (900, 8)).astype(np.float32)  # small integers: many ties
    ids = rng.permutation(900).astype(np.int64) * 7919 + 13  # distinct, not in row order
    queries = vectors[rng.choice(900, 20, replace=False)]
    k = 31
    scores = queries @ vectors.T
    full = merge_topk([scores], [np.ascontiguousarray(np.broadcast_to(ids, scores.shape))], k)
    for cuts, chunk in (([900], 900), ([300, 600], 64), ([7, 450, 899], 5)):
        results = []
        for rows in np.split(np.arange(900), cuts):
            exact = ExactTopK(queries, k)
            for start in range(0, len(rows), chunk):
                taken = rows[start:start + chunk]
                exact.update(vectors[taken], ids[taken])
            results.append(exact.result)
        merged = merge_topk([r[0] for r in results], [r[1] for r in results], k)
        np.testing.assert_array_equal(merged[1], full[1])
        np.testing.assert_array_equal(merged[0], full[0])


def test_tuning_stops_where_recall_is_flat_and_chooses_as_the_full_sweep(tmp_path):
    """With 4-byte PQ codes recall plateaus at a few probes: the sweep stops there (two
    doublings gaining < PLATEAU together), its curve a prefix of the full sweep's, and it
    records the same nprobe and recall as sweeping every candidate up to nlist / 8 (128)."""
    from indexer.tuning import PLATEAU, tune

    vectors = mixture(40_000, 32, clusters=40, seed=3)
    root = str(tmp_path / "memory")
    write_batch(root, "synthetic", vectors, parts=2)
    manifest = run_build(BuildConfig(root, factory="IVF1024,PQ4x8"), LocalExecutor())
    index = ShardedIndex(root, manifest)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    rows = np.random.default_rng(0).choice(len(vectors), 128, replace=False)
    queries = vectors[rows]
    _, exact = brute_force(ids, vectors, queries, 101)
    early = tune(index, ids[rows], queries, exact, len(vectors))
    full = tune(index, ids[rows], queries, exact, len(vectors), stop_on_plateau=False)
    assert not full.reached_target and [p["nprobe"] for p in full.curve] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert 3 <= len(early.curve) < len(full.curve) and early.curve == full.curve[:len(early.curve)]
    means = [(p["recall_at_10"] + p["recall_at_100"]) / 2 for p in early.curve]
    assert means[-1] - means[-3] < PLATEAU  # stopped because the last two doublings were flat
    if len(means) > 3:
        assert means[-2] - means[-4] >= PLATEAU  # and not a step earlier
    assert early.params == full.params and early.recall == full.recall


@pytest.mark.parametrize("keep_vectors", ["none", "fp16"])
def test_tuning_one_task_a_shard_decides_as_tuning_in_the_driver(memory, tmp_path, ray_executor, keep_vectors):
    """Above ``driver_tuning_max_items`` a build tunes with one Ray task per shard
    (indexer.sweep) and no shard opened in the driver: the same curve, nprobe, re-rank factor
    and recall as the same build tuned in the driver, whether or not it re-ranks."""
    from indexer import search

    copy = str(tmp_path / "copy")
    shutil.copytree(memory, copy)
    config = dict(num_shards=3, factory=FACTORY, keep_vectors=keep_vectors, recall_target=0.9999)
    driver = run_build(BuildConfig(memory, **config), LocalExecutor())
    opened = []
    load = search.ShardSearcher.load
    search.ShardSearcher.load = classmethod(lambda cls, *a, **k: opened.append(a[2]) or load(*a, **k))
    try:
        swept = run_build(BuildConfig(copy, driver_tuning_max_items=0, **config), ray_executor)
    finally:
        search.ShardSearcher.load = load
    assert opened == []  # in the driver: the tasks opened the shards, in their own processes
    assert swept.search_defaults == driver.search_defaults
    assert swept.details["tuning_curve"] == driver.details["tuning_curve"]
    assert len(driver.details["tuning_curve"]) >= 3


def test_the_recall_a_build_records_is_what_other_queries_get(tmp_path):
    """The recall in the manifest (tuned on the built shards with held-out queries) is what
    300 other items of the memory, queried leave-one-out at the recorded defaults, get
    against brute force (within sampling noise), on a memory where one probe is far from
    enough."""
    from indexer.search import SearchParams
    from indexer.tuning import recall_at, without_self

    vectors = mixture(30_000, 32, clusters=40, seed=8)
    root = str(tmp_path / "memory")
    write_batch(root, "synthetic", vectors, parts=2)
    manifest = run_build(BuildConfig(root, num_shards=2, factory="IVF256,PQ16x8", recall_target=0.9),
                         LocalExecutor())
    index = ShardedIndex(root, manifest)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    rows = np.random.default_rng(99).choice(len(vectors), 300, replace=False)
    _, exact = brute_force(ids, vectors, vectors[rows], 101)
    truth = without_self(exact, ids[rows], 100)

    def recall(params: SearchParams) -> dict[int, float]:
        found = without_self(index.search(vectors[rows], 101, params)[1], ids[rows], 100)
        return {k: recall_at(found[:, :k], truth[:, :k]) for k in (10, 100)}

    defaults = manifest.search_defaults
    fresh = recall(SearchParams.from_manifest(manifest))
    assert defaults["nprobe"] > 1
    for k in (10, 100):
        assert abs(fresh[k] - defaults[f"recall_at_{k}"]) < 0.03, (k, fresh, defaults)
        assert recall(SearchParams(1))[k] < defaults[f"recall_at_{k}"] - 0.1  # the bound means something


def test_a_pass_ended_by_a_task_error_cancels_the_rest_and_raises_that_error(ray_executor, tmp_path):
    """RayExecutor.as_completed: a task fails while three others would each run 20 s on the
    instance's 2 CPUs: the task's error is raised and the rest are cancelled (the running one
    interrupted between its chunks, the queued ones never started): none of them finishes.
    A pass used to wait for them all to finish before raising (a minute here; hours for a
    large build's queued parts)."""
    import time

    def work(seconds: float, fail: bool, marker: str) -> float:  # defined here: shipped by value
        if fail:
            Path(marker).touch()  # the failing task's marker says it started
        for _ in range(int(seconds * 10)):  # chunk after chunk, as a task's work goes: Ray's
            time.sleep(0.1)  # interrupt lands between them (not inside one C call)
        if fail:
            raise ValueError("a bad part")
        Path(marker).touch()
        return seconds

    markers = [str(tmp_path / f"finished-{n}") for n in range(3)]
    started = tmp_path / "started"
    handles = [ray_executor.submit(work, 1, True, str(started))]
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:  # it runs first: Ray does not
        time.sleep(0.05)  # promise to start tasks in the order they were submitted
    handles += [ray_executor.submit(work, 20, False, marker) for marker in markers]
    with pytest.raises(ValueError, match="a bad part"):
        ray_executor.get(handles, "failing")
    time.sleep(1)  # a task not cancelled would be running on
    assert not any(Path(marker).exists() for marker in markers)
    assert ray_executor.get([ray_executor.submit(work, 0, False, markers[0])], "next") == [0]
    assert Path(markers[0]).exists()


def test_a_phase_counts_the_cpu_its_ray_tasks_spent(ray_executor):
    """Phase CPU = the driver's + what its tasks reported (indexer.phases): two Ray tasks each
    burning 0.4 CPU-s make a phase of at least 0.8 CPU-s while the driver only waits."""
    import time

    from indexer.phases import Phases

    def burn(seconds: float) -> float:
        started = time.process_time()
        while time.process_time() - started < seconds:
            pass
        return seconds

    phases = Phases(ray_executor)
    driver = time.process_time()
    with phases("burning"):
        assert ray_executor.get([ray_executor.submit(burn, 0.4) for _ in range(2)], "burning") == [0.4, 0.4]
    driver = time.process_time() - driver
    assert driver < 0.4  # the burn was the tasks', not this process's
    assert phases.cpu_seconds["burning"] >= 0.8
    assert phases.details()["burning"]["seconds"] > 0


def test_a_build_records_each_phases_wall_and_cpu_seconds(memory):
    manifest = run_build(BuildConfig(memory, num_shards=2, factory=FACTORY), LocalExecutor())
    phases = manifest.details["phases"]
    assert list(phases) == ["planning", "sampling", "training", "adding", "merging", "tuning"]
    assert all(p["cpu_seconds"] >= 0 and p["seconds"] >= 0 for p in phases.values())
    assert phases["adding"]["cpu_seconds"] > 0 and phases["training"]["cpu_seconds"] > 0
    assert manifest.details["cpu_seconds"] == pytest.approx(sum(p["cpu_seconds"] for p in phases.values()),
                                                            abs=0.01)


@pytest.mark.parametrize("module", ["indexer.build", "indexer.cli"])
@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE True"), ("ACTIVE", "ACTIVE False")])
def test_index_jobs_ask_openmp_to_sleep_at_barriers_unless_told_otherwise(module, preset, expected):
    """libgomp reads OMP_WAIT_POLICY once, when faiss loads it: importing a job's module sets
    PASSIVE before that (indexer/openmp.py), and an explicit setting wins."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = (f"import os, sys; import {module}; from indexer.openmp import prefer_passive_wait; "
            "print(os.environ['OMP_WAIT_POLICY'], 'faiss' in sys.modules and prefer_passive_wait())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert " ".join(out[-2:]) == expected


def test_an_add_task_runs_faiss_on_every_cpu_of_its_node_and_gives_them_back(ray_executor):
    """indexer/openmp.py: the add is one task per node with the node's CPUs as OpenMP
    threads; the worker process goes back to its own thread count for its next task."""
    from indexer.openmp import omp_threads

    def threads_in_a_task(count: int) -> tuple[int, int, int]:  # pickled by value: a closure
        import faiss

        from indexer.openmp import omp_threads

        before = faiss.omp_get_max_threads()
        with omp_threads(count):
            inside = faiss.omp_get_max_threads()
        return before, inside, faiss.omp_get_max_threads()

    cpus = ray_executor.cpus_per_node()
    assert cpus == 2  # the fixture's local instance
    before, inside, after = ray_executor.get([ray_executor.submit(threads_in_a_task, cpus,
                                                                  num_cpus=cpus)])[0]
    assert inside == 2 and after == before
    with pytest.raises(ValueError, match="threads must be >= 1"):
        with omp_threads(0):
            pass
    with pytest.raises(ValueError, match="add_threads"):
        BuildConfig("unused", add_threads=-1)


@pytest.mark.parametrize("factory, expected", [("OPQ64,IVF16384_HNSW32,PQ64x8", 16), ("IVF8192_HNSW32,Flat", 16),
                                               ("OPQ64_256,IVF4096,PQ64x8", 1), ("IVF16,PQ8x8", 1),
                                               ("IDMap2,Flat", 1), ("HNSW32", 1)])
def test_add_tasks_take_a_whole_node_only_behind_an_hnsw_coarse_quantizer(factory, expected):
    """factory.add_threads: every CPU of the node where the measured cost favours threads
    (HNSW assignment), one where it favours one task per CPU (a flat quantizer's BLAS)."""
    from indexer.factory import add_threads

    assert add_threads(factory, 16) == expected
    assert add_threads(factory, 0) == 1


def test_metadata_is_sorted_one_column_at_a_time_into_one_record_batch(tmp_path):
    """metadata.write_sorted_ipc on a memory-mapped table over its in-memory threshold:
    the file equals a whole-table take, in one record batch (zero-copy for readers), while
    Arrow's heap peaked near one column, not a sorted copy of the table (issue 13: a 10M-row
    merge held ~1 GB of sorted metadata). The sort runs in a fresh process, whose Arrow pool
    has seen nothing else."""
    import pyarrow as pa

    from indexer import metadata

    rows = 1_000_000
    ids = np.random.default_rng(5).permutation(rows).astype(np.int64)
    metadata.write_ipc(metadata.conform(pa.table({
        "id": ids, "key": pa.array([f"{i:09d}" for i in ids]),
        "label": pa.array([f"class-{i % 31}" for i in ids]),
        "source": pa.array([f"s/{i % 977:04d}" for i in ids])})), str(tmp_path / "source.arrow"))
    script = textwrap.dedent(f"""
        import json, pathlib
        import numpy as np, pyarrow as pa, pyarrow.ipc as ipc
        from indexer import metadata
        source = ipc.open_file(pa.memory_map({str(tmp_path / "source.arrow")!r})).read_all()
        order = np.argsort(source.column("id").to_numpy(), kind="stable")
        metadata.SORT_IN_MEMORY_BYTES = 1 << 20
        pool = pa.default_memory_pool()
        assert pool.max_memory() < (1 << 20), pool.max_memory()  # the source is mapped, not copied
        metadata.write_sorted_ipc(source, order, {str(tmp_path / "sorted.arrow")!r})
        peak = pool.max_memory()
        reader = ipc.open_file(pa.memory_map({str(tmp_path / "sorted.arrow")!r}))
        written = reader.read_all()
        print(json.dumps({{"peak": peak, "largest": max(c.nbytes for c in source.columns),
                          "table": source.nbytes, "batches": reader.num_record_batches,
                          "equal": written.equals(source.take(pa.array(order))),
                          "sorted": bool(np.all(np.diff(written.column("id").to_numpy()) == 1)),
                          "left": sorted(p.name for p in pathlib.Path({str(tmp_path)!r}).iterdir())}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["equal"] and out["sorted"] and out["batches"] == 1
    assert out["left"] == ["sorted.arrow", "source.arrow"]  # the column scratch is gone
    assert out["table"] > 2.5 * out["largest"]  # the bound below means something
    assert out["peak"] <= 2.2 * out["largest"] < out["table"]


_PEAK_HEAP = """
import threading, time

def heap_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

def peak_heap_growth(run):
    '''run()'s result and how far this process's anonymous RSS rose above where it was
    before, sampled every 0.5 ms (FAISS and Arrow allocate outside tracemalloc's sight).'''
    base, peak, done = heap_bytes(), [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], heap_bytes())
            time.sleep(0.0005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], heap_bytes()) - base
"""


def _child(script: str) -> dict:
    """Run ``script`` (after the heap sampler above) in a fresh interpreter, whose heap holds
    nothing of this one's; its last stdout line is JSON."""
    result = subprocess.run([sys.executable, "-c", _PEAK_HEAP + textwrap.dedent(script)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_add_tasks_heap_does_not_grow_with_its_part(tmp_path):
    """Add tasks over parts of 100,000 and 400,000 x 128 (51 and 205 MB of float32), each in
    a fresh process under the same 8 MB task budget (1,638 rows per read): the larger part's
    heap grows by its extra codes ((8 + 8) bytes a row) and the allocators' noise (6-40 MB
    seen), not by its extra 154 MB of rows. What both hold besides is the allocators' slack
    (mimalloc's for Arrow, glibc's: ~100 MB here, the same at 200,000 and 400,000 rows).
    Parts read whole grew by 1.9 GB more."""
    dim, sizes = 128, (100_000, 400_000)
    vectors = mixture(sum(sizes), dim, clusters=20, seed=3)
    trained = faiss.index_factory(dim, "IVF64,PQ8x8")
    trained.train(vectors[:10_000])
    faiss.write_index(trained, str(tmp_path / "trained.faiss"))
    roots = [str(tmp_path / f"memory-{rows}") for rows in sizes]
    write_batch(roots[0], "synthetic", vectors[:sizes[0]], parts=1)
    write_batch(roots[1], "synthetic", vectors[sizes[0]:], parts=1)
    del vectors
    growth = {}
    for rows, root in zip(sizes, roots):
        out = _child(f"""
            import json, os
            import faiss
            from indexer.reader import plan_inputs
            from indexer.tasks import add_part, chunk_rows_for
            trained = faiss.serialize_index(faiss.read_index({str(tmp_path / "trained.faiss")!r}))
            part = plan_inputs({root!r}).parts[0]
            os.makedirs({root!r} + "/index/v/.build")
            chunk = chunk_rows_for({dim}, 8 << 20)
            added, growth = peak_heap_growth(lambda: add_part({root!r} + "/index", "v", part, 0, trained,
                                                              2, "none", chunk))
            print(json.dumps({{"growth": growth, "chunk": chunk, "rows": part.rows,
                              "counts": [p.count for p in added.pieces]}}))
        """)
        assert out["rows"] == rows == sum(out["counts"]) and out["chunk"] == 1_638
        growth[rows] = out["growth"]
    extra_rows = sizes[1] - sizes[0]
    assert growth[sizes[1]] - growth[sizes[0]] < 0.5 * extra_rows * dim * 4, growth


def test_a_shard_merge_holds_one_copy_of_its_codes(tmp_path):
    """A merge's codes (tasks.merged_codes) from one piece file of 600,000 codes (24 MB with
    ids): the piece is memory-mapped and its lists copied, so the heap grows by the shard's
    codes once. Reading the piece whole and moving its lists (FAISS merge_from) grew it by
    43 MB: the piece and the shard both on the heap."""
    from indexer.quantizer import serialize_stripped, write_stripped

    rows, dim = 600_000, 32
    vectors = mixture(rows, dim, clusters=20, seed=4)
    index = faiss.index_factory(dim, "IVF256,SQ8")
    index.train(vectors[:20_000])
    (tmp_path / "template.bin").write_bytes(serialize_stripped(index))
    index.add_with_ids(vectors, np.arange(rows, dtype=np.int64))
    (tmp_path / "v" / ".build").mkdir(parents=True)
    write_stripped(index, str(tmp_path / "v" / ".build" / "p0.faiss"))
    expected = _list_arrays(index)
    del index, vectors
    out = _child(f"""
        import json, pathlib
        import faiss, numpy as np
        from indexer.tasks import PieceFiles, merged_codes
        template = pathlib.Path({str(tmp_path / "template.bin")!r}).read_bytes()
        piece = PieceFiles("v/.build/p0", {rows}, {dim}, None)
        merged, growth = peak_heap_growth(lambda: merged_codes({str(tmp_path)!r}, template, [piece]))
        faiss.write_index(merged, {str(tmp_path / "merged.faiss")!r})
        print(json.dumps({{"growth": growth, "ntotal": merged.ntotal}}))
    """)
    codes = rows * (dim + 8)  # SQ8: a byte per dimension, and the id
    assert out["ntotal"] == rows
    merged = _list_arrays(faiss.read_index(str(tmp_path / "merged.faiss")))
    assert all(np.array_equal(a, b) for a, b in zip(merged, expected))
    assert out["growth"] < 1.4 * codes, out


def test_a_large_file_is_split_into_parts_at_its_row_groups(memory, vectors, monkeypatch):
    """A build splits a file holding more than ``PART_ROWS`` rows into runs of its row groups
    (one task each): the runs, read in turn, are the file's rows in order, and the version
    holds every row once, as the same build of the unsplit file does (exact kind: the
    index does not depend on the sample)."""
    import pyarrow.parquet as pq

    from indexer import build
    from indexer.reader import iter_part, plan_inputs, read_part, split_part

    whole = plan_inputs(memory).parts[0]  # 2,000 rows; rewritten as 8 row groups of 250
    local = whole.url.removeprefix("file://")
    pq.write_table(pq.read_table(local), local, row_group_size=250)
    runs = split_part(whole, 600)
    assert [run.row_groups for run in runs] == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert [run.rows for run in runs] == [750, 750, 500]
    assert split_part(whole, 2_000) == [whole]  # not over the limit: not opened
    meta, rows = read_part(whole)
    streamed = [list(iter_part(run, 100)) for run in runs]
    assert pa.concat_tables([m for chunks in streamed for m, _ in chunks]).equals(meta)
    np.testing.assert_array_equal(np.concatenate([v for chunks in streamed for _, v in chunks]), rows)
    assert pa.concat_tables([read_part(run)[0] for run in runs]).equals(meta)

    monkeypatch.setattr(build, "PART_ROWS", 600)
    split = run_build(BuildConfig(memory, num_shards=2, factory="IDMap2,Flat"), LocalExecutor())
    assert split.details["parts"] == 3 + 2 and split.count == 6_000
    assert np.array_equal(np.sort(ShardedIndex.ids_of(memory, split)), np.arange(1, 6_001))
    index = ShardedIndex(memory, split)
    found = index.search(vectors[:20], 5)[1]
    assert (found[:, 0] == np.arange(1, 21)).all()  # each row finds itself


def test_a_compaction_gathers_vectors_from_the_files_not_a_copy_on_the_heap(tmp_path):
    """Compacting a shard of 200,000 x 256 fp32 re-rank vectors (205 MB) with 1,000 of them
    tombstoned: the vectors go from the segment's memory-mapped file to the new one by row
    (8 MB at a time), so numpy's allocations peak far below what they weigh (the rest is
    the ids, the sort order and the key index). They held them twice before: the kept rows
    copied, then stacked (a 298 MB peak at 200,000 x 128). The compacted shard holds exactly the live rows, vector for
    vector."""
    from indexer.edit import ForgetRequest, run_delete
    from indexer.store import load_vectors

    rows, dim = 200_000, 256
    vectors = mixture(rows, dim, clusters=20, seed=6)
    root = str(tmp_path / "memory")
    write_batch(root, "synthetic", vectors, parts=1)
    del vectors
    run_build(BuildConfig(root, factory="IVF16,PQ8x8", keep_vectors="fp32"), LocalExecutor())
    deleted = np.arange(1, 2_001, 2)
    manifest, _ = run_delete(root, ForgetRequest(ids=deleted.tolist()), LocalExecutor(), policy=None)
    assert manifest.shards[0].tombstones
    out = _child(f"""
        import json, tracemalloc
        from indexer.segments import Shard
        from indexer.store import resolve_version
        manifest = resolve_version({root!r})
        tracemalloc.start()  # numpy's arrays: where a copy of the vectors would be
        entry = Shard({root!r}, manifest.shards[0]).compact("v-compact")
        print(json.dumps({{"numpy_peak": tracemalloc.get_traced_memory()[1], "count": entry.count,
                          "vectors": entry.base.vectors_path}}))
    """)
    assert out["count"] == rows - len(deleted)
    assert out["numpy_peak"] < 0.35 * rows * dim * 4, out  # before: 2.9x (the copies, and a chunk)
    kept = np.load(Path(index_root(root)) / out["vectors"], mmap_mode="r")
    meta = load_metadata(root, resolve_version(root).shards[0].base)  # the parent's base, by id
    before = load_vectors(root, resolve_version(root).shards[0].base)
    live = ~np.isin(meta.column("id").to_numpy(), deleted)
    np.testing.assert_array_equal(kept, before[live])  # both sorted by id


def test_a_shard_empty_at_the_build_keeps_the_vectors_adds_wrote_through_a_compaction(tmp_path):
    """A memory that re-ranks, built with one row: shard 0 of 2 is empty, so its base segment
    has no vectors file. An online add writes a row and its vector there; compacting the
    shard keeps that vector (it was dropped: the compaction looked at the first segment
    alone, and the shard lost exact re-ranking), in the memory's fp32 (the add took the
    vectors' kind from shard 0's base, which had none, and wrote fp16)."""
    from indexer.edit import add_rows, run_compact
    from indexer.metadata import conform
    from indexer.store import load_vectors

    rows = mixture(2, 16, clusters=1, seed=1)
    root = str(tmp_path / "memory")
    write_batch(root, "synthetic", rows[:1], parts=1)  # id 1: shard 1
    built = run_build(BuildConfig(root, num_shards=2, factory="IDMap2,Flat", keep_vectors="fp32"),
                      LocalExecutor())
    assert built.shards[0].count == 0 and not built.shards[0].base.vectors_path
    new = conform(pa.table({"id": pa.array([10], pa.int64()), "key": ["k"], "label": ["l"]}))
    add_rows(root, new, rows[1:2], "online", policy=None)
    compacted = run_compact(root, LocalExecutor())
    kept = load_vectors(root, compacted.shards[0].base)
    assert kept.dtype == np.float32  # the memory's kind (shard 0's empty base said nothing: fp16)
    np.testing.assert_array_equal(kept, rows[1:2])
