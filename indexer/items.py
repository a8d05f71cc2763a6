"""The embedding an item was indexed with, read back from its embedding batch: the query of a
"more like this" search (``item_id`` / ``item_key`` on /v1/neighbors and /v1/classify).

Segments hold PQ codes, not vectors (unless the memory keeps re-rank vectors), so the exact
vector comes from the batch the item's metadata names (indexer.edit.resolve_forget resolves ids
and keys to live items with their batch). Per batch file, the id column is read row group by row
group and the embedding column only of the row groups holding an asked row (pyarrow
``ParquetFile.read_row_group``): the cost is the batch's ids plus one row group per item, not
the batch. numpy and pyarrow only.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.manifest import BatchManifest, embeddings_dir
from pipelines.schema import conform_embeddings, embeddings_matrix


class ItemVectorMissing(LookupError):
    """An item's row is not in the batch its metadata names (the batch was removed or rewritten)."""


def item_vectors(root: str, ids: np.ndarray, batches: list[str]) -> np.ndarray:
    """(n, dim) float32: the stored embedding of each item ``ids[i]`` (int64), read from the
    embedding batch ``batches[i]`` of the memory at ``root``. Raises ItemVectorMissing naming
    the ids not found in their batch."""
    ids = np.asarray(ids, dtype=np.int64)
    found: dict[int, np.ndarray] = {}
    for batch in sorted(set(batches)):
        wanted = np.unique(ids[[b == batch for b in batches]])
        manifest = BatchManifest.read(root, batch)
        for entry in manifest.files:
            if np.isin(wanted, list(found)).all():
                break
            fs, path = storage.filesystem(storage.join(embeddings_dir(root, batch), entry["path"]))
            with fs.open(path, "rb") as handle:
                reader = pq.ParquetFile(handle)
                for group in range(reader.num_row_groups):
                    group_ids = reader.read_row_group(group, columns=["id"]).column("id").to_numpy()
                    hits = np.flatnonzero(np.isin(group_ids, wanted))
                    if not len(hits):
                        continue
                    table = conform_embeddings(reader.read_row_group(group, columns=["embedding"]))
                    vectors = embeddings_matrix(table.take(hits))
                    for item, vector in zip(group_ids[hits].tolist(), vectors):
                        found[item] = vector
    missing = sorted(set(ids.tolist()) - set(found))
    if missing:
        raise ItemVectorMissing(f"items {missing[:5]} are not in the embedding batches their "
                                f"metadata names")
    return np.stack([found[i] for i in ids.tolist()]).astype(np.float32)
