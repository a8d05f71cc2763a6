"""Online edits, persisted through the indexer (no compaction inside an edit: the writer
compacts after the edit has returned, serving/writer.py): new items become an embedding batch and a
delta segment (indexer.edit.add_rows); forgetting is the indexer's tombstone delete. A failed
add removes the batch it wrote, so it leaves no trace (``vmem index gc`` collects what a
killed process leaves)."""
from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from indexer.edit import ForgetRequest, add_rows, run_delete
from indexer.executor import LocalExecutor
from indexer.manifest import IndexManifest
from pipelines import storage
from pipelines.manifest import ONLINE_PREFIX
from pipelines.manifest import write_embedding_batch
from pipelines.records import ID_SCHEME_API, api_id
from pipelines.schema import embedding_batch


def online_table(items, vectors: np.ndarray, encoder: str) -> pa.Table:
    """The added items as embedding-batch rows (boundary 1 schema). Ids are ``api_id(key)``
    (pipelines/records.py): the same key added twice is the same id, so a retried request is
    refused as a duplicate (409) instead of remembering the item twice; online ids never equal
    the ids of ingested items, whose ids hash batch + shard + key."""
    return pa.Table.from_batches([embedding_batch(
        [api_id(item.key) for item in items], [item.key for item in items],
        [item.label for item in items], [item.source or f"api:{item.key}" for item in items],
        [content_hash(item, vector) for item, vector in zip(items, vectors)],
        vectors, encoder)])


def content_hash(item, vector: np.ndarray) -> str:
    """SHA-256 of the image as sent, or of the float32 embedding when only that was sent."""
    data = (item.image_base64.encode() if item.image_base64 is not None
            else np.asarray(vector, dtype=np.float32).tobytes())
    return hashlib.sha256(data).hexdigest()


def write_online_batch(root: str, table: pa.Table, encoder: str) -> str:
    """The rows as an ordinary embedding batch, so rebuilds and audits see them too."""
    batch = ONLINE_PREFIX + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    write_embedding_batch(root, batch, table, encoder, "api", id_scheme=ID_SCHEME_API)
    return batch


def add_items(root: str, items, vectors: np.ndarray, encoder: str) -> IndexManifest:
    """Write the batch, then the delta segments and the version; on any failure remove the
    batch again and re-raise (nothing committed)."""
    table = online_table(items, vectors, encoder)
    batch = write_online_batch(root, table, encoder)
    meta = table.drop_columns([c for c in ("embedding", "encoder") if c in table.column_names])
    meta = meta.append_column("batch", pa.array([batch] * meta.num_rows, pa.string()))
    try:
        return add_rows(root, meta, np.asarray(vectors, dtype=np.float32), batch, policy=None)
    except BaseException:
        storage.remove(storage.join(root, "embeddings", batch))
        raise


def forget_items(root: str, body) -> tuple[IndexManifest, dict]:
    return run_delete(root, ForgetRequest(ids=body.ids, keys=body.keys, labels=body.labels),
                      LocalExecutor(progress=False), purge=bool(getattr(body, "purge", False)), policy=None)
