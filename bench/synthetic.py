"""Seeded synthetic embeddings with cluster structure, written as an embedding batch."""
from __future__ import annotations

import os

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


def write_batch(root: str, batch: str, vectors: np.ndarray, parts: int, first_id: int = 1) -> None:
    directory = embeddings_dir(root, batch)
    os.makedirs(directory, exist_ok=True)
    files = []
    for number, rows in enumerate(np.array_split(np.arange(len(vectors)), parts)):
        ids = (rows + first_id).tolist()
        keys = [f"{batch}/{i}" for i in ids]
        table = pa.Table.from_batches([embedding_batch(
            ids, keys, [str(i % 1000) for i in ids], keys, [""] * len(ids), vectors[rows], "synthetic")])
        name = f"part-bench-{number:05d}.parquet"
        pq.write_table(table, os.path.join(directory, name))
        files.append({"path": name, "rows": len(rows)})
    BatchManifest(batch, "bench", "", "synthetic", vectors.shape[1], files=files).write(root)
