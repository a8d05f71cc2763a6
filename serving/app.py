"""The Serve application builder: ``import_path: serving.app:build_app`` in a Serve config.

One encoder deployment, one searcher deployment per shard of the served version (named
``Shard0`` ... so a config can size each), and the router that fans out to them.
"""
from __future__ import annotations

from ray.serve import Application

from indexer.store import resolve_version
from serving.deployments import EncoderDeployment, ShardDeployment
from serving.options import ServingOptions
from serving.router import Router


def build_app(args: dict, deployment_options: dict[str, dict] | None = None) -> Application:
    options = ServingOptions.from_args(dict(args))
    overrides = deployment_options or {}
    manifest = resolve_version(options.memory, options.version or None)
    encoder = None if options.embeddings_only else EncoderDeployment.options(
        **overrides.get("EncoderDeployment", {})).bind(manifest.encoder, options.encoder_weights,
                                                       options.device)
    shards = [ShardDeployment.options(name=f"Shard{s}", **overrides.get(f"Shard{s}", {})).bind(
        options.memory, s, manifest.version) for s in range(manifest.num_shards)]
    return Router.options(**overrides.get("Router", {})).bind(dict(args), encoder, shards)
