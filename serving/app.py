"""The Serve application builder: ``import_path: serving.app:build_app`` in a Serve config.

One encoder deployment (absent with ``embeddings_only``), ``searcher_groups`` searcher
deployments (``Searcher0`` ... so a config can size and place each; shard s is served by group
s mod G, all of a group's shards in one replica's process) and the router that fans out to
them. ``searcher_groups: 0`` searches inside each router replica (no searcher hop: the fastest
path on one machine; replicas on a node share the memory-mapped files' page cache); across
machines, one group per machine spreads memory and CPU.
"""
from __future__ import annotations

from ray.serve import Application

from indexer.store import resolve_version
from serving.options import ServingOptions
from serving.router import Router
from serving.searchers import SearcherDeployment
from serving.writer import Writer


def shard_groups(num_shards: int, groups: int) -> list[list[int]]:
    """Shards per searcher group: shard s in group s mod G (G capped at the shard count)."""
    groups = max(1, min(groups, num_shards))  # 0 (in the router) is one group too
    return [list(range(g, num_shards, groups)) for g in range(groups)]


def build_app(args: dict, deployment_options: dict[str, dict] | None = None) -> Application:
    options = ServingOptions.from_args(dict(args))
    overrides = deployment_options or {}
    manifest = resolve_version(options.memory, options.version or None)
    encoder = None
    if not options.embeddings_only:
        from serving.encoder import EncoderDeployment  # torch: only where images are embedded

        encoder = EncoderDeployment.options(**overrides.get("EncoderDeployment", {})).bind(
            manifest.encoder, options.encoder_weights, options.device, options.max_pixels,
            options.max_body_bytes)
    groups = shard_groups(manifest.num_shards, options.searcher_groups)
    searchers = [] if options.searcher_groups == 0 else [
        SearcherDeployment.options(name=f"Searcher{g}", **overrides.get(f"Searcher{g}", {}))
        .bind(options.memory, shards, manifest.version, options.searcher_omp_threads)
        for g, shards in enumerate(groups)]
    writer = Writer.options(**overrides.get("Writer", {})).bind(options.memory, options.confirm_timeout_s)
    return Router.options(**overrides.get("Router", {})).bind(dict(args), encoder, searchers, groups,
                                                              writer)
