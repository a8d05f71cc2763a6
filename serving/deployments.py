"""The Serve deployments behind the router: the encoder and one searcher per shard.

Each loads once in ``__init__``, serves in its methods, and reports health in
``check_health``; replicas, resources and concurrency come from the Serve config, not code.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

from indexer.search import ShardSearcher
from indexer.store import resolve_version
from pipelines.encoders import EncoderSpec, load_encoder
from serving.answers import ShardAnswer, answer

log = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class EncoderDeployment:
    """The encoder named in the index manifest; concurrent requests are batched together."""

    def __init__(self, encoder: str, weights: str = "", device: str = "auto") -> None:
        self.encoder = load_encoder(EncoderSpec.parse(encoder, weights, device))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """Each request brings (m, 3, H, W) preprocessed pixels; one forward serves them all."""
        sizes = [len(p) for p in pixels]
        vectors = await asyncio.to_thread(self.encoder.embed, np.concatenate(pixels))
        return list(np.split(vectors, np.cumsum(sizes)[:-1]))

    def check_health(self) -> None:
        if self.encoder.dim <= 0:
            raise RuntimeError("encoder not loaded")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  health_check_period_s=5)
class ShardDeployment:
    """One serving shard: verifies its files' checksums, memory-maps the index, searches."""

    def __init__(self, memory: str, shard: int, version: str = "") -> None:
        self.memory, self.shard = memory, shard
        self.lock = asyncio.Lock()
        self.searcher, self.version = self._load(version)

    def _load(self, version: str) -> tuple[ShardSearcher, str]:
        manifest = resolve_version(self.memory, version or None)
        if manifest.num_shards <= self.shard:
            raise ValueError(f"version {manifest.version} has {manifest.num_shards} shards; "
                             f"this replica serves shard {self.shard}")
        return ShardSearcher.load(self.memory, manifest, self.shard), manifest.version

    async def _ensure(self, version: str) -> None:
        """Serve ``version`` (the router's): a replica that missed a reload catches up here."""
        if version and version != self.version:
            async with self.lock:
                if version != self.version:
                    searcher, loaded = await asyncio.to_thread(self._load, version)
                    self.searcher, self.version = searcher, loaded  # swapped together, last
                    log.info("shard %d now serves version %s", self.shard, loaded)

    async def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
                     version: str = "", with_vectors: bool = False) -> ShardAnswer:
        await self._ensure(version)
        searcher, current = self.searcher, self.version  # a reload mid-query cannot mix versions
        return await asyncio.to_thread(answer, searcher, queries, k, nprobe, current, self.shard, with_vectors)

    async def reload(self, version: str = "") -> str:
        await self._ensure(version or resolve_version(self.memory).version)
        return self.version

    async def stats(self, version: str = "") -> dict[str, int]:
        await self._ensure(version)
        labels = self.searcher.meta.column("label").to_pylist()
        out: dict[str, int] = {}
        for label in labels:
            out[label] = out.get(label, 0) + 1
        return out

    def current_version(self) -> str:
        return self.version

    def check_health(self) -> None:
        if self.searcher.index.ntotal != self.searcher.meta.num_rows:
            raise RuntimeError(f"shard {self.shard}: index and metadata disagree")
