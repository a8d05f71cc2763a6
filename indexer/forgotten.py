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


def forgotten_ids(root: str) -> np.ndarray:
    """Every id any unlearning delete of this memory removed (sorted, unique)."""
    ids = [storage.read_json(storage.join(ledger_dir(root), name))["ids"]
           for name in storage.list_names(ledger_dir(root)) if name.endswith(".json")]
    return np.unique(np.asarray([i for chunk in ids for i in chunk], dtype=np.int64))
