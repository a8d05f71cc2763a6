"""Query by an item of the memory ("more like this"): its stored embedding read back from its
embedding batch (indexer/items.py) and resolved by id or key in the served version
(Router._item_vectors): exact vectors, files with several row groups, ambiguous keys, items
that are not (or no longer) in the memory."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, run_delete
from indexer.executor import LocalExecutor
from indexer.items import ItemVectorMissing, item_vectors
from pipelines.manifest import BatchManifest, embeddings_dir
from pipelines.schema import embedding_batch


def write(root: str, batch: str, ids: list[int], keys: list[str], vectors: np.ndarray,
          row_group_size: int) -> None:
    directory = embeddings_dir(root, batch)
    os.makedirs(directory, exist_ok=True)
    table = pa.Table.from_batches([embedding_batch(ids, keys, ["a"] * len(ids), keys, [""] * len(ids),
                                                   vectors, "synthetic")])
    pq.write_table(table, os.path.join(directory, "part-0.parquet"), row_group_size=row_group_size)
    BatchManifest(batch, "test", "", "synthetic", vectors.shape[1],
                  files=[{"path": "part-0.parquet", "rows": len(ids)}]).write(root)


@pytest.fixture
def memory(tmp_path):
    """Two batches of 300 rows (row groups of 64), both holding the key "shared"."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    root = str(tmp_path / "memory")
    keys = [f"k{i}" for i in range(600)]
    keys[5] = keys[305] = "shared"
    write(root, "first", list(range(1, 301)), keys[:300], vectors[:300], 64)
    write(root, "second", list(range(301, 601)), keys[300:], vectors[300:], 64)
    manifest = run_build(BuildConfig(root, num_shards=2), LocalExecutor())
    return root, manifest, vectors


def test_item_vectors_are_the_stored_embeddings(memory):
    root, _, vectors = memory
    ids = np.array([600, 1, 299, 130, 301, 130])  # both batches, several row groups, a repeat
    batches = ["second" if i > 300 else "first" for i in ids]
    np.testing.assert_array_equal(item_vectors(root, ids, batches), vectors[ids - 1])
    with pytest.raises(ItemVectorMissing, match="999"):
        item_vectors(root, np.array([999]), ["first"])


def router(root: str, manifest):
    from serving.router import Router

    self = SimpleNamespace(options=SimpleNamespace(memory=root), version=manifest.version)
    return lambda items: Router.func_or_class._item_vectors(self, items)


def test_items_are_resolved_by_id_or_key_in_the_served_version(memory):
    from serving.router import ApiError

    root, manifest, vectors = memory
    resolve = router(root, manifest)
    found = resolve([(42, None, "item_id"), (None, "k400", "queries.1.item_key")])
    np.testing.assert_array_equal(found, vectors[[41, 400]])  # key "k400" is row 400, id 401
    with pytest.raises(ApiError) as ambiguous:
        resolve([(None, "shared", "item_key")])
    assert (ambiguous.value.status, ambiguous.value.field) == (422, "item_key")
    assert "item_id" in ambiguous.value.message
    np.testing.assert_array_equal(resolve([(306, None, "item_id")]), vectors[[305]])
    with pytest.raises(ApiError) as missing:
        resolve([(10_000, None, "queries.0.item_id")])
    assert (missing.value.status, missing.value.field) == (404, "queries.0.item_id")
    # an unlearned item is no query any more, in the version that forgot it
    forgot, _ = run_delete(root, ForgetRequest(ids=[42]), LocalExecutor())
    with pytest.raises(ApiError) as gone:
        router(root, forgot)([(42, None, "item_id")])
    assert gone.value.status == 404
