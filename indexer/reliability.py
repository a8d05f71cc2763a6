"""Memory pruning (method.md section 4): how often each item is a neighbour that disagrees
with the query's label, measured leave-one-out by querying the memory with its own items.

v_wrong(m) counts (query, neighbour slot) pairs within the query's top-K where m's label differs
from the query's label; v_correct where it agrees. Hard pruning deletes items with
v_wrong >= threshold; soft pruning weights each item by gamma = d / (c + v_wrong), 1 when 0.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from indexer.manifest import IndexManifest
from indexer.reader import Part, plan_inputs, read_part
from indexer.search import ShardedIndex

HARD_K, HARD_THRESHOLD = 100, 128  # method.md: K = 100, exclude v_wrong >= 128
SOFT_K, SOFT_C, SOFT_D = 10, 1.0, 1.75  # method.md: K = 10, gamma = 1.75 / (1 + v)
_LOADED: dict[tuple[str, str], ShardedIndex] = {}


def _index(root: str, manifest: IndexManifest) -> ShardedIndex:
    """One loaded copy per worker process, reused by every task it runs."""
    key = (root, manifest.version)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = ShardedIndex(root, manifest)
    return _LOADED[key]


def leave_one_out_neighbours(ids: np.ndarray, found: np.ndarray, k: int) -> np.ndarray:
    """Drop each query's own id from its k+1 neighbours; where it is absent, drop the last
    (as the reference code does) so every row keeps k entries."""
    own = found == ids[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(len(found)), drop] = False
    return found[keep].reshape(len(found), found.shape[1] - 1)[:, :k]


def count_part(root: str, manifest: IndexManifest, part: Part, k: int,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one part's items still in the memory: (neighbour ids, v_wrong, v_correct) counts."""
    index = _index(root, manifest)
    meta, vectors = read_part(part)
    ids = meta.column("id").to_numpy()
    labels = np.asarray(meta.column("label").to_pylist(), dtype=object)
    labelled = np.array([label is not None and label != "" for label in labels], dtype=bool)
    queries = index.contains(ids) & labelled  # items still in memory, with a label (null: none)
    ids, labels, vectors = ids[queries], labels[queries], vectors[queries]
    wrong: dict[int, int] = {}
    right: dict[int, int] = {}
    for start in range(0, len(ids), chunk):
        sl = slice(start, start + chunk)
        _, found = index.search(vectors[sl], k + 1)
        neighbours = leave_one_out_neighbours(ids[sl], found, k)
        neighbour_labels = index.lookup(neighbours, "label")
        valid = (neighbours >= 0) & (neighbour_labels != None)  # noqa: E711 (unlabelled: no vote)
        disagree = (neighbour_labels != labels[sl][:, None]) & valid
        for target, flags in ((wrong, disagree), (right, ~disagree & valid)):
            unique, counts = np.unique(neighbours[flags], return_counts=True)
            for item, count in zip(unique.tolist(), counts.tolist()):
                target[item] = target.get(item, 0) + count
    keys = np.array(sorted(set(wrong) | set(right)), dtype=np.int64)
    return (keys, np.array([wrong.get(i, 0) for i in keys.tolist()], dtype=np.int64),
            np.array([right.get(i, 0) for i in keys.tolist()], dtype=np.int64))


@dataclass
class Reliability:
    ids: np.ndarray  # every item in the memory, sorted
    v_wrong: np.ndarray
    v_correct: np.ndarray
    k: int
    seconds: float

    def soft_weights(self, c: float = SOFT_C, d: float = SOFT_D) -> np.ndarray:
        return np.where(self.v_wrong == 0, 1.0, d / (c + self.v_wrong)).astype(np.float64)


def measure(root: str, manifest: IndexManifest, k: int, executor) -> Reliability:
    """Leave-one-out counts for every item, one task per embedding part (Ray or local)."""
    started = time.monotonic()
    parts = plan_inputs(root, manifest.batches, manifest.encoder, manifest.dim).parts
    results = executor.get([executor.submit(count_part, root, manifest, part, k) for part in parts],
                           "reliability")
    all_ids = np.sort(ShardedIndex.ids_of(root, manifest))
    v_wrong = np.zeros(len(all_ids), dtype=np.int64)
    v_correct = np.zeros(len(all_ids), dtype=np.int64)
    for keys, wrong, right in results:
        rows = np.searchsorted(all_ids, keys)
        np.add.at(v_wrong, rows, wrong)
        np.add.at(v_correct, rows, right)
    return Reliability(all_ids, v_wrong, v_correct, k, time.monotonic() - started)
