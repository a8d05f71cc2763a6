"""Build job: embedding batches -> a trained, sharded FAISS index published as a new version.

Train once on a seeded sample; add every part in parallel onto copies of the trained empty
index; merge the parts' pieces into S serving shards; publish files, then the manifest, then
LATEST. A build that fails or is killed at any point leaves LATEST and its files untouched.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import faiss
import numpy as np

from indexer import factory as factories
from indexer.checksums import sha256_bytes
from indexer.executor import LocalExecutor, RayExecutor
from indexer.layout import index_root, new_version_name, read_latest, set_latest
from indexer.leases import writer_lock
from indexer.manifest import IndexManifest
from indexer.reader import check_unique_ids, plan_inputs, read_part
from indexer.search import ShardedIndex
from indexer.tasks import VECTOR_DTYPES, add_part, merge_shard, sample_part
from indexer.tuning import tune
from pipelines import storage

log = logging.getLogger("vmem.index")


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

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        if self.keep_vectors not in VECTOR_DTYPES:
            raise ValueError(f"keep_vectors must be one of {sorted(VECTOR_DTYPES)}")


def part_ids(part) -> np.ndarray:
    meta, _ = read_part(part, with_vectors=False)
    return meta.column("id").to_numpy()


def add_part_one_shard(part, trained: np.ndarray, keep_vectors: str):
    """``add_part`` for S = 1 (Ray returns a single object, not a list, for one return)."""
    return add_part(part, trained, 1, keep_vectors)[0]


def train_sample(executor, parts, count: int, wanted: int, seed: int) -> np.ndarray:
    probability = min(1.0, 1.2 * wanted / max(count, 1))
    handles = [executor.submit(sample_part, part, probability, seed, number)
               for number, part in enumerate(parts)]
    sample = np.concatenate(executor.get(handles, "sampling"))
    return sample[:wanted]


def run_build(config: BuildConfig, executor: LocalExecutor | RayExecutor) -> IndexManifest:
    started = time.monotonic()
    inputs = plan_inputs(config.memory, config.batches)
    dim, shards = inputs.dim, config.num_shards
    ids = np.concatenate(executor.get([executor.submit(part_ids, p) for p in inputs.parts], "reading ids"))
    check_unique_ids(ids)
    count = len(ids)  # rows as read: unlearned ids (indexer/forgotten.py) are already dropped
    if count < inputs.count:
        log.info("left out %d rows of unlearned items (the forget ledger)", inputs.count - count)
    factory = (factories.choose_factory(count, dim, config.bytes_per_vector)
               if config.factory == "auto" else config.factory)
    log.info("building %s over %d vectors (dim %d) from %d parts into %d shards on %s",
             factory, count, dim, len(inputs.parts), shards, executor.name)

    wanted = factories.training_size(factory, count)
    sample = train_sample(executor, inputs.parts, count, wanted, config.seed) if wanted else None
    prepare_s = time.monotonic() - started
    trained = factories.train(factory, dim, sample, config.seed) if wanted else factories.make_index(factory, dim)
    trained_bytes = faiss.serialize_index(factories.to_cpu(trained))
    train_s = time.monotonic() - started - prepare_s

    trained_ref = executor.put(trained_bytes)
    if shards == 1:
        per_part = [[executor.submit(add_part_one_shard, part, trained_ref, config.keep_vectors)]
                    for part in inputs.parts]
    else:
        per_part = [executor.submit(add_part, part, trained_ref, shards, config.keep_vectors,
                                    num_returns=shards) for part in inputs.parts]
    version = new_version_name()
    merges = [executor.submit(merge_shard, index_root(config.memory), version, shard,
                              *[pieces[shard] for pieces in per_part]) for shard in range(shards)]
    entries = executor.get(merges, "adding and merging")
    trained_path = f"{version}/trained.faiss"  # one copy per version: every new segment's encoder
    trained_sha = sha256_bytes(trained_bytes.tobytes())
    storage.write_bytes_atomic(storage.join(index_root(config.memory), trained_path),
                               trained_bytes.tobytes())
    add_merge_s = time.monotonic() - started - train_s - prepare_s

    rerank = config.keep_vectors != "none"
    manifest = IndexManifest(
        version=version, parent=read_latest(config.memory),
        created=datetime.now(timezone.utc).isoformat(), operation="build", encoder=inputs.encoder,
        dim=dim, factory=factory, num_shards=shards, count=sum(e.count for e in entries),
        search_defaults={"k": config.k, "nprobe": 0, "rerank": rerank},
        shards=entries, batches=inputs.batches, trained_path=trained_path,
        trained_sha256=trained_sha)
    tuning_started = time.monotonic()
    tuned = tune(ShardedIndex(config.memory, manifest), executor, inputs.parts, count,
                 ks=(10, config.k), target=config.recall_target, seed=config.seed)
    manifest.search_defaults.update(tuned.defaults())
    manifest.details = {
        "executor": executor.name, "parts": len(inputs.parts),
        "unlearned_rows_left_out": inputs.count - count,
        "train_vectors": 0 if sample is None else int(len(sample)),
        "prepare_seconds": round(prepare_s, 3), "train_seconds": round(train_s, 3),
        "add_merge_seconds": round(add_merge_s, 3),
        "tuning_seconds": round(time.monotonic() - tuning_started, 3),
        "seconds": round(time.monotonic() - started, 3), "seed": config.seed, **tuned.details()}
    if manifest.count != count:
        raise RuntimeError(f"built {manifest.count} vectors from {count} inputs; not publishing")
    with writer_lock(config.memory):
        _check_unchanged(config.memory, manifest, inputs)
        manifest.parent = read_latest(config.memory)
        manifest.write(config.memory)
        set_latest(config.memory, version)  # the publish: last, atomic
    return manifest


def _check_unchanged(root: str, manifest: IndexManifest, inputs) -> None:
    """Edits published while the build ran must not be lost by publishing it: an item
    unlearned meanwhile (the forget ledger grew) or a batch added meanwhile refuses the
    publish (nothing is committed; run the build again)."""
    from indexer.forgotten import forgotten_ids

    latest = read_latest(root)
    if latest and latest != manifest.parent:
        added = sorted(set(IndexManifest.read(root, latest).batches) - set(inputs.batches))
        if added:
            raise RuntimeError(f"batches {added} were added while the build ran; not publishing")
    known = inputs.parts[0].forgotten if inputs.parts and inputs.parts[0].forgotten is not None else []
    if len(np.setdiff1d(forgotten_ids(root), known)):
        raise RuntimeError("items were unlearned while the build ran; not publishing (run it again)")
