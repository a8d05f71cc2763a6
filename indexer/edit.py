"""Edits of a published memory, each a new immutable version sharing the trained quantizer:
add batches (new samples, whole new classes), delete (unlearn) by id / key / label, set weights.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from indexer.forgotten import record_forgotten
from indexer.layout import new_version_name, set_latest, version_dir
from indexer.manifest import IndexManifest
from indexer.reader import DuplicateIds, check_unique_ids, plan_inputs
from indexer.store import load_index, load_metadata, resolve_version
from indexer.tasks import add_part, edit_shard, empty_like, shard_of, stored_ids
from pipelines import storage

log = logging.getLogger("vmem.index")
FORGET_REPORT = "forget-report.json"


def _publish(root: str, parent: IndexManifest, version: str, operation: str, entries: list,
             batches: list[str], details: dict) -> IndexManifest:
    manifest = IndexManifest(
        version=version, parent=parent.version, created=datetime.now(timezone.utc).isoformat(),
        operation=operation, encoder=parent.encoder, dim=parent.dim, factory=parent.factory,
        num_shards=parent.num_shards, count=sum(e.count for e in entries),
        search_defaults=dict(parent.search_defaults), shards=entries, batches=batches,
        details=details)
    manifest.write(root)
    set_latest(root, version)
    return manifest


def _memory_ids(root: str, manifest: IndexManifest, columns=("id",)):
    import pyarrow as pa

    return pa.concat_tables([load_metadata(root, e).select(list(columns)) for e in manifest.shards])


def run_add(root: str, batches: list[str], executor, version: str | None = None) -> IndexManifest:
    """Add new embedding batches to LATEST with its trained quantizer: no retraining.
    Batches already in the memory are skipped, so a scheduled re-run adds nothing twice."""
    started = time.monotonic()
    parent = resolve_version(root, version)
    new = [b for b in batches if b not in parent.batches]
    if not new:
        log.info("every batch is already in version %s: nothing to add", parent.version)
        return parent
    inputs = plan_inputs(root, new, parent.encoder, parent.dim)
    existing = _memory_ids(root, parent).column("id").to_numpy()
    incoming = np.concatenate([_part_ids(p) for p in inputs.parts])
    check_unique_ids(incoming, "the new batches")
    clash = np.intersect1d(incoming, existing)
    if len(clash):
        raise DuplicateIds(f"{len(clash)} ids of the new batches are already in the memory "
                           f"(e.g. {clash[:5].tolist()}); delete them first to replace them")
    keep_vectors = _vector_kind(root, parent) if parent.search_defaults.get("rerank") else "none"
    trained = executor.put(empty_like(load_index(root, parent.shards[0], mmap=False)))
    shards = parent.num_shards
    pieces = executor.get([executor.submit(add_part, p, trained, shards, keep_vectors)
                           for p in inputs.parts], "encoding new parts")
    new_version = new_version_name()
    entries = executor.get([executor.submit(edit_shard, root, new_version, parent.shards[s],
                                            np.empty(0, np.int64), [pp[s] for pp in pieces], None)
                            for s in range(shards)], "adding")
    return _publish(root, parent, new_version, "add", entries, parent.batches + new,
                    {"added": int(len(incoming)), "batches_added": new,
                     "seconds": round(time.monotonic() - started, 3)})


def _part_ids(part) -> np.ndarray:
    from indexer.reader import read_part

    return read_part(part, with_vectors=False)[0].column("id").to_numpy()


def _vector_kind(root: str, manifest: IndexManifest) -> str:
    from indexer.store import load_vectors

    vectors = load_vectors(root, manifest.shards[0])
    return "fp32" if vectors is not None and vectors.dtype == np.float32 else "fp16"


@dataclass
class ForgetRequest:
    ids: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def resolve_forget(root: str, manifest: IndexManifest, request: ForgetRequest) -> tuple[np.ndarray, dict]:
    """The ids a request names, and what it named that the memory does not hold."""
    table = _memory_ids(root, manifest, ("id", "key", "label"))
    ids = table.column("id").to_numpy()
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    labels = np.asarray(table.column("label").to_pylist(), dtype=object)
    selected = (np.isin(ids, np.asarray(request.ids, dtype=np.int64))
                | np.isin(keys, np.asarray(request.keys, dtype=object))
                | np.isin(labels, np.asarray(request.labels, dtype=object)))
    missing = {"ids": sorted(set(request.ids) - set(ids[np.isin(ids, request.ids)].tolist())),
               "keys": sorted(set(request.keys) - set(keys[selected].tolist())),
               "labels": sorted(set(request.labels) - set(labels[selected].tolist()))}
    return ids[selected], {"keys": keys[selected].tolist(), "labels": labels[selected].tolist(),
                           "not_found": missing}


def verify_forgotten(root: str, manifest: IndexManifest, forgotten: np.ndarray) -> dict:
    """Read every shard file of the new version back and check none holds a forgotten id."""
    checked = {}
    for entry in manifest.shards:
        in_index = np.isin(stored_ids(load_index(root, entry, mmap=False)), forgotten).sum()
        in_meta = np.isin(load_metadata(root, entry).column("id").to_numpy(), forgotten).sum()
        if in_index or in_meta:
            raise RuntimeError(f"shard {entry.shard} still holds {in_index + in_meta} forgotten ids")
        checked[entry.shard] = entry.index_path
    return checked


def run_delete(root: str, request: ForgetRequest, executor, operation: str = "delete",
               details: dict | None = None) -> tuple[IndexManifest, dict]:
    """Physically remove items from every shard that holds them; write a verified forget report."""
    started = time.monotonic()
    parent = resolve_version(root)
    forget, found = resolve_forget(root, parent, request)
    if not len(forget):
        raise ValueError(f"nothing to delete: none of {found['not_found']} is in the memory")
    shard_of_id = shard_of(forget, parent.num_shards)
    version = new_version_name()
    entries = executor.get([executor.submit(edit_shard, root, version, parent.shards[s],
                                            forget[shard_of_id == s], [], None)
                            for s in range(parent.num_shards)], "deleting")
    pending = IndexManifest(version, parent.version, "", operation, parent.encoder, parent.dim,
                            parent.factory, parent.num_shards, sum(e.count for e in entries),
                            shards=entries)
    verified = verify_forgotten(root, pending, forget)
    seconds = time.monotonic() - started
    report = {"version": version, "parent": parent.version, "operation": operation,
              "removed": int(len(forget)), "ids": forget.tolist(), "keys": found["keys"],
              "labels": dict(Counter(found["labels"])), "not_found": found["not_found"],
              "verified_shards": {str(k): v for k, v in verified.items()},
              "seconds": round(seconds, 3),
              "seconds_per_item": round(seconds / len(forget), 6)}
    storage.write_json_atomic(storage.join(version_dir(root, version), FORGET_REPORT), report)
    if operation == "delete":  # unlearning: rebuilds from the batches must not bring them back
        record_forgotten(root, version, forget)
    manifest = _publish(root, parent, version, operation, entries, parent.batches,
                        {"removed": int(len(forget)), "forget_report": FORGET_REPORT,
                         "seconds": round(seconds, 3), **(details or {})})
    return manifest, report


def run_set_weights(root: str, ids: np.ndarray, weights: np.ndarray, executor,
                    operation: str, details: dict) -> IndexManifest:
    """New version whose metadata carries per-item weights; index files are shared."""
    parent = resolve_version(root)
    version = new_version_name()
    entries = executor.get([executor.submit(edit_shard, root, version, parent.shards[s],
                                            np.empty(0, np.int64), [], (ids, weights))
                            for s in range(parent.num_shards)], "weighting")
    return _publish(root, parent, version, operation, entries, parent.batches, details)


