"""The index version manifest: everything a searcher needs, and the version's history link.

A shard of a version is a list of immutable **segments** (the trained base segment plus small
delta segments written by adds, all encoded with the version's one trained quantizer) and a
list of **tombstone** files (ids deleted since the segments were written). Paths are relative to
``ROOT/index/`` so a version reuses its parent's unchanged files: versions are immutable, so
sharing is safe, and an edit writes only what it changes (indexer/segments.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from indexer.layout import MANIFEST, version_dir
from pipelines import storage

# 3: segment files of an OPQ/PCA index hold the IVF level alone (the version's trained index
#    gives the rotation and the quantizer, indexer/quantizer.py); a reader of format 2 would
#    search them unrotated, so readers refuse a format newer than their own (upgrade serving
#    before the writers). 2: shards are segments + tombstones. 1 (one file set per shard).
# Every older format still reads.
FORMAT_VERSION = 3


@dataclass
class SegmentEntry:
    """One immutable segment of a shard: a FAISS index, its metadata (Arrow IPC, sorted by id)
    and optionally its re-rank vectors (rows aligned with the metadata). ``count`` is the rows
    stored in the files, tombstoned ones included."""

    count: int
    index_path: str
    index_sha256: str
    metadata_path: str
    metadata_sha256: str
    vectors_path: str = ""  # fp16/fp32 vectors for exact re-ranking, rows aligned with metadata
    vectors_sha256: str = ""
    keys_path: str = ""  # indexer/keyindex.py: (key hash, id) sorted, for forget by key; "" = none
    keys_sha256: str = ""

    def files(self) -> list[tuple[str, str]]:
        """(path, sha256) of every file of the segment."""
        return [(p, d) for p, d in ((self.index_path, self.index_sha256),
                                    (self.metadata_path, self.metadata_sha256),
                                    (self.vectors_path, self.vectors_sha256),
                                    (self.keys_path, self.keys_sha256)) if p]


@dataclass
class TombstoneEntry:
    """Ids deleted from a shard: a sorted int64 ``.npy``. It hides those ids in the shard's
    first ``segments`` segments (the ones that existed when it was written), so an id added
    again later, in a newer segment, is not hidden."""

    path: str
    sha256: str
    count: int
    segments: int


def _from_base(name: str) -> property:
    """A read-only ``ShardEntry`` attribute that is the base segment's field ``name``."""
    return property(lambda entry: getattr(entry.segments[0], name),
                    doc=f"The base segment's ``{name}``.")


@dataclass
class ShardEntry:
    """One serving shard: ``segments[0]`` is the base segment, the rest are deltas, oldest
    first; ``count`` is the live items (stored minus tombstoned)."""

    shard: int
    count: int
    segments: list[SegmentEntry] = field(default_factory=list)
    tombstones: list[TombstoneEntry] = field(default_factory=list)

    # The base segment's files, for code that reads a single-segment shard.
    @property
    def base(self) -> SegmentEntry:
        return self.segments[0]

    index_path = _from_base("index_path")
    index_sha256 = _from_base("index_sha256")
    metadata_path = _from_base("metadata_path")
    metadata_sha256 = _from_base("metadata_sha256")
    vectors_path = _from_base("vectors_path")
    vectors_sha256 = _from_base("vectors_sha256")

    @property
    def stored(self) -> int:
        """Rows in the shard's segment files, tombstoned included."""
        return sum(s.count for s in self.segments)

    @property
    def tombstoned(self) -> int:
        return sum(t.count for t in self.tombstones)

    @property
    def compacted(self) -> bool:
        """One segment and no tombstones: what a build or a compaction writes."""
        return len(self.segments) == 1 and not self.tombstones

    def files(self) -> list[tuple[str, str]]:
        """(path, sha256) of every file the shard reads."""
        return ([f for s in self.segments for f in s.files()]
                + [(t.path, t.sha256) for t in self.tombstones])

    @classmethod
    def from_fields(cls, fields: dict) -> "ShardEntry":
        if "segments" not in fields:  # format 1: one file set per shard
            segment = SegmentEntry(**{k: v for k, v in fields.items() if k not in ("shard",)})
            return cls(fields["shard"], fields["count"], [segment])
        return cls(fields["shard"], fields["count"],
                   [SegmentEntry(**s) for s in fields["segments"]],
                   [TombstoneEntry(**t) for t in fields.get("tombstones", [])])


@dataclass
class IndexManifest(storage.JsonRecord):
    version: str
    parent: str | None
    created: str
    operation: str  # build, add, delete, compact, prune-hard, prune-soft, rollback
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
    trained_path: str = ""  # the empty trained index (quantizer + codebooks), shared by segments
    trained_sha256: str = ""
    format_version: int = FORMAT_VERSION

    # Written last inside the version folder: its presence makes the version complete.
    KEY, WHAT = "version", "index version"

    @classmethod
    def url_for(cls, root: str, version: str) -> str:
        return storage.join(version_dir(root, version), MANIFEST)

    @classmethod
    def from_fields(cls, fields: dict) -> "IndexManifest":
        """Raises ValueError for a version written in a newer format than this code reads."""
        written = int(fields.get("format_version", 1))
        if written > FORMAT_VERSION:
            raise ValueError(f"index version {fields.get('version')!r} is in format {written}; this "
                             f"vmem reads formats up to {FORMAT_VERSION}: upgrade it")
        return cls(**{**fields, "shards": [ShardEntry.from_fields(e) for e in fields["shards"]]})

    def files(self) -> list[tuple[str, str]]:
        """(path relative to ``ROOT/index/``, sha256) of every data file this version reads:
        what garbage collection must keep while the version is kept."""
        out = [f for entry in self.shards for f in entry.files()]
        if self.trained_path:
            out.append((self.trained_path, self.trained_sha256))
        return out
