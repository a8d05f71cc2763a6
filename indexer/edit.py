"""Edits of a published memory, each a new immutable version (indexer/segments.py model):
add (a delta segment per shard reached: O(items added)), delete (tombstones: O(items deleted)),
compact (segments merged, tombstoned rows dropped physically: O(shard)), set weights.

Every edit runs under the memory's single-writer lock (indexer/leases.py), reads LATEST inside
it, writes new files only, and publishes by writing the manifest and then LATEST: an edit that
fails at any point commits nothing and leaves the previous version serving. After an edit, a
shard past the ``CompactionPolicy`` is compacted in a following version (same lock hold).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer import factory as factories
from indexer import keyindex
from indexer.checksums import sha256_bytes
from indexer.executor import LocalExecutor
from indexer.forgotten import record_forgotten, refuse_forgotten
from indexer.layout import ConcurrentEdit, commit_latest, index_root, new_version_name, version_dir
from indexer.leases import edit_lock, writer_lock
from indexer.manifest import IndexManifest, ShardEntry, TombstoneEntry
from indexer.reader import PART_ROWS, DuplicateIds, check_unique_ids, plan_inputs
from indexer.segments import (DEFAULT_POLICY, CompactionPolicy, Shard, segment_key_index,
                              segment_metadata, stored_ids)
from indexer.store import load_index, load_metadata, load_trained, resolve_version
from indexer.quantizer import Trained, trained_index
from indexer.tasks import (
    add_part,
    add_rows_segment,
    add_segment,
    build_scratch,
    TASK_MEMORY_MB,
    chunk_rows_for,
    compact_shard,
    shard_of,
    split_into_pieces,
    tombstone_shard,
    weigh_shard,
)
from pipelines import storage

log = logging.getLogger("vmem.index")
FORGET_REPORT = "forget-report.json"
PURGE_ATTEMPTS = 3  # compactions a purge tries while other writers' commits come first
COMPACTION_REPORT = "compaction-report.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def publish(root: str, parent: IndexManifest, version: str, operation: str,
            entries: list[ShardEntry], batches: list[str], details: dict,
            trained: bytes | None = None) -> IndexManifest:
    """Write the manifest of ``version`` (a child of ``parent``) and commit it as LATEST
    (indexer/layout.py: raises ConcurrentEdit, nothing committed, when another writer, on
    another machine, committed after ``parent`` first). The caller holds the writer lock. A parent without a stored
    trained index gets one in this version (``trained``, else derived from the parent's base
    segment), so later edits encode from it and every segment written since, stored without
    a coarse quantizer (indexer/quantizer.py), finds its quantizer there."""
    trained_path, trained_sha = parent.trained_path, parent.trained_sha256
    if not trained_path:
        trained = trained if trained is not None else load_trained(root, parent)
        trained_path, trained_sha = f"{version}/trained.faiss", sha256_bytes(trained)
        storage.write_bytes_atomic(storage.join(index_root(root), trained_path), trained)
    manifest = IndexManifest(
        version=version, parent=parent.version, created=_now(), operation=operation,
        encoder=parent.encoder, dim=parent.dim, factory=parent.factory,
        num_shards=parent.num_shards, count=sum(e.count for e in entries),
        search_defaults=dict(parent.search_defaults), shards=entries, batches=batches,
        details=details, trained_path=trained_path, trained_sha256=trained_sha)
    manifest.write(root)
    try:
        commit_latest(root, version, parent.version)
    except ConcurrentEdit:  # another writer came first: this version's files serve nobody
        storage.remove(version_dir(root, version))
        raise
    return manifest


def _by_shard(root: str, manifest: IndexManifest, ids: np.ndarray, held) -> np.ndarray:
    """``held`` (``Shard.live`` or ``Shard.stored``) of each id, asked of the shard that owns it:
    binary searches on its segments' sorted ids (and tombstones). O(len(ids) · log N), no
    full scan. Returns (len(ids),) bool."""
    ids = np.asarray(ids, dtype=np.int64)
    found = np.zeros(len(ids), dtype=bool)
    owner = shard_of(ids, manifest.num_shards)
    for entry in manifest.shards:
        mine = owner == entry.shard
        if mine.any():
            found[mine] = held(Shard(root, entry), ids[mine])
    return found


def _live(root: str, manifest: IndexManifest, ids: np.ndarray) -> np.ndarray:
    """Which ids the version serves (stored in a segment, not tombstoned there)."""
    return _by_shard(root, manifest, ids, Shard.live)


def _stored(root: str, manifest: IndexManifest, ids: np.ndarray) -> np.ndarray:
    """Which ids some file of the version still holds (tombstoned or not)."""
    return _by_shard(root, manifest, ids, Shard.stored)


def _check_new(root: str, manifest: IndexManifest, ids: np.ndarray, what: str) -> None:
    check_unique_ids(ids, what)
    refuse_forgotten(root, ids, what)
    clash = ids[_live(root, manifest, ids)]
    if len(clash):
        raise DuplicateIds(f"{len(clash)} ids of {what} are already in the memory "
                           f"(e.g. {clash[:5].tolist()}); delete them first to replace them")


def _vector_kind(root: str, manifest: IndexManifest) -> str:
    from indexer.store import load_vectors

    if not manifest.search_defaults.get("rerank"):
        return "none"
    for entry in manifest.shards:  # the first segment that has a vectors file: an empty
        for segment in entry.segments:  # shard's base has none
            vectors = load_vectors(root, segment)
            if vectors is not None:
                return "fp32" if vectors.dtype == np.float32 else "fp16"
    return "fp16"


def _trained(root: str, parent: IndexManifest) -> tuple[Trained, bytes | None]:
    """The trained index new segments of ``parent`` are encoded with (read once per process
    when the version stores it) and, for a version that does not, its bytes for ``publish``
    to store."""
    if parent.trained_path:
        return trained_index(root, parent), None
    stored = load_trained(root, parent)
    return Trained.from_bytes(stored), stored


def run_add(root: str, batches: list[str], executor, version: str | None = None,
            policy: CompactionPolicy | None = DEFAULT_POLICY,
            task_memory_bytes: int = TASK_MEMORY_MB << 20) -> IndexManifest:
    """Add embedding batches to LATEST as delta segments encoded with the version's trained
    index (no retraining; cost O(rows added)). Batches already in the memory are skipped, so a
    scheduled re-run adds nothing twice. Ids are never gathered on the driver: each shard's
    segment task checks its own (``Shard.add``), and DuplicateIds from any of them (an incoming
    id already live, or repeated) fails the add with nothing published."""
    with edit_lock(root):
        started = time.monotonic()
        parent = resolve_version(root, version)
        new = [b for b in batches if b not in parent.batches]
        if not new:
            log.info("every batch is already in version %s: nothing to add", parent.version)
            return parent
        inputs = plan_inputs(root, new, parent.encoder, parent.dim, split_rows=PART_ROWS)
        trained, to_store = _trained(root, parent)
        trained_ref = executor.put(faiss.serialize_index(trained.index))
        new_version = new_version_name(parent.version)
        chunk_rows = chunk_rows_for(parent.dim, task_memory_bytes)
        threads = factories.add_threads(parent.factory, executor.cpus_per_node())
        with build_scratch(root, new_version):
            pieces = [added.pieces for added in executor.get(
                [executor.submit(add_part, index_root(root), new_version, p, number, trained_ref,
                                 parent.num_shards, _vector_kind(root, parent), chunk_rows,
                                 None, 0, threads, num_cpus=threads)
                 for number, p in enumerate(inputs.parts)], "encoding new parts",
                [p.rows for p in inputs.parts])]
            entries = executor.get([executor.submit(add_segment, root, new_version, parent.shards[s],
                                                    trained.stripped, *[pp[s] for pp in pieces])
                                    for s in range(parent.num_shards)], "writing segments")
        added = sum(e.count for e in entries) - sum(e.count for e in parent.shards)
        manifest = publish(root, parent, new_version, "add", entries, parent.batches + new,
                           {"added": int(added), "batches_added": new,
                            "seconds": round(time.monotonic() - started, 3)}, to_store)
        return _maybe_compact(root, manifest, executor, policy)


def add_rows(root: str, meta: pa.Table, vectors: np.ndarray, batch: str,
             policy: CompactionPolicy | None = DEFAULT_POLICY) -> IndexManifest:
    """Add rows already in memory (the online API: ``meta`` as in an embedding batch, (n, dim)
    float32 unit ``vectors``) from the embedding batch ``batch`` to LATEST: one delta segment
    per shard reached. Cost O(n + shards + the forget ledger). Raises DuplicateIds,
    ForgottenIds (an id unlearned before), ValueError on a bad shape."""
    with edit_lock(root):
        started = time.monotonic()
        parent = resolve_version(root)
        if vectors.shape != (meta.num_rows, parent.dim):
            raise ValueError(f"expected ({meta.num_rows}, {parent.dim}) vectors, got {vectors.shape}")
        ids = meta.column("id").to_numpy()
        _check_new(root, parent, ids, "the new items")
        trained, to_store = _trained(root, parent)
        pieces = split_into_pieces(trained, meta, vectors, parent.num_shards,
                                   _vector_kind(root, parent))
        version = new_version_name(parent.version)
        entries = [add_rows_segment(root, version, parent.shards[s], pieces[s])
                   if len(pieces[s].meta) else parent.shards[s] for s in range(parent.num_shards)]
        manifest = publish(root, parent, version, "add", entries, parent.batches + [batch],
                           {"added": int(len(ids)), "batches_added": [batch],
                            "seconds": round(time.monotonic() - started, 3)}, to_store)
        return _maybe_compact(root, manifest, LocalExecutor(), policy)


@dataclass
class ForgetRequest:
    ids: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def resolve_forget(root: str, manifest: IndexManifest, request: ForgetRequest) -> tuple[np.ndarray, dict]:
    """The live ids a request names (sorted int64) with their keys, labels and batches, and
    what it named that the memory does not hold (forget, and "more like this" queries). A key names every live item stored under it (since
    ids hash batch + shard + key, two batches may both hold key ``000000000``: both are named).
    Ids cost O(ids · log N) (binary searches); keys O(keys · log N) through each segment's key
    index (indexer/keyindex.py: candidate ids by key hash, each checked against its stored key).
    Segments written before key indexes existed are scanned for the keys (a vectorised Arrow
    scan, no per-item Python objects) unless every batch has legacy ids (``ID_SCHEME_KEY``:
    the id is ``stable_id(key)``), where a key is first looked up by the id it hashes to.
    Labels are always a scan of the label column."""
    from pipelines.records import stable_id

    wanted = np.unique(np.asarray(request.ids, dtype=np.int64))
    asked_keys = set(request.keys)
    legacy = [(entry, number) for entry in manifest.shards
              for number, segment in enumerate(entry.segments) if not segment.keys_path]
    hashed = bool(legacy) and bool(request.keys) and _keys_hash_to_ids(root, manifest)
    by_key = {k: stable_id(k) for k in request.keys} if hashed else {}
    lookups = np.unique(np.concatenate([wanted, np.asarray(list(by_key.values()), np.int64)]))
    found: dict[int, tuple] = {}  # id -> (key, label, batch)

    def collect(entry: ShardEntry, number: int, meta, rows: np.ndarray, keep) -> None:
        ids = meta.ids[rows]
        hidden = Shard(root, entry).hidden(number)
        live = ~np.isin(ids, hidden) if len(hidden) else np.ones(len(ids), bool)
        values = meta.take(rows[live], ("key", "label", "batch"))
        for i, key, label, batch in zip(ids[live].tolist(), values["key"].tolist(),
                                        values["label"].tolist(), values["batch"].tolist()):
            if keep(i, key, label):
                found[i] = (key, label, batch)

    wanted_set = set(wanted.tolist())
    key_of_id = {i: k for k, i in by_key.items()}
    owner = shard_of(lookups, manifest.num_shards)
    for entry in manifest.shards:
        mine = lookups[owner == entry.shard]
        for number, segment in enumerate(entry.segments):
            meta = segment_metadata(root, segment)
            rows = meta.rows_of(mine)
            collect(entry, number, meta, rows[rows >= 0],
                    lambda i, key, label: i in wanted_set or key_of_id.get(i) == key)
            pairs = segment_key_index(root, segment) if request.keys else None
            if pairs is not None:
                rows = meta.rows_of(keyindex.ids_of(pairs, request.keys))
                collect(entry, number, meta, rows[rows >= 0], lambda i, key, label: key in asked_keys)
    scan_keys = sorted(asked_keys - ({key for key, _ in found.values()} if hashed else set()))
    scanned = legacy if scan_keys else []
    if request.labels:
        scanned = [(entry, number) for entry in manifest.shards for number in range(len(entry.segments))]
    for entry, number in scanned:
        meta = segment_metadata(root, entry.segments[number])
        mask = pa.array(np.zeros(len(meta), bool))
        if scan_keys and not entry.segments[number].keys_path:
            mask = pc.or_(mask, pc.is_in(meta.table.column("key"), pa.array(scan_keys, pa.string())))
        if request.labels:
            mask = pc.or_(mask, pc.is_in(meta.table.column("label"), pa.array(request.labels, pa.string())))
        rows = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
        collect(entry, number, meta, rows, lambda i, key, label: True)
    ids = np.asarray(sorted(found), dtype=np.int64)
    keys = [found[i][0] for i in ids.tolist()]
    labels = [found[i][1] for i in ids.tolist()]
    missing = {"ids": sorted(wanted_set - set(found)),
               "keys": sorted(asked_keys - set(keys)),
               "labels": sorted(set(request.labels) - set(labels))}
    return ids, {"keys": keys, "labels": labels, "batches": [found[i][2] for i in ids.tolist()],
                 "not_found": missing}


def _keys_hash_to_ids(root: str, manifest: IndexManifest) -> bool:
    """Whether every batch of ``manifest`` made its ids as ``stable_id(key)`` (``ID_SCHEME_KEY``,
    memories built before ids included batch and shard), so a key's only item has the id the
    key hashes to. A batch whose manifest is gone counts as not (the caller then scans)."""
    from pipelines.manifest import BatchManifest
    from pipelines.records import ID_SCHEME_KEY

    for batch in manifest.batches:
        try:
            if BatchManifest.read(root, batch).id_scheme != ID_SCHEME_KEY:
                return False
        except FileNotFoundError:
            return False
    return True


def verify_purged(root: str, manifest: IndexManifest, purged: np.ndarray) -> dict:
    """Read every index and metadata file of ``manifest`` back and check that none holds a
    purged id (physically: the index's stored ids, the metadata's id column; re-rank vectors
    are row-aligned with the metadata). Returns {shard: [files checked]}; raises RuntimeError."""
    checked = {}
    for entry in manifest.shards:
        files = []
        for segment in entry.segments:
            in_index = np.isin(stored_ids(load_index(root, segment, mmap=False)), purged).sum()
            in_meta = np.isin(load_metadata(root, segment).column("id").to_numpy(), purged).sum()
            if in_index or in_meta:
                raise RuntimeError(f"shard {entry.shard} ({segment.index_path}) still holds "
                                   f"{in_index + in_meta} purged ids")
            files += [path for path, _ in segment.files()]
        checked[str(entry.shard)] = files
    return checked


def run_delete(root: str, request: ForgetRequest, executor, operation: str = "delete",
               details: dict | None = None, purge: bool = False,
               policy: CompactionPolicy | None = DEFAULT_POLICY) -> tuple[IndexManifest, dict]:
    """Tombstone the named items in every shard that serves them (O(items deleted)): from the
    new version on, no search returns them. With ``purge`` (or past the policy) the shards are
    compacted in a following version, so their bytes leave every file of the live version.
    Writes the forget report (method.md section 5): when the items stopped being returned
    (version, time) and, when purged, when their bytes left the live version's files (version,
    time), verified by reading those files back. Raises ValueError when nothing matches."""
    with edit_lock(root):
        started = time.monotonic()
        parent = resolve_version(root)
        forget, found = resolve_forget(root, parent, request)
        if not len(forget):
            raise ValueError(f"nothing to delete: none of {found['not_found']} is in the memory")
        owner = shard_of(forget, parent.num_shards)
        version = new_version_name(parent.version)
        # O(ids) per shard, as resolving them was: in this process (starting Ray for it
        # would cost more than the work; a compaction that follows runs on ``executor``)
        entries = _per_shard(LocalExecutor(progress=False), parent.shards, {
            s: (tombstone_shard, root, version, parent.shards[s], forget[owner == s])
            for s in range(parent.num_shards) if (owner == s).any()}, "tombstoning")
        seconds = time.monotonic() - started
        report = {"version": version, "parent": parent.version, "operation": operation,
                  "removed": int(len(forget)), "ids": forget.tolist(), "keys": found["keys"],
                  "labels": dict(Counter(found["labels"])), "not_found": found["not_found"],
                  "stopped_returning": {"version": version, "time": _now()},
                  "bytes_removed": None, "seconds": round(seconds, 3),
                  "seconds_per_item": round(seconds / len(forget), 6)}
        storage.write_json_atomic(storage.join(version_dir(root, version), FORGET_REPORT), report)
        # unlearning: rebuilds from the batches must not bring them back (recorded before the
        # commit, so no crash can commit the delete without it; dropped if the commit is refused)
        ledger = record_forgotten(root, version, forget) if operation == "delete" else None
        try:
            manifest = publish(root, parent, version, operation, entries, parent.batches,
                               {"removed": int(len(forget)), "forget_report": FORGET_REPORT,
                                "seconds": round(seconds, 3), **(details or {})})
        except ConcurrentEdit:
            if ledger:
                storage.remove(ledger)
            raise
        compacted = (_purge(root, manifest, executor, {e.shard for e in manifest.shards
                                                        if (owner == e.shard).any()})
                     if purge else _maybe_compact(root, manifest, executor, policy))
        if compacted.version != manifest.version:
            report["bytes_removed"] = _purged(root, compacted.version, version)
        return compacted, report


def _per_shard(executor, shards: list[ShardEntry], tasks: dict[int, tuple],
               what: str) -> list[ShardEntry]:
    """``shards`` with each shard named in ``tasks`` ({shard: (task function, *args)})
    replaced by its task's result (a ShardEntry), the tasks run on ``executor``; the others
    unchanged. Raises the first task's error (after its retries)."""
    chosen = sorted(tasks)
    done = dict(zip(chosen, executor.get([executor.submit(*tasks[s]) for s in chosen], what)))
    return [done.get(entry.shard, entry) for entry in shards]


def run_compact(root: str, executor, shards: set[int] | None = None) -> IndexManifest:
    """Merge every shard's segments and drop tombstoned rows physically into a new version
    (``vmem index compact``); a memory already compacted is returned as is."""
    with edit_lock(root):
        parent = resolve_version(root)
        return _compact(root, parent, executor, shards)


def compact_if_due(root: str, executor, policy: CompactionPolicy = DEFAULT_POLICY) -> IndexManifest:
    """Compact the shards of LATEST past ``policy`` without holding the writer lock while it
    works (the serving writer runs this after an edit has returned, and edits go on meanwhile):
    the shards of a snapshot are compacted into new files, then, under the lock, rebased onto
    whatever LATEST became (segments added and tombstones written since the snapshot are kept
    on top of the compacted base) and published. Returns LATEST afterwards (without this
    compaction when another writer's commit came first: it is left for the next call)."""
    snapshot = resolve_version(root)
    due = {e.shard for e in snapshot.shards if policy.due(e)}
    if not due:
        return snapshot
    started = time.monotonic()
    folder = new_version_name(snapshot.version) + "-compaction"  # files only; the manifest is named at publish
    compacted = dict(zip(sorted(due), executor.get(
        [executor.submit(compact_shard, root, folder, snapshot.shards[s]) for s in sorted(due)],
        "compacting")))
    with writer_lock(root):
        latest = resolve_version(root)
        entries = []
        for entry in latest.shards:
            old = snapshot.shards[entry.shard]
            if entry.shard not in compacted:
                entries.append(entry)
                continue
            rebased = _rebase(compacted[entry.shard], old, entry)
            if rebased is None:  # compacted by someone else meanwhile: leave it
                log.info("shard %d changed under the compaction; not replacing it", entry.shard)
                entries.append(entry)
                continue
            entries.append(rebased)
        chosen = {s for s in compacted if entries[s] is not latest.shards[s]}
        if not chosen:
            return latest
        try:
            return _publish_compaction(root, latest, snapshot, entries, chosen, started)
        except ConcurrentEdit as error:  # another machine's edit came first: compact next time
            log.warning("compaction of %s not published (%s)", snapshot.version, error)
            return resolve_version(root)


def _rebase(compacted: ShardEntry, snapshot: ShardEntry, latest: ShardEntry) -> ShardEntry | None:
    """``compacted`` (the snapshot's shard compacted) with what ``latest`` added since the
    snapshot: its newer segments, and its newer tombstones re-pointed at the same items (a
    tombstone that hid the snapshot's first n segments hides the compacted base and the newer
    segments before n). None when ``latest`` is not a descendant of the snapshot's shard."""
    kept = len(snapshot.segments)
    if latest.segments[:kept] != snapshot.segments or latest.tombstones[:len(snapshot.tombstones)] != snapshot.tombstones:
        return None
    segments = [compacted.segments[0]] + latest.segments[kept:]
    tombstones = [TombstoneEntry(t.path, t.sha256, t.count, t.segments - kept + 1)
                  for t in latest.tombstones[len(snapshot.tombstones):]]
    return ShardEntry(latest.shard, latest.count, segments, tombstones)


def _maybe_compact(root: str, manifest: IndexManifest, executor,
                   policy: CompactionPolicy | None) -> IndexManifest:
    """After a committed edit: compact the shards past ``policy``. A compaction that loses a
    commit race (indexer/layout.py) or fails (a task's error, an executor that cannot start)
    is left to a later edit: the edit is committed and stands, so this logs why and returns
    its version rather than failing it (a caller would otherwise read a committed edit as
    failed, and a retry would find it already done)."""
    if policy is None:
        return manifest
    due = {e.shard for e in manifest.shards if policy.due(e)}
    if not due:
        return manifest
    try:
        return _compact(root, manifest, executor, due)
    except ConcurrentEdit as error:
        log.warning("compaction after version %s not published (%s); a later edit compacts",
                    manifest.version, error)
        return manifest
    except Exception as error:  # noqa: BLE001  logged; the committed edit must not read as failed
        log.warning("version %s is published; the compaction it made due failed (%s: %s): "
                    "shards %s stay due (a later edit or `vmem index compact` compacts them)",
                    manifest.version, type(error).__name__, error, sorted(due))
        return manifest


def _purge(root: str, manifest: IndexManifest, executor, shards: set[int],
           attempts: int = PURGE_ATTEMPTS) -> IndexManifest:
    """``delete --purge``'s compaction of ``shards`` after the committed delete ``manifest``,
    retried on the new LATEST (which holds the delete's tombstones) when another writer's
    commit came first; after ``attempts`` lost races the delete stands unpurged (its forget
    report says bytes_removed null, as before any compaction) and this returns ``manifest``."""
    parent = manifest
    for _ in range(attempts):
        try:
            return _compact(root, parent, executor, shards)
        except ConcurrentEdit as error:
            log.warning("purge after version %s lost a commit race (%s)", manifest.version, error)
            parent = resolve_version(root)
    return manifest


def _compact(root: str, parent: IndexManifest, executor, shards: set[int] | None,
             details: dict | None = None) -> IndexManifest:
    """Compact ``shards`` (default: every shard not compacted) of ``parent``; the caller holds
    the lock (``run_compact``, ``delete --purge``, a rollback purging again: its ``details``
    join the compaction's, so the version it returns says what it rolled back)."""
    started = time.monotonic()
    chosen = {e.shard for e in parent.shards if not e.compacted and (shards is None or e.shard in shards)}
    if not chosen:
        return parent
    folder = new_version_name(parent.version) + "-compaction"
    entries = _per_shard(executor, parent.shards,
                         {s: (compact_shard, root, folder, parent.shards[s]) for s in chosen}, "compacting")
    return _publish_compaction(root, parent, parent, entries, chosen, started, details)


def _publish_compaction(root: str, latest: IndexManifest, snapshot: IndexManifest,
                        entries: list[ShardEntry], chosen: set[int], started: float,
                        details: dict | None = None) -> IndexManifest:
    """Verify that no file of the new version holds an id the compaction purged (the
    snapshot's tombstones of the chosen shards), write the compaction report (which deletes'
    bytes left the live version), publish as a child of ``latest``. Caller holds the lock."""
    from indexer.store import load_tombstones

    purged_by: dict[str, list[int]] = {}
    for shard in chosen:
        for tombstone in snapshot.shards[shard].tombstones:
            purged_by.setdefault(tombstone.path.split("/")[0], []).extend(load_tombstones(root, tombstone).tolist())
    purged = np.asarray(sorted({i for ids in purged_by.values() for i in ids}), dtype=np.int64)
    version = new_version_name(latest.version)
    pending = IndexManifest(version, latest.version, "", "compact", latest.encoder, latest.dim,
                            latest.factory, latest.num_shards, sum(e.count for e in entries),
                            shards=[entries[s] for s in sorted(chosen)])
    verified = verify_purged(root, pending, purged) if len(purged) else {}
    seconds = time.monotonic() - started
    stored = sum(snapshot.shards[s].stored for s in chosen)
    report = {"version": version, "parent": latest.version, "snapshot": snapshot.version,
              "time": _now(), "shards": sorted(chosen),
              "purged": {v: len(ids) for v, ids in purged_by.items()},
              "verified_files": verified, "rows_read": int(stored), "seconds": round(seconds, 3),
              "vectors_per_second": round(stored / max(seconds, 1e-9), 1)}
    storage.write_json_atomic(storage.join(version_dir(root, version), COMPACTION_REPORT), report)
    log.info("compacted shards %s into version %s: %d rows purged, %.2f s", sorted(chosen),
             version, len(purged), seconds)
    return publish(root, latest, version, "compact", entries, latest.batches,
                   {**(details or {}), "compaction_report": COMPACTION_REPORT,
                    "shards": sorted(chosen), "purged": int(len(purged)),
                    "seconds": round(seconds, 3)})


def _purged(root: str, compaction_version: str, delete_version: str) -> dict | None:
    url = storage.join(version_dir(root, compaction_version), COMPACTION_REPORT)
    report = storage.read_json(url)
    if delete_version not in report["purged"]:
        return None
    return {"version": compaction_version, "time": report["time"], "verified": True}


def forget_status(root: str, delete_version: str) -> dict:
    """The forget report of ``delete_version`` with ``bytes_removed`` filled in: the version
    from which on no file of LATEST's history holds the forgotten rows (the oldest of the
    unbroken run of versions back from LATEST whose files hold none of them: a compaction,
    with its report's time; found by reading each changed version's sorted id columns,
    O(ids · log N) per version). None while a file LATEST reads still holds one (tombstoned,
    before a compaction, or brought back by a rollback). Raises FileNotFoundError naming the
    version when it is not a delete of this memory."""
    url = storage.join(version_dir(root, delete_version), FORGET_REPORT)
    if not storage.exists(url):
        raise FileNotFoundError(f"version {delete_version} of {root} is not a delete (no forget "
                                f"report); `vmem index log` lists the deletes")
    report = storage.read_json(url)
    ids = np.asarray(report["ids"], dtype=np.int64)
    chain, version = [], resolve_version(root).version
    while version and version != delete_version:
        chain.append(IndexManifest.read(root, version))
        version = chain[-1].parent
    report["live"] = version == delete_version  # False: not on LATEST's history (rolled back)
    removed = None  # the oldest version so far, back from LATEST, whose files hold none of them
    for manifest in chain:  # newest first
        same_files = (removed is not None and manifest.num_shards == removed.num_shards
                      and all(manifest.shards[s].files() == removed.shards[s].files()
                              for s in set(shard_of(ids, manifest.num_shards).tolist())))
        if not same_files and _stored(root, manifest, ids).any():
            break
        removed = manifest
    if removed is not None and report["live"]:
        compaction = storage.join(version_dir(root, removed.version), COMPACTION_REPORT)
        when = storage.read_json(compaction)["time"] if storage.exists(compaction) else removed.created
        report["bytes_removed"] = {"version": removed.version, "time": when, "verified": True}
    return report


def run_set_weights(root: str, ids: np.ndarray, weights: np.ndarray, executor,
                    operation: str, details: dict) -> IndexManifest:
    """New version whose metadata carries per-item weights; index and vector files shared."""
    with edit_lock(root):
        parent = resolve_version(root)
        version = new_version_name(parent.version)
        entries = executor.get([executor.submit(weigh_shard, root, version, parent.shards[s], ids, weights)
                                for s in range(parent.num_shards)], "weighting")
        return publish(root, parent, version, operation, entries, parent.batches, details)
