"""The index version manifest: everything a searcher needs, and the version's history link."""
from __future__ import annotations

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
class IndexManifest(storage.JsonRecord):
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

    # Written last inside the version folder: its presence makes the version complete.
    KEY, WHAT = "version", "index version"

    @classmethod
    def url_for(cls, root: str, version: str) -> str:
        return storage.join(version_dir(root, version), MANIFEST)

    @classmethod
    def from_fields(cls, fields: dict) -> "IndexManifest":
        return cls(**{**fields, "shards": [ShardEntry(**entry) for entry in fields["shards"]]})
