"""The index version manifest: everything a searcher needs, and the version's history link."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from indexer.layout import MANIFEST, version_dir
from pipelines import storage

FORMAT_VERSION = 1


@dataclass
class ShardEntry:
    """One serving shard. Paths are relative to ``ROOT/index/`` so an edit can reuse the
    unchanged files of its parent version (versions are immutable, so sharing is safe)."""

    shard: int
    count: int
    index_path: str
    index_sha256: str
    metadata_path: str
    metadata_sha256: str
    vectors_path: str = ""  # fp16/fp32 vectors for exact re-ranking, rows aligned with metadata
    vectors_sha256: str = ""


@dataclass
class IndexManifest:
    version: str
    parent: str | None
    created: str
    operation: str  # build, add, delete, prune-hard, prune-soft
    encoder: str
    dim: int
    factory: str
    num_shards: int
    count: int
    metric: str = "inner_product"  # on unit vectors: cosine similarity; distance = 1 - score
    search_defaults: dict = field(default_factory=dict)  # nprobe, k, rerank
    shards: list[ShardEntry] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # operation-specific: timings, recall, report
    format_version: int = FORMAT_VERSION

    def write(self, root: str) -> None:
        """Written last inside the version folder: its presence makes the version complete."""
        storage.write_json_atomic(storage.join(version_dir(root, self.version), MANIFEST),
                                  dataclasses.asdict(self))

    @classmethod
    def read(cls, root: str, version: str) -> "IndexManifest":
        raw = storage.read_json_required(storage.join(version_dir(root, version), MANIFEST),
                                         f"index version {version!r} has no manifest")
        raw["shards"] = [ShardEntry(**entry) for entry in raw["shards"]]
        return cls(**raw)
