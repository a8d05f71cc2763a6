"""Online edits, persisted through the indexer: new items become an embedding batch and an
``add`` version; forgetting is the indexer's verified delete. Runs in the router's thread pool."""
from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from indexer.edit import ForgetRequest, run_add, run_delete
from indexer.executor import LocalExecutor
from indexer.manifest import IndexManifest
from pipelines.manifest import write_embedding_batch
from pipelines.records import stable_id
from pipelines.schema import embedding_batch


def write_online_batch(root: str, items, vectors: np.ndarray, encoder: str) -> str:
    """The added items as an ordinary embedding batch, so rebuilds and audits see them too."""
    batch = "online-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    table = pa.Table.from_batches([embedding_batch(
        [stable_id(item.key) for item in items], [item.key for item in items],
        [item.label for item in items], [item.source or f"api:{item.key}" for item in items],
        [hashlib.sha256(item.image_base64.encode()).hexdigest() for item in items],
        vectors, encoder)])
    write_embedding_batch(root, batch, table, encoder, "api")
    return batch


def add_items(root: str, items, vectors: np.ndarray, encoder: str) -> IndexManifest:
    return run_add(root, [write_online_batch(root, items, vectors, encoder)], LocalExecutor())


def forget_items(root: str, body) -> tuple[IndexManifest, dict]:
    return run_delete(root, ForgetRequest(ids=body.ids, keys=body.keys, labels=body.labels),
                      LocalExecutor())
