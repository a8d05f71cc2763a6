"""The searcher deployment: one replica serves a group of shards in-process.

Each replica memory-maps its shards (indexer/search.py: codes and ids on the page cache,
metadata and re-rank vectors read by row) and answers a query for all of them, merged, in one
call: S shards on one machine cost one actor hop, not S. Concurrent queries are coalesced
(serving/coalesce.py: no added wait, unlike ``@serve.batch``'s timeout) into one FAISS call per
shard. This module imports neither torch nor Beam: a searcher's process holds FAISS, numpy and
pyarrow only.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np
from ray import serve

from indexer.manifest import IndexManifest
from indexer.search import RERANK_FLOOR, SearchParams, SegmentCache, ShardSearcher
from indexer.store import resolve_version
from serving.answers import ShardAnswer, answer, merge_answers
from serving.coalesce import Coalescer

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ShardQuery:
    """One router request to a searcher group: (n, dim) float32 unit queries."""

    queries: np.ndarray
    k: int
    params: SearchParams
    version: str = ""
    with_vectors: bool = False

    def batch_key(self, defaults: SearchParams) -> tuple:
        """Requests with equal keys can share one FAISS call searched at their largest k: the
        top-k is a prefix of the top-(k+1) at the same parameters and candidate count."""
        params = self.params.resolved(defaults)
        candidates = params.k_factor * max(self.k, RERANK_FLOOR) if params.rerank else 0
        return self.version, params, candidates if candidates else None


@dataclass
class GroupAnswer:
    """A group's merged top-k with the shard numbers that produced it."""

    answer: ShardAnswer
    shards: tuple[int, ...]


class ShardGroup:
    """The shards of one version that one replica serves, searched and merged together."""

    def __init__(self, memory: str, shards: tuple[int, ...], version: str = "",
                 cache: SegmentCache | None = None) -> None:
        manifest = resolve_version(memory, version or None)
        missing = [s for s in shards if s >= manifest.num_shards]
        if missing:
            raise ValueError(f"version {manifest.version} has {manifest.num_shards} shards; "
                             f"this replica serves {list(shards)}")
        self.version, self.shards = manifest.version, shards
        self.manifest = manifest
        self.searchers = [ShardSearcher.load(memory, manifest, s, cache=cache) for s in shards]
        self.defaults = self.searchers[0].defaults if self.searchers else SearchParams()
        self.dim = manifest.dim

    def search(self, queries: np.ndarray, k: int, params: SearchParams,
               with_vectors: bool = False) -> ShardAnswer:
        answers = [answer(searcher, queries, k, params, self.version, shard, with_vectors)
                   for shard, searcher in zip(self.shards, self.searchers)]
        return merge_answers(answers, k) if len(answers) > 1 else answers[0]

    def label_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for searcher in self.searchers:
            for label, count in searcher.label_counts().items():
                out[label] = out.get(label, 0) + count
        return out


def search_batch(group: ShardGroup, requests: list[ShardQuery]) -> list[GroupAnswer]:
    """Answer many requests with one search per distinct batch key (see ShardQuery)."""
    results: list[GroupAnswer | None] = [None] * len(requests)
    by_key: dict[tuple, list[int]] = {}
    for position, request in enumerate(requests):
        by_key.setdefault(request.batch_key(group.defaults), []).append(position)
    for positions in by_key.values():
        chosen = [requests[p] for p in positions]
        k = max(r.k for r in chosen)
        queries = np.concatenate([r.queries for r in chosen]) if len(chosen) > 1 else chosen[0].queries
        merged = group.search(queries, k, chosen[0].params, any(r.with_vectors for r in chosen))
        start = 0
        for position, request in zip(positions, chosen):
            rows = slice(start, start + len(request.queries))
            start += len(request.queries)
            results[position] = GroupAnswer(merged.select(rows).first(request.k), group.shards)
    return results


class SearcherService:
    """Serves shards ``shards`` of the memory at ``memory`` and follows the router's version:
    the logic of a searcher replica, also run inside the router (``searcher_groups: 0``)."""

    def __init__(self, memory: str, shards: list[int], version: str = "",
                 omp_threads: int = 0) -> None:
        if omp_threads:
            import faiss

            faiss.omp_set_num_threads(int(omp_threads))
        self.memory, self.shard_numbers = memory, tuple(shards)
        self.lock = asyncio.Lock()
        self.cache = SegmentCache()  # a new version loads only its new segments and tombstones
        self.group = self._load_with_fallback(version or resolve_version(memory).version)
        self._batches = Coalescer(self._search_batch, max_batch=64)

    def _load_with_fallback(self, version: str, depth: int = 10) -> ShardGroup:
        """``version``'s shards or, when a file fails to load (checksum, corruption), those of
        its newest loadable ancestor: a restarted replica keeps answering. Raises the first
        error when no ancestor loads."""
        candidate, first = version, None
        for _ in range(depth):
            try:
                return self._load(candidate)
            except Exception as error:  # noqa: BLE001 - fall back to the parent
                first = first or error
                log.error("shards %s cannot serve version %s (%s); trying its parent",
                          self.shard_numbers, candidate, error)
                candidate = IndexManifest.read(self.memory, candidate).parent
                if not candidate:
                    break
        raise first

    def _load(self, version: str) -> ShardGroup:
        group = ShardGroup(self.memory, self.shard_numbers, version, self.cache)
        self.cache.retain([group.manifest])
        return group

    async def _ensure(self, version: str) -> ShardGroup:
        """Serve ``version`` (the router's): a replica that missed a reload catches up here."""
        group = self.group
        if version and version != group.version:
            async with self.lock:
                if version != self.group.version:
                    self.group = await asyncio.to_thread(self._load, version)
                    log.info("shards %s now serve version %s", self.shard_numbers, version)
            group = self.group
        return group

    async def search(self, request: ShardQuery) -> GroupAnswer:
        """The group's merged top-k for ``request``, from the version it names; concurrent
        requests share FAISS calls (serving/coalesce.py)."""
        return await self._batches(request)

    async def _search_batch(self, requests: list[ShardQuery]) -> list[GroupAnswer]:
        """Answers in request order; a request's answer comes from the version it names."""
        results: list[GroupAnswer | None] = [None] * len(requests)
        for version in dict.fromkeys(r.version for r in requests):
            group = await self._ensure(version)
            positions = [p for p, r in enumerate(requests) if r.version == version]
            # Inline, not in a thread: one FAISS call per batch, no per-request thread hop.
            answers = search_batch(group, [requests[p] for p in positions])
            for position, result in zip(positions, answers):
                results[position] = result
        return results

    async def reload(self, version: str = "") -> str:
        return (await self._ensure(version or resolve_version(self.memory).version)).version

    async def stats(self, version: str = "") -> dict[str, int]:
        group = await self._ensure(version)
        return await asyncio.to_thread(group.label_counts)

    def current_version(self) -> str:
        return self.group.version

    def check_health(self) -> None:
        """A real search (k = 1) on every shard of the group: a replica whose files or index
        cannot answer is reported unhealthy and replaced by Serve."""
        group = self.group
        probe = np.zeros((1, group.dim), dtype=np.float32)
        probe[0, 0] = 1.0
        group.search(probe, 1, SearchParams())


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  health_check_period_s=5)
class SearcherDeployment(SearcherService):
    """A SearcherService as its own Serve deployment (one per group, sized in the config)."""


class RemoteSearchers:
    """A SearcherDeployment's handle with SearcherService's awaitable methods, so the router
    calls a searcher group the same way wherever it runs."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def search(self, query: ShardQuery) -> GroupAnswer:
        return await self.handle.search.remote(query)

    async def reload(self, version: str = "") -> str:
        return await self.handle.reload.remote(version)

    async def stats(self, version: str = "") -> dict[str, int]:
        return await self.handle.stats.remote(version)
