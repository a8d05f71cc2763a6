"""Build job: embedding batches -> a trained, sharded FAISS index published as a new version.

Read the input twice, each part in chunks, one task a part. The sampling pass draws a seeded
training sample (written to the build's scratch, not sent through Ray's object store) and the
held-out tuning queries; the driver trains once. A local Ray instance of the build's own is
started after training (a DeferredExecutor): its sampling pass runs in the driver. The add pass encodes every part onto the
trained index (one coarse quantizer shared by the part's S shard pieces), writing per-shard
piece files, and finds the tuning queries' exact neighbours from the same chunks. Each shard's
pieces are merged into its base segment (one task per shard); the trained index is stored once
(``trained.faiss``: segment files hold no quantizer); nprobe is tuned on the built shards
(indexer.tuning: searched in the driver, or one task a shard above ``driver_tuning_max_items``); the manifest is published, then LATEST. A build that fails removes its files; one killed at any point leaves LATEST untouched.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from indexer.openmp import prefer_passive_wait

prefer_passive_wait()  # before faiss loads libgomp (indexer/openmp.py)

import faiss  # noqa: E402
import numpy as np

from indexer import factory as factories
from indexer.checksums import sha256_bytes
from indexer.executor import MAX_RETRIES, DeferredExecutor, LocalExecutor, RayExecutor
from indexer.faults import crash_point
from indexer.heap import release_freed_heap
from indexer.layout import commit_latest, index_root, new_version_name, read_latest
from indexer.leases import writer_lock
from indexer.manifest import IndexManifest
from indexer.phases import Phases
from indexer.quantizer import serialize_stripped
from indexer.reader import PART_ROWS, plan_inputs
from indexer.search import ShardedIndex, merge_topk
from indexer.sweep import SweptIndex
from indexer.tasks import TASK_MEMORY_MB, VECTOR_DTYPES, add_part, build_scratch, chunk_rows_for, merge_shard, sample_part
from indexer.tuning import QUERIES, pick_queries, tune, tuning_ks
from pipelines import storage

log = logging.getLogger("vmem.index")
# Above this many items a build's tuning searches one shard per task (indexer.sweep): 20M
# items of 64-byte codes are ~1.5 GB of segment files, which the driver maps at most.
DRIVER_TUNING_MAX_ITEMS = 20_000_000


@dataclass
class BuildConfig:
    memory: str
    batches: list[str] = field(default_factory=list)  # default: every complete batch
    num_shards: int = 1
    factory: str = "auto"
    bytes_per_vector: int = 64  # PQ code budget for `auto`
    keep_vectors: str = "none"  # none | fp16 | fp32: stored for exact re-ranking
    recall_target: float = 0.95
    k: int = 100  # the search default recorded for serving (method.md: k_max = 100)
    seed: int = 0
    task_memory_mb: int = TASK_MEMORY_MB  # per task: sets the rows read at once (tasks.chunk_rows_for)
    add_threads: int = 0  # OpenMP threads (and CPUs) of one add task; 0: factory.add_threads
    # tuning searches the built shards in the driver up to this many items, else one task a
    # shard (indexer.sweep: no process opens more than one shard)
    driver_tuning_max_items: int = DRIVER_TUNING_MAX_ITEMS

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        if self.add_threads < 0:
            raise ValueError("add_threads must be >= 0 (0: by the coarse quantizer)")
        if self.task_memory_mb < 1:
            raise ValueError("task_memory_mb must be >= 1")
        if self.keep_vectors not in VECTOR_DTYPES:
            raise ValueError(f"keep_vectors must be one of {sorted(VECTOR_DTYPES)}")


@dataclass
class Drawn:
    """The sampling pass's draw: the training sample ((n, dim) float32; None when the factory
    needs no training) and the held-out tuning queries (ids (q,) int64, (q, dim) float32)."""

    train: np.ndarray | None
    query_ids: np.ndarray
    queries: np.ndarray


def sample_inputs(executor, parts, dim: int, count: int, train_wanted: int, queries_wanted: int,
                  seed: int, chunk_rows: int = 1 << 16, scratch: str | None = None) -> Drawn:
    """One read of every part (one task a part, ``chunk_rows`` rows at a time) drawing a seeded
    sample of about ``train_wanted`` training vectors and ``queries_wanted`` tuning queries
    (tasks.sample_part). ``scratch``: a folder URL the tasks write their training rows to
    (the build's scratch), read back here into one array; None: returned in memory."""
    train_probability = min(1.0, 1.2 * train_wanted / max(count, 1))
    query_probability = min(1.0, 1.5 * queries_wanted / max(count, 1))
    handles = [executor.submit(sample_part, part, number, dim, train_probability, query_probability, seed,
                               chunk_rows, None if scratch is None else
                               storage.join(scratch, f"sample-{number:05d}.npy"))
               for number, part in enumerate(parts)]
    samples = executor.get(handles, "sampling", [p.rows for p in parts])
    train = None
    if train_wanted:
        train = np.empty((min(train_wanted, sum(s.train_rows for s in samples)), dim), np.float32)
        filled = 0
        for sample in samples:
            if filled < len(train) and sample.train_rows:
                rows = sample.load_train()[:len(train) - filled]
                train[filled:filled + len(rows)] = rows
                filled += len(rows)
            if sample.train_file is not None:
                storage.remove(sample.train_file)
    ids = np.concatenate([s.query_ids for s in samples])
    vectors = np.concatenate([s.query_vectors for s in samples])
    query_ids, queries = pick_queries(ids, vectors, queries_wanted, seed)
    return Drawn(train, query_ids, queries)


def run_build(config: BuildConfig, executor: LocalExecutor | RayExecutor | DeferredExecutor) -> IndexManifest:
    """Build and publish a new version from the memory's embedding batches (module
    docstring). No process holds the whole input: tasks read their part in chunks, write
    per-shard piece files, and one task per shard merges that shard's pieces. Raises
    DuplicateIds (an id in two rows), IncompatibleBatches, ValueError (too few vectors to
    train the factory), RuntimeError (edits landed while it ran); publishes nothing then."""
    started = time.monotonic()
    phases = Phases(executor)
    with phases("planning"):
        before = read_latest(config.memory)  # what edits landing while it runs are measured against
        inputs = plan_inputs(config.memory, config.batches, split_rows=PART_ROWS)
    dim, shards = inputs.dim, config.num_shards
    estimate = inputs.count  # rows as written; unlearned ids (indexer/forgotten.py) drop on read
    factory = (factories.choose_factory(estimate, dim, config.bytes_per_vector)
               if config.factory == "auto" else config.factory)
    factories.make_index(factory, dim)  # a string FAISS or the memory refuses fails here, not after sampling
    chunk_rows = chunk_rows_for(dim, config.task_memory_mb << 20)
    log.info("building %s over %d vectors (dim %d) from %d parts into %d shards on %s "
             "(%d rows per read)", factory, estimate, dim, len(inputs.parts), shards,
             executor.name, chunk_rows)

    wanted = factories.training_size(factory, estimate)
    version = new_version_name()
    root = index_root(config.memory)
    with build_scratch(config.memory, version):
        with phases("sampling"):
            # A local Ray instance not started yet (indexer.executor.DeferredExecutor) starts
            # at the add: the sampling pass reads in this process, and the instance's daemons
            # and workers do not sit polling while this process trains (docs/benchmarks.md).
            sampler = executor if executor.running else LocalExecutor(max_retries=MAX_RETRIES)
            drawn = sample_inputs(sampler, inputs.parts, dim, estimate, wanted, QUERIES, config.seed,
                                  chunk_rows, scratch=storage.join(root, version, ".build"))
            if sampler is not executor:
                release_freed_heap()  # the reads' freed Arrow pool and glibc pages: training peaks next
        with phases("training"):
            if wanted:
                log.info("training %s on %d sampled vectors (k-means over %d lists, seed %d)", factory,
                         len(drawn.train), factories.nlist_of(factory), config.seed)
            trained = (factories.train(factory, dim, drawn.train, config.seed,
                                       verbose=log.isEnabledFor(logging.INFO)
                                       and factories.nlist_of(factory) >= 1024)
                       if wanted else factories.make_index(factory, dim))
            drawn.train = None
            trained = factories.to_cpu(trained)
            trained_bytes = faiss.serialize_index(trained)
            release_freed_heap()  # the sample's and k-means' pages: the add's tasks peak next
        if wanted:
            log.info("trained in %.1f s", phases.seconds["training"])

        if not executor.running:
            with phases("starting ray"):  # the deferred local instance (indexer.executor)
                executor.resolve()
        with phases("adding"):
            # the add pass also finds the tuning queries' exact neighbours (self included: + 1)
            exact_k = max(tuning_ks(estimate, (10, config.k))) + 1
            trained_ref, queries_ref = executor.put(trained_bytes), executor.put(drawn.queries)
            threads = config.add_threads or factories.add_threads(factory, executor.cpus_per_node())
            handles = [executor.submit(add_part, root, version, part, number, trained_ref, shards,
                                       config.keep_vectors, chunk_rows, queries_ref, exact_k, threads,
                                       num_cpus=threads)
                       for number, part in enumerate(inputs.parts)]
            pieces: list = [None] * len(handles)
            # each part's exact top-k is folded in as its task finishes: the driver holds one
            # (queries, exact_k) top-k, not one per part (~310 KB a part at 256 x 101)
            exact = (np.empty((len(drawn.queries), 0), np.float32), np.empty((len(drawn.queries), 0), np.int64))
            for number, added in executor.as_completed(handles, "adding", [p.rows for p in inputs.parts]):
                pieces[number] = added.pieces
                exact = merge_topk([exact[0], added.exact[0]], [exact[1], added.exact[1]], exact_k)
            exact_ids = exact[1]
            del handles, exact
        with phases("merging"):
            stripped = serialize_stripped(trained)  # trained is private to this driver
            entries = executor.get([executor.submit(merge_shard, root, version, shard, stripped,
                                                    *[p[shard] for p in pieces])
                                    for shard in range(shards)], "merging",
                                   [sum(p[shard].count for p in pieces) for shard in range(shards)])
            count = sum(e.count for e in entries)
            trained_path = f"{version}/trained.faiss"  # one copy per version: every segment's quantizer
            trained_sha = sha256_bytes(trained_bytes.tobytes())
            storage.write_bytes_atomic(storage.join(root, trained_path), trained_bytes.tobytes())
            del trained_bytes
        if count < inputs.count:
            log.info("left out %d rows of unlearned items (the forget ledger)", inputs.count - count)

        rerank = config.keep_vectors != "none"
        manifest = IndexManifest(
            version=version, parent=before,
            created=datetime.now(timezone.utc).isoformat(), operation="build", encoder=inputs.encoder,
            dim=dim, factory=factory, num_shards=shards, count=count,
            search_defaults={"k": config.k, "nprobe": 0, "rerank": rerank},
            shards=entries, batches=inputs.batches, trained_path=trained_path,
            trained_sha256=trained_sha)
        with phases("tuning"):
            if count > config.driver_tuning_max_items:
                built = SweptIndex(executor, config.memory, manifest, drawn.queries,
                                   max(tuning_ks(count, (10, config.k))) + 1)
            else:
                built = ShardedIndex(config.memory, manifest)
            tuned = tune(built, drawn.query_ids, drawn.queries, exact_ids, count, ks=(10, config.k),
                         target=config.recall_target)
            del built
        manifest.search_defaults.update(tuned.defaults())
        manifest.details = {
            "executor": executor.name, "parts": len(inputs.parts), "chunk_rows": chunk_rows,
            "add_threads": threads,
            "unlearned_rows_left_out": inputs.count - count,
            "train_vectors": 0 if not wanted else int(min(wanted, estimate)),
            "phases": phases.details(), "seconds": round(time.monotonic() - started, 3),
            "cpu_seconds": round(sum(phases.cpu_seconds.values()), 3), "seed": config.seed, **tuned.details()}
        crash_point("publish")
        with writer_lock(config.memory):
            head = read_latest(config.memory)  # read once: checked, then committed on (or refused)
            _check_unchanged(config.memory, version, inputs, before, head)
            manifest.parent = head
            manifest.write(config.memory)
            commit_latest(config.memory, version, head)  # the publish: last, atomic
    return manifest


def _check_unchanged(root: str, version: str, inputs, before: str | None, head: str | None) -> None:
    """Edits published while the build ran (LATEST went from ``before`` to ``head``) must not
    be lost by publishing it: an item unlearned meanwhile (the forget ledger grew), a batch
    added meanwhile, or a version named after this one (readers and ``min_version`` take the
    later name as the newer version) refuses the publish: nothing is committed; run the build
    again. Raises RuntimeError."""
    from indexer.forgotten import forgotten_ids

    if head and head != before:
        had = set(IndexManifest.read(root, before).batches) if before else set()
        added = sorted(set(IndexManifest.read(root, head).batches) - had - set(inputs.batches))
        if added:
            raise RuntimeError(f"batches {added} were added while the build ran; not publishing")
        if head > version:
            raise RuntimeError(f"version {head} was published while the build ran (version "
                               f"{version}, named when it started); not publishing (run it again)")
    known = inputs.parts[0].forgotten if inputs.parts and inputs.parts[0].forgotten is not None else []
    if len(np.setdiff1d(forgotten_ids(root), known)):
        raise RuntimeError("items were unlearned while the build ran; not publishing (run it again)")
