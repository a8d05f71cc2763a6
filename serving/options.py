"""Serving options: what a Serve config file's ``args`` may set, validated once at build time."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from serving.aggregation import AGGREGATORS


@dataclass
class ServingOptions:
    memory: str  # ROOT of the visual memory
    version: str = ""  # "" = LATEST
    token: str = ""  # bearer token for mutating endpoints; "" = read token_env
    token_env: str = "VMEM_TOKEN"
    default_k: int = 100  # method.md: k = 100 is a safe default for RankVoting
    max_k: int = 1000
    default_aggregator: str = "rank"
    unknown_below: float = 0.0  # answer "unknown" when the winner's vote share is lower
    default_rerank: str = ""  # "" = vote in retrieval order; "prototype" = serving/rerank.py
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_batch: int = 256  # queries per batch request
    searcher_groups: int = 1  # searcher deployments (shard s in group s mod G); 0 = in the router
    searcher_omp_threads: int = 0  # FAISS threads per searcher replica; 0 = Ray's default
    shard_timeout_s: float = 10.0
    shard_retries: int = 1
    encoder_weights: str = ""  # override the encoder weights location
    embeddings_only: bool = False  # no encoder deployment: clients send embeddings
    device: str = "auto"

    @classmethod
    def from_args(cls, args: dict) -> "ServingOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(args) - known
        if unknown:
            raise ValueError(f"unknown serving option(s) {sorted(unknown)}; known: {sorted(known)}")
        options = cls(**args)
        if options.default_aggregator not in AGGREGATORS:
            raise ValueError(f"default_aggregator must be one of {AGGREGATORS}")
        if options.default_rerank:
            from serving.rerank import make_reranker

            make_reranker(options.default_rerank)  # an unknown name fails at deploy, not per query
        if options.searcher_groups < 0:
            raise ValueError("searcher_groups must be >= 0 (0: search inside the router)")
        if not 1 <= options.default_k <= options.max_k:
            raise ValueError("default_k must be between 1 and max_k")
        return options

    def resolved_token(self) -> str:
        return self.token or os.environ.get(self.token_env, "")
