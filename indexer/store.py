"""Load a published version's shards, verifying every file against the manifest first."""
from __future__ import annotations

import io
import os

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.checksums import verify_file
from indexer.layout import index_root, read_latest
from indexer.manifest import IndexManifest, ShardEntry
from pipelines import storage
from pipelines.encoders.weights import localize


def resolve_version(root: str, version: str | None = None) -> IndexManifest:
    """The named version, or the one LATEST points at."""
    version = version or read_latest(root)
    if version is None:
        raise FileNotFoundError(f"no index under {root}/index (run `vmem index build`)")
    return IndexManifest.read(root, version)


def _read_bytes(url: str) -> bytes:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        return handle.read()


def load_index(root: str, entry: ShardEntry, verify: bool = True, mmap: bool = True) -> faiss.Index:
    """Verify the checksum, then read the index, memory-mapped where the file is local."""
    url = storage.join(index_root(root), entry.index_path)
    if verify:
        verify_file(url, entry.index_sha256)
    local = localize(url)
    flags = faiss.IO_FLAG_MMAP if mmap else 0
    if not os.path.exists(local):
        raise FileNotFoundError(url)
    return faiss.read_index(local, flags)


def load_metadata(root: str, entry: ShardEntry, verify: bool = True) -> pa.Table:
    url = storage.join(index_root(root), entry.metadata_path)
    if verify:
        verify_file(url, entry.metadata_sha256)
    return pq.read_table(io.BytesIO(_read_bytes(url)))


def load_vectors(root: str, entry: ShardEntry, verify: bool = True) -> np.ndarray | None:
    if not entry.vectors_path:
        return None
    url = storage.join(index_root(root), entry.vectors_path)
    if verify:
        verify_file(url, entry.vectors_sha256)
    return np.load(io.BytesIO(_read_bytes(url)), allow_pickle=False)


def verify_version(root: str, manifest: IndexManifest) -> int:
    """Check every file of a version; returns how many were checked (raises on a mismatch)."""
    checked = 0
    for entry in manifest.shards:
        for path, digest in ((entry.index_path, entry.index_sha256),
                             (entry.metadata_path, entry.metadata_sha256),
                             (entry.vectors_path, entry.vectors_sha256)):
            if path:
                verify_file(storage.join(index_root(root), path), digest)
                checked += 1
    return checked
