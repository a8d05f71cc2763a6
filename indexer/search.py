"""Search one shard (with optional exact re-ranking) and merge shard answers into one top-k.

numpy in, numpy out. Scores are inner products of unit vectors (cosine similarity); missing
results are id -1 with score -inf, as FAISS reports them.

Determinism: the order of results is total — score descending, then id ascending — and the
same whatever the shard count. FAISS gives no order among equal scores and cuts a tie group
at k (facebookresearch/faiss#1201), so a shard fetches past its k-th result until the tie
group ends, and only then sorts and truncates. Hence the top-k for k is a prefix of the top-k
for k + 1, and S shards merged give what one index over their union gives.

Concurrency: per-request search parameters go to FAISS per call (``SearchParametersIVF``,
faiss wiki "Setting search parameters for one query"), never into the shared index, so
concurrent requests with different ``nprobe`` cannot see each other's settings.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from indexer.halffloat import to_float32
from indexer.manifest import IndexManifest, SegmentEntry, ShardEntry, TombstoneEntry
from indexer.metadata import ShardMetadata, with_weights
from indexer.quantizer import is_stripped
from indexer.store import load_index, load_metadata, load_tombstones, load_vectors

K_FACTOR = 4  # PQ candidates per requested neighbour when re-ranking exactly (default)
RERANK_FLOOR = 100  # re-rank at least K_FACTOR * 100 candidates: k <= 100 share one candidate set


@dataclass(frozen=True)
class SearchParams:
    """Per-call search parameters; 0 / None mean the version's recorded default.

    ``nprobe``: IVF lists visited (1 ... nlist). ``rerank``: re-rank PQ candidates exactly
    with the stored vectors. ``k_factor``: candidates per neighbour for that re-rank."""

    nprobe: int = 0
    rerank: bool | None = None
    k_factor: int = 0

    def resolved(self, defaults: "SearchParams") -> "SearchParams":
        return SearchParams(self.nprobe or defaults.nprobe,
                            defaults.rerank if self.rerank is None else self.rerank,
                            self.k_factor or defaults.k_factor or K_FACTOR)

    @classmethod
    def from_manifest(cls, manifest: IndexManifest) -> "SearchParams":
        defaults = manifest.search_defaults
        return cls(int(defaults.get("nprobe", 0) or 0), bool(defaults.get("rerank", False)),
                   int(defaults.get("k_factor", K_FACTOR) or K_FACTOR))


def nlist_of_index(index: faiss.Index) -> int:
    """IVF lists of an index (0 when it is not an IVF index)."""
    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else 0


def faiss_params(index: faiss.Index, nprobe: int,
                 selector: faiss.IDSelector | None = None) -> faiss.SearchParameters | None:
    """FAISS per-call parameters that set ``nprobe`` on the IVF level of ``index`` (through
    an OPQ/PCA pre-transform) and restrict the search to ``selector``'s ids (tombstones: faiss
    wiki "Setting search parameters for one query", IDSelector), or None when there is nothing
    to set. Raises ValueError for an nprobe outside 1 ... nlist."""
    nlist = nlist_of_index(index)
    if nlist and nprobe and not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe must be between 1 and nlist={nlist}, not {nprobe}")
    if not (nlist and nprobe) and selector is None:
        return None
    if not nlist:
        if isinstance(index, faiss.IndexPreTransform):
            inner = faiss.SearchParameters(sel=selector)
            outer = faiss.SearchParametersPreTransform(index_params=inner)
            outer.referenced = (inner, selector)
            return outer
        params = faiss.SearchParameters(sel=selector)
        params.referenced = selector
        return params
    ivf_params = faiss.SearchParametersIVF(nprobe=int(nprobe or faiss.extract_index_ivf(index).nprobe))
    if selector is not None:
        ivf_params.sel = selector
        ivf_params.referenced = selector
    if isinstance(index, faiss.IndexPreTransform):
        outer = faiss.SearchParametersPreTransform(index_params=ivf_params)
        outer.referenced = ivf_params  # keep the inner object alive with the outer one
        return outer
    return ivf_params


def topk_order(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Column order of the k best (score, id) per row: score descending, ties by id ascending,
    missing results (id -1) last. The order one index over the union of shards would give."""
    scores = np.where(ids < 0, -np.inf, scores)
    return np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]


def take_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, id) per row in ``topk_order``, padded with (-inf, -1) to width k."""
    order = topk_order(scores, ids, k)
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.where(ids < 0, -np.inf, np.take_along_axis(scores, order, axis=1))
    return _pad(scores, ids, k)


def merge_topk(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best (score, id) over all shards' answers."""
    return take_topk(np.concatenate(scores, axis=1), np.concatenate(ids, axis=1), k)


def search_with_ties(index: faiss.Index, queries: np.ndarray, k: int,
                     params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FAISS top-k of each query, extended past the k-th result while scores equal it, then
    ordered by (score desc, id asc). Returns (n, >= k) arrays; rows padded with (-inf, -1)."""
    n = len(queries)
    fetch = min(k + 1, max(index.ntotal, 1))
    scores, ids = index.search(queries, fetch, params=params)
    if not _tied(scores, ids, k, fetch, index.ntotal).any():  # the usual case: one call
        order = topk_order(scores, ids, fetch)
        ids = np.take_along_axis(ids, order, axis=1)
        return np.where(ids < 0, -np.inf, np.take_along_axis(scores, order, axis=1)), ids
    pending = np.arange(n)
    out_scores, out_ids = [None] * n, [None] * n
    while True:
        tied = _tied(scores, ids, k, fetch, index.ntotal)
        for local in np.flatnonzero(~tied):
            out_scores[pending[local]], out_ids[pending[local]] = scores[local], ids[local]
        if not tied.any():
            break
        pending = pending[tied]
        fetch = min(fetch * 2, index.ntotal)
        scores, ids = index.search(np.ascontiguousarray(queries[pending]), fetch, params=params)
    width = max(max(len(row) for row in out_ids), k)
    all_scores = np.full((n, width), -np.inf, dtype=np.float32)
    all_ids = np.full((n, width), -1, dtype=np.int64)
    for row in range(n):
        all_scores[row, :len(out_scores[row])] = out_scores[row]
        all_ids[row, :len(out_ids[row])] = out_ids[row]
    order = topk_order(all_scores, all_ids, width)
    all_ids = np.take_along_axis(all_ids, order, axis=1)
    return np.where(all_ids < 0, -np.inf, np.take_along_axis(all_scores, order, axis=1)), all_ids


def _tied(scores: np.ndarray, ids: np.ndarray, k: int, fetch: int, ntotal: int) -> np.ndarray:
    """Rows whose last fetched result still ties the k-th: their tie group may go on."""
    kth = min(k, fetch) - 1
    return (ids[:, -1] >= 0) & (scores[:, -1] == scores[:, kth]) & (fetch < ntotal)


class SegmentSearcher:
    """One loaded segment: the FAISS index (memory-mapped), its metadata (memory-mapped Arrow,
    sorted by id) and, optionally, the stored vectors (memory-mapped) for exact re-ranking of
    PQ candidates; ``hidden`` (sorted int64) are its tombstoned ids, excluded from every
    search by a FAISS ID selector and from every lookup. Safe to share between threads:
    searching mutates nothing."""

    def __init__(self, entry: SegmentEntry | ShardEntry, index: faiss.Index, meta: pa.Table,
                 vectors: np.ndarray | None, defaults: SearchParams = SearchParams(),
                 hidden: np.ndarray | None = None) -> None:
        self.entry, self.index, self.vectors = entry, index, vectors
        self.metadata = ShardMetadata(meta)
        self.defaults = defaults
        self.nlist = nlist_of_index(index)
        self.hidden = np.empty(0, np.int64) if hidden is None else np.asarray(hidden, np.int64)
        self.selector = None
        if len(self.hidden):  # IDSelectorBatch copies the ids into its own hash set
            self.selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.hidden))

    @classmethod
    def load(cls, root: str, entry: SegmentEntry | ShardEntry, defaults: SearchParams,
             verify: bool = True, mmap: bool = True,
             manifest: IndexManifest | None = None) -> "SegmentSearcher":
        """Verify, then memory-map one segment of ``manifest``'s version (whose trained index
        gives a stripped segment its coarse quantizer). Raises ChecksumMismatch, ValueError
        for a stripped segment without a manifest that names a trained index."""
        index = load_index(root, entry, verify, mmap, manifest)
        if is_stripped(index):
            raise ValueError(f"segment {entry.index_path} has no coarse quantizer and its "
                             "version names no trained index")
        return cls(entry, index, load_metadata(root, entry, verify),
                   load_vectors(root, entry, verify), defaults)

    def with_hidden(self, hidden: np.ndarray) -> "SegmentSearcher":
        """The same loaded files with another tombstone set (no file is read again)."""
        view = SegmentSearcher.__new__(SegmentSearcher)
        view.__dict__.update(self.__dict__)
        view.hidden = np.asarray(hidden, np.int64)
        view.selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(view.hidden)) if len(hidden) else None
        return view

    @property
    def meta(self) -> pa.Table:
        return self.metadata.table

    @property
    def ids(self) -> np.ndarray:
        return self.metadata.ids

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Metadata row of each id (-1 where the segment does not serve it: absent or hidden)."""
        rows = self.metadata.rows_of(ids)
        if len(self.hidden):
            flat = np.asarray(ids, dtype=np.int64)
            at = np.minimum(np.searchsorted(self.hidden, flat), len(self.hidden) - 1)
            rows = np.where(self.hidden[at] == flat, -1, rows)
        return rows

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 vectors of stored ids: the kept full-precision vectors, else
        the index's own reconstruction (exact for Flat, approximate for PQ); zeros for id -1.
        Raises ValueError when the index cannot reconstruct and no vectors are kept."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros((len(ids), self.index.d), dtype=np.float32)
        rows = self.rows_of(ids)
        hit = rows >= 0
        if self.vectors is not None:
            out[hit] = self._rows(rows[hit])
            return out
        try:
            out[hit] = self.index.reconstruct_batch(ids[hit])
        except RuntimeError as error:
            raise ValueError(f"{self.entry.index_path} cannot return vectors ({error}); build the "
                             "index with --keep-vectors fp16|fp32") from error
        return out

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors at ``rows`` as float32, read in row order (sequential page access)
        and converted with ``indexer.halffloat`` (exact, ~5x numpy's float16 cast)."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.vectors.shape[1]), dtype=np.float32)
        out[order] = to_float32(np.take(self.vectors, rows[order], axis=0))
        return out

    def search(self, queries: np.ndarray, k: int, params: SearchParams | int | None = None,
               rerank: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float32 unit queries -> (n, k) scores and ids in (score desc, id asc) order.

        ``params``: per-call SearchParams (an int is read as nprobe, for older callers).
        Raises ValueError for an nprobe outside 1 ... nlist."""
        if not isinstance(params, SearchParams):
            params = SearchParams(nprobe=int(params or 0), rerank=rerank)
        elif rerank is not None:
            params = SearchParams(params.nprobe, rerank, params.k_factor)
        params = params.resolved(self.defaults)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if params.rerank and self.vectors is not None:
            candidates = params.k_factor * max(k, RERANK_FLOOR)
            scores, ids = self._live_topk(queries, candidates, params.nprobe)
            return self._rerank(queries, ids, k)
        scores, ids = self._live_topk(queries, k, params.nprobe)
        return _pad(scores[:, :k], ids[:, :k], k)

    def _live_topk(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Tie-complete top-k of the live items. With tombstones: over-fetch by the hidden
        fraction (plus a margin) without a selector, drop hidden ids (binary search on the
        sorted tombstones), and re-search only the rows left with fewer than k live results,
        with the FAISS ID selector. Exact either way: the kept rows hold a tie-complete prefix
        of the live ranking at least k long. (A selector on every search costs a hash lookup
        per scanned code: 5x slower at 1M tombstones in bench/edit.py.)"""
        if not len(self.hidden):
            return search_with_ties(self.index, queries, k, faiss_params(self.index, nprobe))
        fraction = min(len(self.hidden) / max(self.index.ntotal, 1), 0.95)
        fetch = int(np.ceil(k / (1.0 - fraction) * 1.2)) + 8
        scores, ids = search_with_ties(self.index, queries, fetch, faiss_params(self.index, nprobe))
        at = np.minimum(np.searchsorted(self.hidden, ids), len(self.hidden) - 1)
        dead = (self.hidden[at] == ids) & (ids >= 0)
        exhausted = (ids < 0).any(axis=1)  # fewer results than asked: every live one is here
        short = ((ids >= 0) & ~dead).sum(axis=1) < k
        ids = np.where(dead, -1, ids)
        order = topk_order(np.where(dead, -np.inf, scores), ids, ids.shape[1])
        ids = np.take_along_axis(ids, order, axis=1)
        scores = np.where(ids < 0, -np.inf, np.take_along_axis(scores, order, axis=1))
        redo = np.flatnonzero(short & ~exhausted)
        if len(redo):
            again = search_with_ties(self.index, np.ascontiguousarray(queries[redo]), k,
                                     faiss_params(self.index, nprobe, self.selector))
            width = max(ids.shape[1], again[1].shape[1])
            scores, ids = _widen(scores, width), _widen_ids(ids, width)
            scores[redo], ids[redo] = _widen(again[0], width), _widen_ids(again[1], width)
        return scores, ids

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows_of(ids)
        hit = rows >= 0
        exact = np.full(ids.shape, -np.inf, dtype=np.float32)
        which = np.nonzero(hit)  # (query, candidate) of every stored candidate
        vectors = self._rows(rows[which])
        exact[which] = np.einsum("cd,cd->c", vectors, queries[which[0]])
        return take_topk(exact, np.where(hit, ids, -1), k)


def _widen(scores: np.ndarray, width: int) -> np.ndarray:
    return np.pad(scores, ((0, 0), (0, width - scores.shape[1])), constant_values=-np.inf)


def _widen_ids(ids: np.ndarray, width: int) -> np.ndarray:
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=-1)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] >= k:
        return scores, ids
    extra = k - scores.shape[1]
    return (np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, extra)), constant_values=-1))


class SegmentCache:
    """Loaded segments and tombstone files by (path, sha256), so a process that follows new
    versions loads only what changed: an add costs its delta segment, a delete its tombstone
    file; unchanged segments (memory-mapped) are reused. ``retain`` drops what a version no
    longer uses. Loaders may run in several threads at once (a searcher's retry beside a
    switch, on the event loop): the maps change under a lock, files load outside it, each
    lookup keeps what it loaded, so at worst a file loads twice."""

    def __init__(self) -> None:
        self.segments: dict[tuple[str, str], SegmentSearcher] = {}
        self.tombstones: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def segment(self, root: str, entry: SegmentEntry, defaults: SearchParams, verify: bool,
                mmap: bool, manifest: IndexManifest | None = None) -> SegmentSearcher:
        key = (entry.index_path, entry.index_sha256, entry.metadata_path, entry.metadata_sha256)
        with self._lock:
            loaded = self.segments.get(key)
        if loaded is None:
            loaded = SegmentSearcher.load(root, entry, defaults, verify, mmap, manifest)
            with self._lock:
                self.segments[key] = loaded
        if loaded.defaults != defaults:
            loaded = loaded.with_hidden(loaded.hidden)
            loaded.defaults = defaults
        return loaded

    def tombstone(self, root: str, entry: TombstoneEntry, verify: bool) -> np.ndarray:
        key = (entry.path, entry.sha256)
        with self._lock:
            ids = self.tombstones.get(key)
        if ids is None:
            ids = load_tombstones(root, entry, verify)
            with self._lock:
                self.tombstones[key] = ids
        return ids

    def aside(self) -> "SegmentCache":
        """A cache that starts with this one's entries and keeps what it loads to itself: for
        loading a version without keeping it (a switch's probe, serving/searchers.py)."""
        copy = SegmentCache()
        with self._lock:
            copy.segments, copy.tombstones = dict(self.segments), dict(self.tombstones)
        return copy

    def retain(self, manifests: list[IndexManifest]) -> None:
        keep_segments = {(s.index_path, s.index_sha256, s.metadata_path, s.metadata_sha256)
                         for m in manifests for e in m.shards for s in e.segments}
        keep_tombstones = {(t.path, t.sha256) for m in manifests for e in m.shards for t in e.tombstones}
        with self._lock:
            self.segments = {k: v for k, v in self.segments.items() if k in keep_segments}
            self.tombstones = {k: v for k, v in self.tombstones.items() if k in keep_tombstones}


class ShardSearcher:
    """One shard of a version: its segments searched together, tombstones applied, answers
    merged in (score desc, id asc) order. Each segment returns a tie-complete top-k of its
    live items, so the merge is the top-k one index over the shard's live items would give
    (the same argument as for shards, module docstring). Re-ranking is exact per segment over
    its own PQ candidates. Safe to share between threads."""

    def __init__(self, entry: ShardEntry, segments: list[SegmentSearcher],
                 defaults: SearchParams = SearchParams()) -> None:
        self.entry, self.segments, self.defaults = entry, segments, defaults
        self.nlist = segments[0].nlist
        self.dim = segments[0].index.d

    @classmethod
    def load(cls, root: str, manifest: IndexManifest, shard: int, verify: bool = True,
             mmap: bool = True, cache: SegmentCache | None = None) -> "ShardSearcher":
        """Verify, then memory-map every segment of shard ``shard`` of ``manifest`` and read
        its tombstones (through ``cache`` when given). Raises ChecksumMismatch."""
        entry, defaults = manifest.shards[shard], SearchParams.from_manifest(manifest)
        cache = cache or SegmentCache()
        tombstones = [(t.segments, cache.tombstone(root, t, verify)) for t in entry.tombstones]
        segments = []
        for number, segment in enumerate(entry.segments):
            loaded = cache.segment(root, segment, defaults, verify, mmap, manifest)
            hidden = [ids for applies_to, ids in tombstones if applies_to > number]
            if hidden:
                ids = np.unique(np.concatenate(hidden))
                at = loaded.metadata.rows_of(ids)  # only the ids this segment stores
                loaded = loaded.with_hidden(ids[at >= 0])
            segments.append(loaded)
        return cls(entry, segments, defaults)

    @property
    def vectors(self) -> np.ndarray | None:
        """The base segment's re-rank vectors (None when the version keeps none)."""
        return self.segments[0].vectors

    @property
    def metadata(self) -> ShardMetadata:
        """The base segment's metadata (tests and single-segment tools; use ``lookup``)."""
        return self.segments[0].metadata

    @property
    def meta(self) -> pa.Table:
        """Metadata rows of every live item (O(shard): batch jobs and tests, not queries)."""
        tables = []
        for segment in self.segments:
            table = with_weights(segment.metadata.table)
            if len(segment.hidden):
                table = table.filter(pa.array(~np.isin(table.column("id").to_numpy(), segment.hidden)))
            tables.append(table)
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")

    @property
    def ids(self) -> np.ndarray:
        return self.meta.column("id").to_numpy() if len(self.segments) > 1 else self.segments[0].ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which ids the shard serves (stored and not tombstoned)."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(ids.shape, dtype=bool)
        for segment in self.segments:
            found |= segment.rows_of(ids.reshape(-1)).reshape(ids.shape) >= 0
        return found

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Base-segment metadata row of each id (-1 elsewhere); see ``lookup`` for all segments."""
        return self.segments[0].rows_of(ids)

    def lookup(self, ids: np.ndarray, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Metadata ``fields`` of each id ((n, k) int64; -1 = missing) from the segment that
        serves it: text as object arrays (None where missing), weight float64 (NaN). O(n k
        log N) per segment: k rows read."""
        out = None
        for segment in self.segments:
            rows = segment.rows_of(ids)
            found = segment.metadata.take(rows, fields)
            if out is None:
                out = found
                continue
            hit = rows >= 0
            for field in fields:
                out[field] = np.where(hit, found[field], out[field])
        return out

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 vectors of served ids (see SegmentSearcher.vectors_of)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(self.segments) == 1:
            return self.segments[0].vectors_of(ids)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for segment in self.segments:
            hit = segment.rows_of(ids) >= 0
            if hit.any():
                out[hit] = segment.vectors_of(ids[hit])
        return out

    def search(self, queries: np.ndarray, k: int, params: SearchParams | int | None = None,
               rerank: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float32 unit queries -> (n, k) scores and ids in (score desc, id asc) order,
        over the shard's live items. Raises ValueError for an nprobe outside 1 ... nlist."""
        answers = [segment.search(queries, k, params, rerank) for segment in self.segments]
        if len(answers) == 1:
            return answers[0]
        return merge_topk([a[0] for a in answers], [a[1] for a in answers], k)

    def label_counts(self) -> dict[str, int]:
        """Live items per label (Arrow compute over the label columns)."""
        out: dict[str, int] = {}
        for segment in self.segments:
            counts = segment.metadata.label_counts()
            if len(segment.hidden):  # minus the tombstoned rows' labels (k rows read)
                gone = segment.metadata.take(segment.metadata.rows_of(segment.hidden), ("label",))
                for label in gone["label"].tolist():
                    if label is not None:
                        counts[str(label)] -= 1
            for label, count in counts.items():
                out[label] = out.get(label, 0) + count
        return {label: count for label, count in out.items() if count}


class ShardedIndex:
    """Every shard of a version in this process: for batch jobs, pruning, tests, and a build's
    tuning up to ``driver_tuning_max_items`` (above it, indexer.sweep searches a shard a task).
    Serving groups shards per replica (serving/searchers.py) and merges with the same code."""

    def __init__(self, root: str, manifest: IndexManifest, verify: bool = True, mmap: bool = True,
                 cache: SegmentCache | None = None):
        self.manifest = manifest
        self.shards = [ShardSearcher.load(root, manifest, s, verify, mmap, cache)
                       for s in range(manifest.num_shards)]

    @property
    def nlist(self) -> int:
        """IVF lists of the version's shards (0: exact)."""
        return max((shard.nlist for shard in self.shards), default=0)

    @property
    def reranks(self) -> bool:
        """Whether the version keeps vectors for exact re-ranking."""
        return any(shard.vectors is not None for shard in self.shards)

    def search(self, queries: np.ndarray, k: int, params: SearchParams | int | None = None,
               rerank: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        answers = [shard.search(queries, k, params, rerank) for shard in self.shards]
        return merge_topk([a[0] for a in answers], [a[1] for a in answers], k)

    @staticmethod
    def ids_of(root: str, manifest: IndexManifest) -> np.ndarray:
        """Every live id in a version, from its metadata and tombstone files (no index loaded)."""
        from indexer.segments import Shard

        return np.concatenate([Shard(root, e).live_metadata().column("id").to_numpy()
                               if not e.compacted else load_metadata(root, e).column("id").to_numpy()
                               for e in manifest.shards])

    def metadata(self) -> pa.Table:
        return pa.concat_tables([with_weights(shard.meta) for shard in self.shards])

    def contains(self, ids: np.ndarray) -> np.ndarray:
        found = np.zeros(ids.shape, dtype=bool)
        for shard in self.shards:
            found |= shard.contains(ids)
        return found

    def lookup(self, ids: np.ndarray, column: str) -> np.ndarray:
        """A metadata column for each id (None where no shard holds it)."""
        flat = ids.reshape(-1)
        out = np.full(flat.shape, None, dtype=object)
        for shard in self.shards:
            hit = shard.contains(flat)
            if hit.any():
                out[hit] = shard.lookup(flat[hit], (column,))[column]
        return out.reshape(ids.shape)
