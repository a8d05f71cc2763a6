"""Where index versions live (``ROOT/index/<version>/``) and which one is the memory's.

**Which version is LATEST: one successor per generation.** Publishing a version is a commit
in the manner of Delta Lake's log on object stores: generation g + 1 is claimed by creating
``ROOT/index/.commits/<g + 1>.json`` (``{version, parent}``) with a put-if-absent
(``storage.create_exclusive``), so of two writers that started from the same head only the
first to claim commits; the other gets ConcurrentEdit and has committed nothing. This holds
across machines on an object store, where the writer lock (indexer/leases.py) cannot reach.
``ROOT/index/LATEST`` (``{version, generation}``), written after the claim, is a hint: a
reader starts there and follows the claims after its generation (``read_head``), so a writer
killed between its claim and the hint, or a hint written late by a slow writer, never shows a
reader an older version than the newest committed one. A writer that commits without claims
(this project before the protocol) would be passed over by readers: upgrade every writer of a
memory together.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pipelines import storage

log = logging.getLogger("vmem.index")
LATEST = "LATEST"
MANIFEST = "manifest.json"
COMMITS = ".commits"
SET_LATEST_ATTEMPTS = 100


class ConcurrentEdit(RuntimeError):
    """Another writer committed a successor of this edit's parent first (or while it ran):
    nothing was committed; run the edit again on the new LATEST."""


@dataclass(frozen=True)
class Head:
    """The memory's current version (None: nothing published) and its commit generation."""

    version: str | None
    generation: int


def index_root(root: str) -> str:
    return storage.join(root, "index")


def version_dir(root: str, version: str) -> str:
    return storage.join(index_root(root), version)


# Every version name (a request naming a version is checked against it first, so a name from
# outside never becomes a path): UTC time to the millisecond, then '-' and 6 hex digits. Names
# written before 2026-12-02 may carry further '~' + 6 hex digits (a child of a parent named in
# the same millisecond, or after the clock stepped back); they stay valid.
VERSION_PATTERN = r"^[0-9]{8}T[0-9]{9}(?:[-~][0-9a-f]{6}){1,32}$"
_STAMP = "%Y%m%dT%H%M%S%f"


def new_version_name(after: str | None = None) -> str:
    """Sortable by creation time, unique across concurrent writers, and greater than
    ``after`` (the parent) even if the clock stepped back: clients compare versions by name
    (``min_version``), so a child must sort after its parent. When the clock reads no later
    than the parent's time, the child takes the parent's time plus 1 ms (so a name never grows
    and always matches VERSION_PATTERN)."""
    now = datetime.now(timezone.utc)
    name = now.strftime(_STAMP)[:-3] + "-" + uuid.uuid4().hex[:6]
    if after and name <= after:
        parent = datetime.strptime(after[:18], _STAMP)  # its millisecond stamp
        name = (parent + timedelta(milliseconds=1)).strftime(_STAMP)[:-3] + "-" + uuid.uuid4().hex[:6]
    return name


def _claim_url(root: str, generation: int) -> str:
    return storage.join(index_root(root), COMMITS, f"{generation:020d}.json")


def read_head(root: str) -> Head:
    """The newest committed version: LATEST's, then each claimed generation after it. A LATEST
    written before generations existed reads as generation 0."""
    pointer = storage.read_json_if_exists(storage.join(index_root(root), LATEST))
    head = Head(pointer["version"], int(pointer.get("generation", 0))) if pointer else Head(None, 0)
    while (claim := storage.read_json_if_exists(_claim_url(root, head.generation + 1))) is not None:
        head = Head(claim["version"], head.generation + 1)
    return head


def read_latest(root: str) -> str | None:
    """The memory's current version (``read_head``), None before the first publish."""
    return read_head(root).version


def commit_latest(root: str, version: str, parent: str | None) -> Head:
    """Publish ``version`` (its manifest already written) as the successor of ``parent``,
    which must still be the head: the commit point of every build and edit. Raises
    ConcurrentEdit when the head has moved on, or another writer claims the same generation
    first; nothing is committed then."""
    head = read_head(root)
    if head.version != parent:
        raise ConcurrentEdit(f"the memory moved to version {head.version} while this edit of "
                             f"{parent} ran: nothing committed; run it again")
    return _claim(root, head, version)


def set_latest(root: str, version: str) -> Head:
    """Point LATEST at ``version`` whatever it points to now (tooling and experiments that
    move it by hand), as a commit after the current head, retried while other writers commit
    first. Raises ConcurrentEdit after SET_LATEST_ATTEMPTS lost races."""
    for _ in range(SET_LATEST_ATTEMPTS):
        try:
            return _claim(root, read_head(root), version)
        except ConcurrentEdit:
            continue
    raise ConcurrentEdit(f"could not point LATEST at {version}: {SET_LATEST_ATTEMPTS} commits "
                         "by other writers came first")


def _claim(root: str, head: Head, version: str) -> Head:
    """Claim generation head + 1 for ``version``, then write the LATEST hint (atomic)."""
    new = Head(version, head.generation + 1)
    record = {"version": version, "parent": head.version,
              "created": datetime.now(timezone.utc).isoformat()}
    url = _claim_url(root, new.generation)
    try:
        storage.create_exclusive(url, (json.dumps(record, sort_keys=True) + "\n").encode())
    except FileExistsError as error:
        # a driver that retried a create whose first try landed (its answer lost) finds its
        # own claim: version names are unique, so the claim says whose it is
        if (storage.read_json_if_exists(url) or {}).get("version") != version:
            raise ConcurrentEdit(f"another writer committed generation {new.generation} first "
                                 f"(after version {head.version}): nothing committed; run it "
                                 "again") from error
    try:  # committed: the claim is the commit, LATEST only saves readers a step
        storage.write_json_atomic(storage.join(index_root(root), LATEST),
                                  {"version": version, "generation": new.generation})
    except Exception as error:  # noqa: BLE001 - the commit stands whatever the hint's fate
        log.warning("version %s is committed (generation %d) but the LATEST hint was not "
                    "written (%s): readers follow the commit record instead", version,
                    new.generation, error)
    return new


def list_versions(root: str) -> list[str]:
    """Complete versions (those with a manifest), oldest first; partial builds are invisible."""
    base = index_root(root)
    return [name for name in storage.list_names(base)
            if name != LATEST and not name.startswith(".")
            and storage.exists(storage.join(base, name, MANIFEST))]
