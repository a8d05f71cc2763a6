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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from indexer.history import fallback_versions, stands_in
from indexer.manifest import IndexManifest
from indexer.search import RERANK_FLOOR, SearchParams, SegmentCache, ShardSearcher
from indexer.store import resolve_version
from serving.answers import ShardAnswer, answer, empty_answer, merge_answers
from serving.coalesce import Coalescer

log = logging.getLogger("ray.serve")


class VersionRefused(Exception):
    """A searcher group would not switch to ``version``: shards that serve now would fail
    (``broken``: {shard: {"serving", "reason"}}, ShardGroup.degraded)."""

    def __init__(self, version: str, broken: dict[int, dict]) -> None:
        reasons = "; ".join(f"shard {s}: {d['reason']}" for s, d in sorted(broken.items()))
        super().__init__(f"version {version} refused: {reasons}")
        self.version, self.broken = version, broken

    def __reduce__(self):  # picklable across Ray with its fields
        return VersionRefused, (self.version, self.broken)


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
    """A group's merged top-k with the shard numbers that produced it, and those of them
    answered from an ancestor of the version asked for (shard -> version; ShardGroup)."""

    answer: ShardAnswer
    shards: tuple[int, ...]
    stale: dict[int, str] = field(default_factory=dict)


class ShardGroup:
    """The shards of one version that one replica serves, searched and merged together.

    A shard whose files fail to load (checksum, corruption, a missing file) is left out and,
    with ``fallback`` (else by ``fall_back()``), served from its newest ancestor whose files of
    that shard may stand in for it (indexer.history ``fallback_versions``: stale, but no item
    deleted or purged since comes back). The group answers for the shards it holds
    (``shards``), the router marks answers partial when one is missing, and ``degraded``
    ({shard: {"serving": the ancestor's version or None, "reason"}}) says why. Raises
    ValueError when the version has fewer shards than asked for, FileNotFoundError when it has
    no manifest."""

    def __init__(self, memory: str, shards: tuple[int, ...], version: str = "",
                 cache: SegmentCache | None = None, fallback: bool = True) -> None:
        manifest = resolve_version(memory, version or None)
        missing = [s for s in shards if s >= manifest.num_shards]
        if missing:
            raise ValueError(f"version {manifest.version} has {manifest.num_shards} shards; "
                             f"this replica serves {list(shards)}")
        self.memory, self.cache = memory, cache
        self.version, self.manifest = manifest.version, manifest
        self.manifests = [manifest]  # every version whose files this group holds
        # shard -> {"serving": the ancestor version it is served from, or None when left out,
        # "reason": why this version's files did not load}
        self.degraded: dict[int, dict] = {}
        self.loaded_at = time.monotonic()
        self._wanted = tuple(shards)
        self._loaded: dict[int, ShardSearcher] = {}
        for shard in shards:
            try:
                self._loaded[shard] = ShardSearcher.load(memory, manifest, shard, cache=cache)
            except Exception as error:  # noqa: BLE001 - any unloadable file: the shard is left out
                why = f"{type(error).__name__}: {error}"
                log.error("shard %d cannot serve version %s (%s)", shard, self.version, why)
                self.degraded[shard] = {"serving": None, "reason": why}
        if fallback:
            self.fall_back()
        self._index()
        self.loaded_at = time.monotonic()  # retries count from the end of this load
        self.defaults = SearchParams.from_manifest(manifest)
        self.dim = manifest.dim

    def _index(self) -> None:
        self.shards = tuple(s for s in self._wanted if s in self._loaded)
        self.searchers = [self._loaded[s] for s in self.shards]

    def fall_back(self) -> None:
        """Serve each shard left out from its newest loadable fallback version, if any."""
        for shard in [s for s, d in self.degraded.items() if d["serving"] is None]:
            tried = [self.manifest.shards[shard].files()]  # the same files would fail again
            for ancestor in self._fallback_versions(shard):
                files = ancestor.shards[shard].files()
                if files in tried:
                    continue
                tried.append(files)
                try:
                    self._loaded[shard] = ShardSearcher.load(self.memory, ancestor, shard, cache=self.cache)
                except Exception as error:  # noqa: BLE001 - try the next ancestor
                    log.error("shard %d cannot serve version %s either (%s: %s)",
                              shard, ancestor.version, type(error).__name__, error)
                    continue
                self.degraded[shard]["serving"] = ancestor.version
                self.manifests.append(ancestor)
                log.error("shard %d serves version %s in place of %s (stale: nothing deleted "
                          "since)", shard, ancestor.version, self.version)
                break
            else:
                log.error("shard %d is left out of version %s: no older version without a "
                          "deletion since loads", shard, self.version)
        self._index()
        self.loaded_at = time.monotonic()

    def _fallback_versions(self, shard: int) -> Iterator[IndexManifest]:
        """The fallback versions of ``shard`` whose manifests can still be read (``vmem index
        gc`` may have removed older versions: the walk stops there), newest first, read as
        they are asked for."""
        found = 0
        try:
            for ancestor in fallback_versions(self.memory, self.manifest, [shard]):
                found += 1
                yield ancestor  # lazily: the walk stops at the first ancestor that loads
        except (OSError, ValueError) as error:
            log.error("the history of version %s stops after %d ancestors: %s",
                      self.version, found, error)

    @property
    def stale(self) -> dict[int, str]:
        """{shard: the ancestor version it is served from} (shards left out are not listed)."""
        return {shard: d["serving"] for shard, d in self.degraded.items() if d["serving"]}

    def search(self, queries: np.ndarray, k: int, params: SearchParams,
               with_vectors: bool = False) -> ShardAnswer:
        """The merged top-k of the shards this group holds (an empty (n, 0) answer if none)."""
        if not self.searchers:
            return empty_answer(len(queries), self.version)
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
            results[position] = GroupAnswer(merged.select(rows).first(request.k), group.shards,
                                            group.stale)
    return results


class SearcherService:
    """Serves shards ``shards`` of the memory at ``memory`` and follows the router's version:
    the logic of a searcher replica, also run inside the router (``searcher_groups: 0``)."""

    # a degraded group (ShardGroup.degraded) tries its files again after this, then after twice
    # as long each time they still fail, up to 32 times (a shard file can be gigabytes to verify)
    retry_failed_s = 10.0

    def __init__(self, memory: str, shards: list[int], version: str = "",
                 omp_threads: int = 0) -> None:
        if omp_threads:
            import faiss

            faiss.omp_set_num_threads(int(omp_threads))
        self.memory, self.shard_numbers = memory, tuple(shards)
        self.lock = asyncio.Lock()
        self.cache = SegmentCache()  # a new version loads only its new segments and tombstones
        # a restarted replica: a shard whose files no longer load is served from an older
        # version or left out (ShardGroup), and the replica stays up to say so
        self._retry_after = self.retry_failed_s
        self._retrying: asyncio.Task | None = None
        self.group = self._load(version or resolve_version(memory).version)
        self._batches = Coalescer(self._search_batch, max_batch=64)

    def _load(self, version: str, fallback: bool = True) -> ShardGroup:
        return ShardGroup(self.memory, self.shard_numbers, version, self.cache, fallback)

    async def _ensure(self, version: str, strict: bool = False) -> ShardGroup:
        """Serve ``version`` (the router's): a replica that missed a reload catches up here.
        ``strict`` (the router switching versions): raise VersionRefused, still serving the
        version it serves, when a shard that loads now would fail in ``version`` and the
        version served may stand in for it (``version`` only added since); a shard that
        already fails (ShardGroup.degraded) does not stop the switch, nor does one whose new
        version deleted or purged something: that shard is then left out, never served with
        the forgotten items. A degraded group loads
        its files again, in the background, when a query arrives ``retry_failed_s`` after its
        last load, backing off while they still fail (a repaired file serves again without a
        restart)."""
        group = self.group
        if version and (version != group.version or (strict and group.degraded)):
            async with self.lock:
                current = self.group
                if version != current.version or (strict and current.degraded):
                    loaded = await asyncio.to_thread(self._load, version, False)
                    broken = await self._refused(current, loaded) if strict else {}
                    if broken:
                        raise VersionRefused(version, broken)
                    if loaded.degraded:
                        await asyncio.to_thread(loaded.fall_back)
                    self._serve(loaded)
                    log.info("shards %s now serve version %s", self.shard_numbers, version)
            group = self.group
        elif group.degraded and time.monotonic() - group.loaded_at > self._retry_after:
            if self._retrying is None or self._retrying.done():
                self._retrying = asyncio.get_running_loop().create_task(self._retry(group))
        return group

    async def _refused(self, current: ShardGroup, loaded: ShardGroup) -> dict[int, dict]:
        """The shards for which a strict switch from ``current`` to ``loaded`` is refused
        ({shard: {"serving", "reason"}}): those that serve now and fail in ``loaded``, when
        ``current``'s version may stand in for ``loaded``'s; {} when the switch goes ahead."""
        broken = {s: d for s, d in loaded.degraded.items() if s not in current.degraded}
        if broken and await asyncio.to_thread(self._stands_in, current, loaded):
            return broken
        return {}

    def _stands_in(self, current: ShardGroup, new: ShardGroup) -> bool:
        """Whether serving ``current``'s version in place of ``new``'s shows nothing ``new``
        hid (indexer.history ``stands_in``: adds, soft prunes, compactions and builds over
        every batch since): only then may a switch be refused. A version that deleted items
        is always taken, a failing shard left out."""
        try:
            return stands_in(self.memory, new.manifest, current.version)
        except (OSError, ValueError) as error:  # a manifest gone: do not refuse a removal
            log.error("history of version %s unreadable (%s): switching to it", new.version, error)
            return False

    def _serve(self, group: ShardGroup) -> None:
        if group.version != self.group.version:
            self._retry_after = self.retry_failed_s
        self.group = group
        self.cache.retain(group.manifests)

    async def _retry(self, degraded: ShardGroup) -> None:
        """Load the degraded group's version again, outside the lock (searches and switches
        go on meanwhile); serve it if the group was not replaced in the meantime."""
        try:
            group = await asyncio.to_thread(self._load, degraded.version)
        except Exception as error:  # noqa: BLE001 - a failed retry backs off like a degraded one
            log.error("shards %s: loading version %s again failed: %s", self.shard_numbers,
                      degraded.version, error)
            if self.group is degraded:  # not replaced meanwhile: back off from now
                degraded.loaded_at = time.monotonic()
                self._retry_after = min(2 * self._retry_after, 32 * self.retry_failed_s)
            return
        async with self.lock:
            if self.group is not degraded:
                return
            self._serve(group)
            if group.degraded:
                self._retry_after = min(2 * self._retry_after, 32 * self.retry_failed_s)
            else:
                log.info("shards %s serve every shard of version %s again", self.shard_numbers,
                         group.version)

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

    async def reload(self, version: str = "", strict: bool = True) -> str:
        """Serve ``version`` (default LATEST) and return it; ``strict``: raise VersionRefused
        (the version served staying as it was) when a shard that serves now would fail."""
        return (await self._ensure(version or resolve_version(self.memory).version, strict)).version

    async def refusal(self, version: str) -> dict[int, dict]:
        """What ``reload(version, strict=True)`` would refuse, without switching: {shard:
        {"serving", "reason"}} for the shards that make it refuse (VersionRefused's
        ``broken``), {} when it would switch. ``version`` is loaded aside (its own cache,
        ``SegmentCache.aside``: nothing it loads is kept), not served."""
        current = self.group
        if version == current.version and not current.degraded:
            return {}
        loaded = await asyncio.to_thread(ShardGroup, self.memory, self.shard_numbers, version,
                                         self.cache.aside(), False)
        return await self._refused(current, loaded)

    async def degraded(self) -> dict[int, dict]:
        """ShardGroup.degraded of the version served: {shard: {"serving", "reason"}}."""
        return self.group.degraded

    async def left_out(self, version: str) -> dict[int, str]:
        """{shard: why} for this group's shards of ``version`` that neither their files nor a
        fallback version's would serve: the version served as it is, else ``version`` loaded
        aside (its segments stay cached for the switch), not served."""
        group = self.group
        if version != group.version:
            group = await asyncio.to_thread(self._load, version)
        return {shard: d["reason"] for shard, d in group.degraded.items() if d["serving"] is None}

    async def stats(self, version: str = "") -> dict[str, int]:
        group = await self._ensure(version)
        return await asyncio.to_thread(group.label_counts)

    def current_version(self) -> str:
        return self.group.version

    def check_health(self) -> None:
        """A real search (k = 1) on every shard the group holds: a replica whose files or index
        cannot answer is reported unhealthy and replaced by Serve. A shard left out at load
        (ShardGroup.degraded) does not fail it: a new replica would meet the same files."""
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

    async def reload(self, version: str = "", strict: bool = True) -> str:
        return await self.handle.reload.remote(version, strict)

    async def refusal(self, version: str) -> dict[int, dict]:
        return await self.handle.refusal.remote(version)

    async def degraded(self) -> dict[int, dict]:
        return await self.handle.degraded.remote()

    async def left_out(self, version: str) -> dict[int, str]:
        return await self.handle.left_out.remote(version)

    async def stats(self, version: str = "") -> dict[str, int]:
        return await self.handle.stats.remote(version)


async def switch_groups(groups: Sequence, version: str, strict: bool = True) -> None:
    """Make every searcher group (SearcherService or RemoteSearchers) serve ``version``.
    ``strict`` (a router switching versions) is two-phase: every group is first asked what it
    would refuse (``refusal``: loaded aside, not served), and if any would, VersionRefused
    (every refused shard in ``broken``) is raised with no group switched; only then does each
    group switch, strictly still. Switched one phase only, the groups whose shards load would
    switch while another refused, then switch back on the next query naming the version
    served, loading both versions again at each retry (``FollowOptions.retry_failed_s``).
    Each reload decides again, so a group whose state changed between the phases (another
    router's query, a degraded group's retry) may still refuse; the groups that switched then
    come back on the next query naming the version served, as before.
    Not ``strict`` (a replica's start): each group serves ``version``, a failing shard from a
    fallback version or left out."""
    if strict:
        broken: dict[int, dict] = {}
        for found in await asyncio.gather(*[group.refusal(version) for group in groups]):
            broken.update(found)
        if broken:
            raise VersionRefused(version, broken)
    await asyncio.gather(*[group.reload(version, strict) for group in groups])
