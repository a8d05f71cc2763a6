"""Search one shard (with optional exact re-ranking) and merge shard answers into one top-k.

numpy in, numpy out. Scores are inner products of unit vectors (cosine similarity); missing
results are id -1 with score -inf, as FAISS reports them.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from indexer.manifest import IndexManifest, ShardEntry
from indexer.store import load_index, load_metadata, load_vectors

RERANK_FACTOR = 4  # PQ candidates fetched per requested neighbour when re-ranking exactly


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe:
        ivf.nprobe = int(nprobe)


def topk_order(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Column order of the k best (score, id) per row: score descending, ties by id ascending,
    missing results (id -1) last. The order one index over the union of shards would give."""
    scores = np.where(ids < 0, -np.inf, scores)
    return np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]


def merge_topk(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best (score, id) over all shards' answers."""
    all_scores, all_ids = np.concatenate(scores, axis=1), np.concatenate(ids, axis=1)
    order = topk_order(all_scores, all_ids, k)
    merged_ids = np.take_along_axis(all_ids, order, axis=1)
    merged_scores = np.where(merged_ids < 0, -np.inf, np.take_along_axis(all_scores, order, axis=1))
    return merged_scores, merged_ids


@dataclass
class ShardSearcher:
    """One loaded shard: the FAISS index, its metadata (sorted by id) and, optionally, the
    stored vectors for exact re-ranking of PQ candidates."""

    entry: ShardEntry
    index: faiss.Index
    meta: pa.Table
    vectors: np.ndarray | None
    nprobe: int = 0

    @classmethod
    def load(cls, root: str, manifest: IndexManifest, shard: int, verify: bool = True,
             mmap: bool = True) -> "ShardSearcher":
        entry = manifest.shards[shard]
        searcher = cls(entry, load_index(root, entry, verify, mmap), load_metadata(root, entry, verify),
                       load_vectors(root, entry, verify), manifest.search_defaults.get("nprobe", 0))
        set_nprobe(searcher.index, searcher.nprobe)
        return searcher

    def __post_init__(self) -> None:
        self._columns: dict[str, np.ndarray] = {}

    @property
    def ids(self) -> np.ndarray:
        return self.column("id")

    def column(self, name: str) -> np.ndarray:
        """A metadata column as a numpy array, converted once (strings become objects)."""
        if name not in self._columns:
            values = self.meta.column(name).to_numpy(zero_copy_only=False)
            self._columns[name] = values if values.dtype != object else np.asarray(values, dtype=object)
        return self._columns[name]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Metadata row of each id (-1 where the shard does not hold it)."""
        sorted_ids = self.ids
        if len(sorted_ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        rows = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[rows] == ids, rows, -1)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 vectors of stored ids: the kept full-precision vectors, else
        the index's own reconstruction (exact for Flat, approximate for PQ); zeros for id -1."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros((len(ids), self.index.d), dtype=np.float32)
        rows = self.rows_of(ids)
        hit = rows >= 0
        if self.vectors is not None:
            out[hit] = self.vectors[rows[hit]].astype(np.float32)
            return out
        try:
            out[hit] = self.index.reconstruct_batch(ids[hit])
        except RuntimeError as error:
            raise ValueError(f"shard {self.entry.shard} cannot return vectors ({error}); build the "
                             "index with --keep-vectors fp16|fp32") from error
        return out

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               rerank: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if nprobe:
            set_nprobe(self.index, nprobe)
        rerank = self.vectors is not None if rerank is None else rerank and self.vectors is not None
        fetch = min(k * RERANK_FACTOR, max(self.index.ntotal, 1)) if rerank else k
        scores, ids = self.index.search(queries, max(fetch, 1))
        if nprobe:
            set_nprobe(self.index, self.nprobe)
        if rerank:
            scores, ids = self._rerank(queries, ids, k)
        return _pad(scores[:, :k], ids[:, :k], k)

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows_of(ids.reshape(-1)).reshape(ids.shape)
        candidates = self.vectors[np.maximum(rows, 0)].astype(np.float32)
        exact = np.einsum("qkd,qd->qk", candidates, queries)
        exact = np.where(rows >= 0, exact, -np.inf)
        order = topk_order(exact, ids, k)
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] >= k:
        return scores, ids
    extra = k - scores.shape[1]
    return (np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, extra)), constant_values=-1))


class ShardedIndex:
    """Every shard of a version in this process: for batch jobs, pruning and tests. Serving
    puts each ShardSearcher in its own deployment and merges with the same merge_topk."""

    def __init__(self, root: str, manifest: IndexManifest, verify: bool = True, mmap: bool = True):
        self.manifest = manifest
        self.shards = [ShardSearcher.load(root, manifest, s, verify, mmap)
                       for s in range(manifest.num_shards)]

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               rerank: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        answers = [shard.search(queries, k, nprobe, rerank) for shard in self.shards]
        return merge_topk([a[0] for a in answers], [a[1] for a in answers], k)

    @staticmethod
    def ids_of(root: str, manifest: IndexManifest) -> np.ndarray:
        """Every id in a version, from its metadata files alone (no index loaded)."""
        from indexer.store import load_metadata

        return np.concatenate([load_metadata(root, e).column("id").to_numpy()
                               for e in manifest.shards])

    def metadata(self) -> pa.Table:
        return pa.concat_tables([shard.meta for shard in self.shards])

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = np.zeros(ids.shape, dtype=bool)
        for shard in self.shards:
            found |= shard.rows_of(ids) >= 0
        return found

    def lookup(self, ids: np.ndarray, column: str) -> np.ndarray:
        """A metadata column for each id (None where no shard holds it)."""
        flat = ids.reshape(-1)
        out = np.full(flat.shape, None, dtype=object)
        for shard in self.shards:
            rows = shard.rows_of(flat)
            hit = rows >= 0
            if hit.any():
                out[hit] = shard.column(column)[rows[hit]]
        return out.reshape(ids.shape)
