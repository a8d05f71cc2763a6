"""Garbage collection (``vmem index gc --keep N``): what no kept version, reader or writer needs.

**Kept versions**: the N newest complete versions (names sort by creation time), ``LATEST``,
every pinned version (``leases.pinned``), every version a live replica lease names
(``leases.live_leases``) and, unless ``fallbacks`` is off, the fallback versions of ``LATEST``
and of each leased version (``history.fallback_ancestors``: a replica whose file of the version
it serves fails to load serves that shard from one of them; mostly files the version shares,
the pre-compaction segments of a compaction that purged nothing). Every other complete version is dropped: its ``manifest.json``
goes first (the version disappears from ``list_versions``, so nothing starts loading it),
then its files.

**File level.** A version reads files in older version folders (an edit reuses its parent's
unchanged files; ``IndexManifest.files()`` lists them), so files are removed one by one: any
file under ``ROOT/index/<folder>/`` that no kept version's manifest references goes, and a
folder goes only when nothing in it is referenced. A kept version's own folder keeps its JSON
records (``manifest.json``, ``forget-report.json``).

**Leftovers of failed or killed runs**, each only once older than the grace period (newest
modification time inside it, so a run in progress is never touched): temporary files
(``.tmp-*``, ``pipelines.storage.write_bytes_atomic``) anywhere under ``ROOT/index`` and
``ROOT/embeddings``; orphan version folders without ``manifest.json`` (a killed build or edit;
files in them that a kept version references stay); online embedding batches
(``ROOT/embeddings/online-*``) that no version's manifest lists in ``batches`` (a failed API
add); Beam's ``beam-temp-*`` folders under ``ROOT/embeddings/<batch>/`` and
``ROOT/rejected/<batch>/`` (a killed ingest; no committed batch names them). The grace period must exceed the longest time a run leaves its files unchanged before
it publishes (a build writes its shard files, then tunes, then takes the writer lock to publish).

Never touched: ``ROOT/index/forgotten/`` (the forget ledger), ``LATEST``, ``.commits``
(the commit records, indexer/layout.py), ``.leases``, ``.pins``, ``.writer.lock``, embedding batches other than ``online-*``. The whole collection
runs inside ``leases.writer_lock``, so no edit publishes while it decides.
"""
from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field

from indexer import leases
from indexer.forgotten import LEDGER
from indexer.history import fallback_ancestors
from indexer.layout import LATEST, MANIFEST, ConcurrentEdit, index_root, list_versions, read_head, read_latest
from indexer.manifest import IndexManifest
from pipelines import storage
from pipelines.manifest import BEAM_TEMP_PREFIX, ONLINE_PREFIX
from pipelines.manifest import MANIFEST as BATCH_MANIFEST

TEMP_PREFIX = ".tmp-"  # pipelines.storage.write_bytes_atomic
DEFAULT_GRACE_SECONDS = 3600.0


@dataclass
class _Plan:
    """What a collection removes: paths on the filesystem (fsspec paths, no protocol)."""

    kept: dict[str, list[str]] = field(default_factory=dict)  # version -> why
    dropped: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)  # of dropped versions: removed first
    files: dict[str, int] = field(default_factory=dict)  # path -> bytes
    temp: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # removed once their files are gone
    orphans: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)  # online batch folders
    shared: list[str] = field(default_factory=list)  # referenced files kept in dropped folders


def _modified(fs, path: str) -> float | None:
    """Modification time (Unix seconds) of ``path``, None when the filesystem cannot say."""
    try:
        return fs.modified(path).timestamp()
    except (NotImplementedError, FileNotFoundError, OSError, KeyError, AttributeError):
        return None


def _newest(fs, directory: str, files: dict[str, dict]) -> float | None:
    """The newest modification time of a folder and everything in it (None: unknown)."""
    times = [_modified(fs, p) for p in files] + [_modified(fs, directory)]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _files(fs, directory: str) -> dict[str, dict]:
    """path -> info of every file under ``directory`` (recursive; {} when it does not exist)."""
    if not fs.exists(directory):
        return {}
    found = fs.find(directory, withdirs=False, detail=True)
    return {path: info for path, info in found.items() if info.get("type", "file") == "file"}


def _is_temp(path: str) -> bool:
    return posixpath.basename(path).startswith(TEMP_PREFIX)


def _kept_versions(root: str, versions: list[str], keep: int, fallbacks: bool) -> dict[str, list[str]]:
    kept: dict[str, list[str]] = {}
    complete = set(versions)
    for version in versions[len(versions) - keep:] if keep else []:
        kept.setdefault(version, []).append("newest")
    latest = read_latest(root)
    if latest is not None:
        if latest not in complete:
            raise RuntimeError(f"LATEST names {latest!r}, which has no manifest under "
                               f"{index_root(root)}; not collecting a memory in this state")
        kept.setdefault(latest, []).append("latest")
    for version in sorted(leases.pinned(root) & complete):
        kept.setdefault(version, []).append("pinned")
    served = [latest] if latest is not None else []
    for holder, version in sorted(leases.live_leases(root).items()):
        if version in complete:
            kept.setdefault(version, []).append(f"leased by {holder}")
            served.append(version)
    if fallbacks:
        for version in sorted(set(served)):
            for ancestor in fallback_ancestors(root, IndexManifest.read(root, version)):
                if ancestor.version in complete:
                    kept.setdefault(ancestor.version, []).append(f"fallback of {version}")
    return dict(sorted(kept.items()))


def _plan(root: str, keep: int, grace_seconds: float, now: float, fallbacks: bool) -> _Plan:
    fs, base = storage.filesystem(index_root(root))
    _, embeddings = storage.filesystem(storage.join(root, "embeddings"))
    plan = _Plan()
    versions = list_versions(root)
    plan.kept = _kept_versions(root, versions, keep, fallbacks)
    plan.dropped = [v for v in versions if v not in plan.kept]
    # Every complete manifest is read: kept ones for the files they reference, all of them for
    # the batches they list. An unreadable manifest stops the collection (raises).
    manifests = {v: IndexManifest.read(root, v) for v in versions}
    referenced = {posixpath.join(base, path) for v in plan.kept for path, _ in manifests[v].files()}
    listed = {b for m in manifests.values() for b in m.batches}

    def stale(path_time: float | None) -> bool:
        return path_time is not None and now - path_time > grace_seconds

    def remove_unreferenced(directory: str, files: dict[str, dict], kept_version: bool) -> None:
        """Plan the removal of the folder's unreferenced files (and of the folder, once empty);
        a kept version's folder keeps its JSON records and is never removed."""
        left = False
        for path, info in sorted(files.items()):
            if path in referenced:
                left = True
                if not kept_version:
                    plan.shared.append(path)
            elif _is_temp(path):
                if stale(_modified(fs, path)):
                    plan.temp.append(path)
                    plan.files[path] = int(info.get("size") or 0)
                else:
                    left = True
            elif kept_version and path.endswith(".json"):
                left = True
            else:
                plan.files[path] = int(info.get("size") or 0)
        if not left and not kept_version:
            plan.folders.append(directory)

    for name in storage.list_names(storage.join(root, "index")):
        path = posixpath.join(base, name)
        if name in (LATEST, LEDGER) or (name.startswith(".") and not name.startswith(TEMP_PREFIX)):
            continue
        if not fs.isdir(path):
            if _is_temp(path) and stale(_modified(fs, path)):  # e.g. .tmp-LATEST-…
                plan.temp.append(path)
                plan.files[path] = int(fs.size(path) or 0)
            continue
        files = _files(fs, path)
        if name in plan.kept:
            remove_unreferenced(path, files, kept_version=True)
        elif name in manifests:  # a dropped version
            manifest = posixpath.join(path, MANIFEST)
            plan.manifests.append(manifest)
            plan.files[manifest] = int(files.get(manifest, {}).get("size") or 0)
            remove_unreferenced(path, {p: i for p, i in files.items() if p != manifest},
                                kept_version=False)
        elif stale(_newest(fs, path, files)):  # no manifest: a killed run, or shared files
            if not any(p in referenced for p in files):
                plan.orphans.append(path)
            remove_unreferenced(path, files, kept_version=False)

    for path, info in sorted(_files(fs, embeddings).items()):
        if _is_temp(path) and stale(_modified(fs, path)):
            plan.temp.append(path)
            plan.files[path] = int(info.get("size") or 0)
    for area in ("embeddings", "rejected"):  # Beam temp folders of killed ingest runs
        _, top = storage.filesystem(storage.join(root, area))
        for batch in storage.list_names(storage.join(root, area)):
            for name in storage.list_names(storage.join(root, area, batch)):
                path = posixpath.join(top, batch, name)
                if not name.startswith(BEAM_TEMP_PREFIX) or not fs.isdir(path):
                    continue
                _plan_stale_folder(fs, plan, path, plan.temp, stale)
    if versions:  # with no version at all, no batch can be told apart from one not yet added
        for name in storage.list_names(storage.join(root, "embeddings")):
            path = posixpath.join(embeddings, name)
            if not name.startswith(ONLINE_PREFIX) or name in listed or not fs.isdir(path):
                continue
            _plan_stale_folder(fs, plan, path, plan.batches, stale)
    return plan


def _plan_stale_folder(fs, plan: "_Plan", path: str, into: list[str], stale) -> None:
    """Plan the removal of a whole leftover folder (listed in ``into``) once its newest file
    is older than the grace period."""
    files = _files(fs, path)
    if stale(_newest(fs, path, files)):
        into.append(path)
        plan.files.update({p: int(i.get("size") or 0) for p, i in files.items()})
        plan.folders.append(path)


def _apply(fs, plan: _Plan) -> None:
    """Remove in an order that is safe to stop at any point: dropped versions' manifests first
    (the versions become invisible), online batches' manifests next (no build includes them),
    then files, then the folders left empty (a folder where a file appeared meanwhile stays).
    A rerun finishes what a stopped one left."""
    batch_manifests = [posixpath.join(b, BATCH_MANIFEST) for b in plan.batches]
    for path in plan.manifests + [p for p in batch_manifests if p in plan.files]:
        if fs.exists(path):
            fs.rm(path)
    for path in plan.files:
        if fs.exists(path):
            fs.rm(path)
    for path in sorted(plan.folders, reverse=True):
        if fs.exists(path) and not _files(fs, path):
            fs.rm(path, recursive=True)  # only empty sub-folders are left in it


def run_gc(root: str, keep: int, grace_seconds: float = DEFAULT_GRACE_SECONDS,
           dry_run: bool = False, now: float | None = None,
           lock_timeout_s: float = 600.0, fallbacks: bool = True) -> dict:
    """Collect a memory's garbage (module docstring); with ``dry_run`` only report it.

    ``root``: the memory's ROOT (any fsspec URL); ``keep`` (>= 0): how many of the newest
    complete versions to keep besides LATEST, pinned and leased ones; ``grace_seconds``: how
    old a leftover (temp file, orphan folder, unlisted online batch, Beam temp folder) must
    be; ``now``: the
    clock ages are measured against (Unix seconds; default: now); ``fallbacks``: keep the
    fallback versions of LATEST and of each leased version (``history.fallback_ancestors``).

    Returns a JSON-ready report: ``versions_kept`` (version -> reasons), ``versions_removed``,
    ``files_removed`` (paths relative to ROOT), ``temp_files_removed``,
    ``orphan_folders_removed``, ``online_batches_removed``, ``folders_removed``,
    ``shared_files_kept`` (files of dropped folders a kept version reads), ``files_freed``,
    ``bytes_freed``. Raises ValueError on a negative ``keep`` or ``grace_seconds``,
    leases.WriterBusy when another writer holds the lock past ``lock_timeout_s``,
    RuntimeError when LATEST names a version without a manifest, layout.ConcurrentEdit when
    a writer on another machine committed while it planned, and what
    ``IndexManifest.read`` raises for an unreadable manifest (nothing is removed then), and
    FileNotFoundError, before taking the lock, when ``root`` holds no memory (neither
    ``index/`` nor ``embeddings/``: a mistyped path, where the lock would make ``index/``)."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, not {keep}")
    if grace_seconds < 0:
        raise ValueError(f"grace_seconds must be >= 0, not {grace_seconds}")
    if not (storage.exists(index_root(root)) or storage.exists(storage.join(root, "embeddings"))):
        raise FileNotFoundError(f"no memory under {root}: neither {index_root(root)} nor "
                                f"{storage.join(root, 'embeddings')} exists")
    started = time.monotonic()
    fs, base = storage.filesystem(root)
    with leases.writer_lock(root, timeout_s=lock_timeout_s):
        head = read_head(root)
        plan = _plan(root, keep, grace_seconds, time.time() if now is None else now, fallbacks)
        if not dry_run:
            if read_head(root) != head:  # a writer the lock does not reach (another machine)
                raise ConcurrentEdit(f"the memory moved from version {head.version} while gc "
                                     "planned: nothing removed; run it again")
            _apply(fs, plan)

    def rel(paths) -> list[str]:
        return sorted(posixpath.relpath(p, base.rstrip("/") or "/") for p in paths)

    report = {
        "root": root, "dry_run": dry_run, "keep": keep, "grace_seconds": grace_seconds,
        "versions_kept": plan.kept, "versions_removed": plan.dropped,
        "files_removed": rel(plan.files), "temp_files_removed": rel(plan.temp),
        "orphan_folders_removed": rel(plan.orphans), "online_batches_removed": rel(plan.batches),
        "folders_removed": rel(plan.folders), "shared_files_kept": rel(plan.shared),
        "files_freed": len(plan.files), "bytes_freed": sum(plan.files.values()),
        "seconds": round(time.monotonic() - started, 3),
    }
    return report


def summary(report: dict) -> str:
    """A short human-readable account of a ``run_gc`` report."""
    verb = "would remove" if report["dry_run"] else "removed"

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}" + ("" if n == 1 else "s")

    return (f"gc {report['root']}: kept {count(len(report['versions_kept']), 'version')} "
            f"({', '.join(report['versions_kept']) or 'none'}); {verb} "
            f"{count(len(report['versions_removed']), 'version')}, {report['files_freed']} files "
            f"({report['bytes_freed']} bytes) including {len(report['temp_files_removed'])} temp "
            f"files, {len(report['orphan_folders_removed'])} orphan folders and "
            f"{len(report['online_batches_removed'])} online batches; "
            f"{len(report['shared_files_kept'])} files of removed versions kept for newer ones")
