"""Seeded synthetic embeddings with cluster structure, written as an embedding batch.

``mixture``: isotropic clusters (kept for older callers and the tests). ``decaying``: clusters
in a space whose variance decays with the dimension, as learned embeddings' spectra do, generated
chunk by chunk so that any count fits in bounded memory (``decaying_chunks``), and written
straight to Parquet parts (``write_batch_chunks``).
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import BatchManifest, embeddings_dir
from pipelines.schema import embedding_batch


def mixture(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random centres: IVF has structure to find, as in real data."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        chunk = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        out[start:start + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


class DecayingSpace:
    """A seeded distribution of unit vectors: ``clusters`` centres plus noise, both scaled per
    dimension by (1 + i) ** -decay (a decaying spectrum: a few directions carry most of the
    variance), then turned by a seeded random rotation (real spectra are not axis-aligned, and an
    axis-aligned one would favour some PQ sub-spaces), then L2-normalised.

    ``stream`` picks an independent sample of the same distribution: stream 0 for the memory,
    stream 1 for held-out queries (not in the memory, but from the same clusters)."""

    def __init__(self, dim: int, seed: int, clusters: int = 1000, noise: float = 0.6,
                 decay: float = 0.5) -> None:
        rng = np.random.default_rng([seed, 0])
        self.dim, self.seed, self.noise = dim, seed, noise
        self.scale = ((1.0 + np.arange(dim)) ** -decay).astype(np.float32)
        self.centres = rng.standard_normal((clusters, dim)).astype(np.float32) * self.scale
        rotation, upper = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.rotation = (rotation * np.sign(np.diag(upper))).astype(np.float32)  # Haar-distributed

    def chunk(self, count: int, stream: int, number: int) -> np.ndarray:
        """Chunk ``number`` of ``stream``: (count, dim) float32 unit vectors, a pure function
        of (seed, stream, number, count)."""
        rng = np.random.default_rng([self.seed, 1 + stream, number])
        picked = self.centres[rng.integers(0, len(self.centres), count)]
        noise = rng.standard_normal((count, self.dim), dtype=np.float32) * (self.noise * self.scale)
        vectors = (picked + noise) @ self.rotation
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def chunks(self, count: int, stream: int = 0, chunk: int = 100_000) -> Iterator[np.ndarray]:
        for number, start in enumerate(range(0, count, chunk)):
            yield self.chunk(min(chunk, count - start), stream, number)


def decaying_chunks(count: int, dim: int, seed: int, chunk: int = 100_000, clusters: int = 1000,
                    stream: int = 0) -> Iterator[np.ndarray]:
    """``count`` vectors of ``DecayingSpace(dim, seed, clusters)``, ``chunk`` rows at a time."""
    return DecayingSpace(dim, seed, clusters).chunks(count, stream, chunk)


def decaying(count: int, dim: int, seed: int, chunk: int = 100_000, clusters: int = 1000,
             stream: int = 0) -> np.ndarray:
    """``decaying_chunks`` as one (count, dim) float32 array (same rows for the same chunk)."""
    out = np.empty((count, dim), dtype=np.float32)
    start = 0
    for part in decaying_chunks(count, dim, seed, chunk, clusters, stream):
        out[start:start + len(part)] = part
        start += len(part)
    return out


def write_part(directory: str, batch: str, number: int, vectors: np.ndarray, first_id: int) -> dict:
    """One Parquet part of synthetic rows: ids first_id ..., key = source = "batch/id",
    label = id mod 1000. Returns its manifest entry."""
    ids = list(range(first_id, first_id + len(vectors)))
    keys = [f"{batch}/{i}" for i in ids]
    table = pa.Table.from_batches([embedding_batch(
        ids, keys, [str(i % 1000) for i in ids], keys, [""] * len(ids), vectors, "synthetic")])
    name = f"part-bench-{number:05d}.parquet"
    pq.write_table(table, os.path.join(directory, name))
    return {"path": name, "rows": len(vectors)}


def write_batch_chunks(root: str, batch: str, chunks: Iterable[np.ndarray], first_id: int = 1) -> int:
    """Write each chunk as one Parquet part of batch ``batch`` (ids consecutive from
    ``first_id``), then the batch manifest; only one chunk is in memory at a time. Returns the
    row count."""
    directory = embeddings_dir(root, batch)
    os.makedirs(directory, exist_ok=True)
    files, dim, next_id = [], None, first_id
    for number, vectors in enumerate(chunks):
        dim = vectors.shape[1]
        files.append(write_part(directory, batch, number, vectors, next_id))
        next_id += len(vectors)
    if dim is None:
        raise ValueError("no vectors to write")
    BatchManifest(batch, "bench", "", "synthetic", dim, files=files).write(root)
    return next_id - first_id


def write_batch(root: str, batch: str, vectors: np.ndarray, parts: int, first_id: int = 1) -> None:
    write_batch_chunks(root, batch, (vectors[rows] for rows in np.array_split(np.arange(len(vectors)), parts)),
                       first_id)
