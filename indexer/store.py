"""Load a published version's shards, verifying every file against the manifest first."""
from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa

from indexer.checksums import verify_file
from indexer.layout import index_root, read_latest
from indexer.manifest import IndexManifest, SegmentEntry, ShardEntry, TombstoneEntry
from indexer.metadata import open_table
from indexer.quantizer import attach, is_stripped, trained_index
from pipelines import storage


def resolve_version(root: str, version: str | None = None) -> IndexManifest:
    """The named version, or the one LATEST points at."""
    version = version or read_latest(root)
    if version is None:
        raise FileNotFoundError(f"no index under {root}/index (run `vmem index build`)")
    return IndexManifest.read(root, version)


def _url(root: str, path: str) -> str:
    return storage.join(index_root(root), path)


def load_index(root: str, entry: SegmentEntry | ShardEntry, verify: bool = True, mmap: bool = True,
               manifest: IndexManifest | None = None) -> faiss.Index:
    """Verify the checksum, then read the index; with ``mmap`` the inverted lists (or flat
    codes) stay in the file, memory-mapped read-only (faiss ``IO_FLAG_MMAP_IFC``: zero-copy
    views for ArrayInvertedLists and IndexFlatCodes; ``IO_FLAG_MMAP`` where faiss is older), so
    heap holds only small tables, and the page cache the codes queries touch. A segment written
    without its coarse quantizer (indexer/quantizer.py) gets the one of ``manifest``'s trained
    index, and its pre-transform where the file left that out, shared per process; without
    ``manifest`` it is returned as stored (its lists can be read and merged, not searched).
    Remote files are cached locally first. Raises ChecksumMismatch, FileNotFoundError."""
    url = _url(root, entry.index_path)
    if verify:
        verify_file(url, entry.index_sha256)
    local = storage.localize(url, cache="index")
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mmap else 0
    index = faiss.read_index(local, flags | faiss.IO_FLAG_READ_ONLY)
    if manifest is not None and is_stripped(index):
        index = attach(index, trained_index(root, manifest).index)
    return index


def load_metadata(root: str, entry: SegmentEntry | ShardEntry, verify: bool = True) -> pa.Table:
    """A shard's metadata table (indexer/metadata.py): memory-mapped Arrow IPC, zero-copy."""
    url = _url(root, entry.metadata_path)
    if verify:
        verify_file(url, entry.metadata_sha256)
    return open_table(url)


def load_vectors(root: str, entry: SegmentEntry | ShardEntry, verify: bool = True) -> np.ndarray | None:
    """The shard's re-rank vectors ((count, dim) float16/float32, rows aligned with the
    metadata) memory-mapped read-only: only the rows a query re-ranks are read. None when the
    version keeps no vectors."""
    if not entry.vectors_path:
        return None
    url = _url(root, entry.vectors_path)
    if verify:
        verify_file(url, entry.vectors_sha256)
    return np.load(storage.localize(url, cache="index"), mmap_mode="r", allow_pickle=False)


def load_key_index(root: str, entry: SegmentEntry, verify: bool = True) -> np.ndarray:
    """A segment's key index ((n, 2) int64 (key hash, id), indexer/keyindex.py), memory-mapped
    read-only after its checksum is verified. Raises ChecksumMismatch, ValueError when the
    segment has none."""
    if not entry.keys_path:
        raise ValueError(f"segment {entry.index_path} has no key index")
    url = _url(root, entry.keys_path)
    if verify:
        verify_file(url, entry.keys_sha256)
    return np.load(storage.localize(url, cache="index"), mmap_mode="r", allow_pickle=False)


def load_tombstones(root: str, entry: TombstoneEntry, verify: bool = True) -> np.ndarray:
    """A tombstone file's ids: sorted int64, read whole (they are few: compaction bounds them)."""
    url = _url(root, entry.path)
    if verify:
        verify_file(url, entry.sha256)
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        return np.load(handle, allow_pickle=False).astype(np.int64, copy=False)


def load_trained(root: str, manifest: IndexManifest) -> bytes:
    """The version's empty trained index (coarse quantizer and codebooks), serialized: what
    every new segment is encoded with. Versions written before it was stored derive it from
    shard 0's base segment (read whole, once; the next edit stores it)."""
    if manifest.trained_path:
        url = _url(root, manifest.trained_path)
        verify_file(url, manifest.trained_sha256)
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            return handle.read()
    index = load_index(root, manifest.shards[0].base, mmap=False)
    index.reset()
    return faiss.serialize_index(index).tobytes()


def verify_version(root: str, manifest: IndexManifest) -> int:
    """Check every file of a version; returns how many were checked (raises on a mismatch)."""
    files = manifest.files()
    for path, digest in files:
        verify_file(_url(root, path), digest)
    return len(files)
