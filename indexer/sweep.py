"""Tuning's searches over a version too large to open in one process: one task per shard.

A build tunes nprobe on the built shards (indexer.tuning). Searched in the driver
(``ShardedIndex``), every shard of the version is opened there: at a billion vectors that is
tens of GB of codes and metadata mapped into one process, and copied to its disk first when
the memory is remote. Swept instead, each task opens one shard (``ShardSearcher.load``:
verified, memory-mapped) and searches the tuning queries at every candidate setting
(``tuning.candidates``); the driver folds the shards' answers per candidate as the tasks
finish (``merge_topk``, the serving merge), so it holds candidates x queries x k answers and
no shard. ``tune`` then reads its searches from those answers and decides exactly as it does
on ``ShardedIndex`` (same answers, same order of candidates). The price is the searches
past the point where the sweep stops on a plateau, which a task cannot know in advance.
"""
from __future__ import annotations

import numpy as np

from indexer.factory import nlist_of
from indexer.manifest import IndexManifest
from indexer.search import SearchParams, ShardSearcher, merge_topk
from indexer.tuning import candidates


def sweep_shard(root: str, manifest: IndexManifest, shard: int, queries: np.ndarray, k: int,
                settings: list[SearchParams]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shard ``shard``'s answers to (n, d) float32 ``queries`` at each of ``settings``: one
    ((n, k) float32 scores, (n, k) int64 ids) per setting, as ``ShardSearcher.search`` gives
    them (tie-complete, score then id). Opens the shard once. Raises ChecksumMismatch."""
    searcher = ShardSearcher.load(root, manifest, shard)
    return [searcher.search(queries, k, params) for params in settings]


class SweptIndex:
    """A version's answers to the tuning queries at every candidate setting, searched one
    task per shard on ``executor`` (indexer.executor) and merged here; ``search`` returns
    them for ``tune``. ``queries``: (n, d) float32; ``k``: the depth tune searches at
    (``max(tuning_ks) + 1``)."""

    def __init__(self, executor, root: str, manifest: IndexManifest, queries: np.ndarray, k: int,
                 max_nprobe_fraction: float = 0.125) -> None:
        self.nlist = nlist_of(manifest.factory)
        self.reranks = bool(manifest.search_defaults.get("rerank", False))
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        settings = candidates(self.nlist, self.reranks, max_nprobe_fraction)
        queries_ref = executor.put(self.queries)
        handles = [executor.submit(sweep_shard, root, manifest, shard, queries_ref, k, settings)
                   for shard in range(manifest.num_shards)]
        merged: list[tuple[np.ndarray, np.ndarray]] | None = None
        for _, answers in executor.as_completed(handles, "tuning (one task a shard)"):
            merged = answers if merged is None else [
                merge_topk([mine[0], theirs[0]], [mine[1], theirs[1]], k)
                for mine, theirs in zip(merged, answers)]
        self.answers = dict(zip(settings, merged or []))

    def search(self, queries: np.ndarray, k: int, params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
        """The merged answers at ``params``. Raises ValueError for other queries, another k
        or a setting that was not swept."""
        if k != self.k or not np.array_equal(np.asarray(queries, dtype=np.float32), self.queries):
            raise ValueError(f"swept for the tuning queries at k = {self.k}; asked for k = {k} "
                             "or other queries")
        if params not in self.answers:
            raise ValueError(f"{params} was not swept")
        return self.answers[params]
