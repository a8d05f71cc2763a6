"""Who may write and who is reading: the one-writer lock, replica leases and version pins.

**One writer.** Every edit of a memory (add, delete, compact, prune, rollback, gc) runs inside
``writer_lock(root)``: on a local or mounted filesystem an OS file lock (``filelock``) on
``ROOT/index/.writer.lock``, so the CLI, a scheduled ``vmem update`` and the serving writer
never interleave on one machine. Object stores have no portable lock through fsspec; there the
lock is process-local, and writers on different machines (the serving ``Writer``, a scheduled
``vmem update``) are ordered by the commit itself (indexer/layout.py): of two edits made from
the same version only the first to commit lands, the other raises ConcurrentEdit having
committed nothing (its caller runs it again; the serving API answers 503 + Retry-After).

**Replica leases.** Each serving router replica renews ``ROOT/index/.leases/<holder>.json``
(``{holder, version, expires}``) when it switches version and every ``ttl/3`` seconds. A
replica whose lease could lapse re-reads ``LATEST`` before it answers, so after
``wait_until_served`` returns, no replica answers from an older version: the writer uses this
to return from a delete only once every serving replica has stopped returning the items
(strong forgetting). Garbage collection keeps every version a live lease names.

**Pins.** ``ROOT/index/.pins/<version>`` keeps a version (and its files) from collection.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

from indexer.layout import index_root, read_latest
from pipelines import storage

LEASES, PINS, LOCK = ".leases", ".pins", ".writer.lock"
_local_locks: dict[str, threading.Lock] = {}


class WriterBusy(TimeoutError):
    """Another writer holds the memory's lock past the timeout."""


@contextlib.contextmanager
def writer_lock(root: str, timeout_s: float = 600.0):
    """Hold the memory's single-writer lock. Raises WriterBusy after ``timeout_s``."""
    if storage.is_local(root):
        import filelock

        fs, path = storage.filesystem(index_root(root))
        fs.makedirs(path, exist_ok=True)
        lock = filelock.FileLock(os.path.join(path, LOCK))
        try:
            lock.acquire(timeout=timeout_s)
        except filelock.Timeout as error:
            raise WriterBusy(f"another writer holds {path}/{LOCK} (waited {timeout_s:.0f} s)") from error
        try:
            yield
        finally:
            lock.release()
        return
    lock = _local_locks.setdefault(root, threading.Lock())
    if not lock.acquire(timeout=timeout_s):
        raise WriterBusy(f"another edit of {root} is running (waited {timeout_s:.0f} s)")
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def edit_lock(root: str, timeout_s: float = 600.0):
    """``writer_lock`` for an edit of a published index (add, delete, compact, weights,
    rollback): raises FileNotFoundError when ``root`` has no LATEST (nothing built, or a
    mistyped path) before the lock is taken, so no ``ROOT/index/.writer.lock`` is made for a
    memory that does not exist."""
    if read_latest(root) is None:
        raise FileNotFoundError(f"no index under {index_root(root)} (run `vmem index build`)")
    with writer_lock(root, timeout_s):
        yield


def _lease_url(root: str, holder: str) -> str:
    return storage.join(index_root(root), LEASES, f"{holder}.json")


def renew_lease(root: str, holder: str, version: str, ttl_s: float) -> None:
    """Record that ``holder`` serves ``version`` until now + ``ttl_s`` (Unix time)."""
    storage.write_json_atomic(_lease_url(root, holder), {
        "holder": holder, "version": version, "expires": time.time() + ttl_s})


def drop_lease(root: str, holder: str) -> None:
    storage.remove(_lease_url(root, holder))


def live_leases(root: str, now: float | None = None) -> dict[str, str]:
    """holder -> version of every unexpired lease (expired ones are ignored, not removed)."""
    now = time.time() if now is None else now
    out = {}
    base = storage.join(index_root(root), LEASES)
    for name in storage.list_names(base):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            lease = storage.read_json(storage.join(base, name))
        except (FileNotFoundError, ValueError):  # renamed over or removed while listing
            continue
        if lease.get("expires", 0) > now:
            out[lease["holder"]] = lease["version"]
    return out


def wait_until_served(root: str, version: str, timeout_s: float, poll_s: float = 0.01) -> dict:
    """Wait until every live lease serves ``version`` or newer (version names sort by
    creation), or ``timeout_s`` passes. Returns {"served": n, "replicas": m, "seconds": s,
    "lagging": [holders]}; lagging is empty when every replica serves it."""
    started = time.monotonic()
    while True:
        leases = live_leases(root)
        lagging = sorted(h for h, v in leases.items() if v < version)
        if not lagging or time.monotonic() - started >= timeout_s:
            return {"served": len(leases) - len(lagging), "replicas": len(leases),
                    "seconds": round(time.monotonic() - started, 3), "lagging": lagging}
        time.sleep(poll_s)


def pin(root: str, version: str) -> None:
    storage.write_json_atomic(storage.join(index_root(root), PINS, version), {"version": version})


def unpin(root: str, version: str) -> None:
    storage.remove(storage.join(index_root(root), PINS, version))


def pinned(root: str) -> set[str]:
    return {n for n in storage.list_names(storage.join(index_root(root), PINS)) if not n.startswith(".")}
