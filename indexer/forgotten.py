"""The forget ledger: ids deleted by unlearning stay deleted, even across rebuilds.

A delete removes items from every shard file of the new version, but their rows remain in the
embedding batches (boundary 1), and a later ``build`` or ``add`` reads those batches. Each
unlearning delete therefore records its ids in ``ROOT/index/forgotten/<version>.json`` (one
immutable file per delete: no read-modify-write between concurrent writers), and the reader
drops every recorded id from every part it reads.
"""
from __future__ import annotations

import numpy as np

from indexer.layout import index_root
from pipelines import storage

LEDGER = "forgotten"


def ledger_dir(root: str) -> str:
    return storage.join(index_root(root), LEDGER)


def record_forgotten(root: str, version: str, ids: np.ndarray) -> str:
    url = storage.join(ledger_dir(root), f"{version}.json")
    storage.write_json_atomic(url, {"version": version, "ids": sorted(int(i) for i in ids)})
    return url


class ForgottenIds(ValueError):
    """New rows whose ids the memory has unlearned: deletions are permanent (a rebuild or a
    rollback would drop them again), so such an item must come back under a new key."""


# (ledger folder, file name) -> its ids (sorted int64); ledger folder -> (the file names, their
# union). Ledger files are immutable (one per delete, named by its version's unique name), so
# each is read once per process and the union is rebuilt only when the listing changes.
_read: dict[tuple[str, str], np.ndarray] = {}
_union: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}


def forgotten_ids(root: str) -> np.ndarray:
    """Every id any unlearning delete of this memory removed (sorted, unique int64). Lists
    the ledger once; reads only the files this process has not read before."""
    folder = ledger_dir(root)
    names = tuple(sorted(n for n in storage.list_names(folder) if n.endswith(".json")))
    cached = _union.get(folder)
    if cached is not None and cached[0] == names:
        return cached[1]
    for name in names:
        if (folder, name) not in _read:
            ids = storage.read_json(storage.join(folder, name))["ids"]
            _read[(folder, name)] = np.asarray(ids, dtype=np.int64)
    union = (np.unique(np.concatenate([_read[(folder, n)] for n in names])) if names
             else np.empty(0, np.int64))
    union.setflags(write=False)
    _union[folder] = (names, union)
    return union


def refuse_forgotten(root: str, ids: np.ndarray, what: str) -> None:
    """Raise ForgottenIds when any of ``ids`` (int64) is in the forget ledger."""
    back = np.intersect1d(np.asarray(ids, dtype=np.int64), forgotten_ids(root))
    if len(back):
        raise ForgottenIds(f"{len(back)} ids of {what} were unlearned (e.g. {back[:5].tolist()}); "
                           "deletions are permanent: add such an item under a new key")
