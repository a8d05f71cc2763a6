"""One shard-metadata schema (indexer.metadata.conform) and one Parquet schema at boundary 1:
batches written by the API and by Beam, with null labels and sources, and parts whose rows were
all forgotten, build together (issue 11, case I-build-after-forget)."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from indexer.forgotten import record_forgotten
from indexer.metadata import METADATA_SCHEMA, conform, with_weights
from indexer.reader import plan_inputs, read_part
from indexer.search import ShardedIndex
from pipelines.manifest import (BatchManifest, list_batches, read_embeddings, run_files,
                                write_embedding_batch)
from pipelines.records import stable_id
from pipelines.schema import embedding_batch, embedding_schema

DIM, ENCODER = 8, "test-encoder"


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def keys_of(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(n)]


def api_batch(root: str, name: str, keys: list[str], seed: int) -> None:
    """What serving.editing.write_online_batch writes, with the None labels and sources an
    API client may leave out: pipelines.schema.embedding_batch + write_embedding_batch."""
    n = len(keys)
    table = pa.Table.from_batches([embedding_batch(
        [stable_id(k) for k in keys], keys, [None] * n, [None] * n,
        [hashlib.sha256(k.encode()).hexdigest() for k in keys], unit_vectors(n, seed), ENCODER)])
    write_embedding_batch(root, name, table, ENCODER, "api")


def beam_batch(root: str, name: str, keys: list[str], seed: int) -> None:
    """A batch written by Beam's Parquet sink exactly as the ingest job configures it
    (pipelines.ingest_pipeline.embeddings_sink), then committed by its manifest as run_ingest does."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.ingest_pipeline import LOCAL_RUNNER, embeddings_sink
    from pipelines.manifest import embeddings_dir

    n, run_id = len(keys), "run1"
    table = pa.Table.from_batches([embedding_batch(
        [stable_id(k) for k in keys], keys, [f"label-{i % 3}" for i in range(n)],
        [f"file:///data/{k}.png" for k in keys], ["h"] * n, unit_vectors(n, seed), ENCODER)])
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | beam.Create([table]) | embeddings_sink(root, name, run_id, DIM)
    files = run_files(embeddings_dir(root, name), run_id)
    BatchManifest(batch=name, run_id=run_id, created="2026-01-01T00:00:00+00:00", encoder=ENCODER,
                  dim=DIM, files=files, counts={"read": n, "embedded": n, "rejected": 0}).write(root)


def foreign_batch(root: str, name: str, keys: list[str], seed: int) -> None:
    """A batch written by another tool with pyarrow defaults: all-None columns stored as
    Arrow type null, lists with the compliant child name ("element")."""
    from pipelines import storage
    from pipelines.manifest import embeddings_dir

    n = len(keys)
    flat = pa.array(unit_vectors(n, seed).reshape(-1))
    table = pa.table({"id": pa.array([stable_id(k) for k in keys], pa.int64()), "key": keys,
                      "label": [None] * n, "source": [None] * n, "content_hash": [None] * n,
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM),
                      "encoder": [ENCODER] * n})
    assert table.schema.field("label").type == pa.null()
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(storage.join(embeddings_dir(root, name), "part-x-00000.parquet"),
                               sink.getvalue().to_pybytes())
    BatchManifest(batch=name, run_id="x", created="2026-01-01T00:00:00+00:00", encoder=ENCODER,
                  dim=DIM, files=[{"path": "part-x-00000.parquet", "rows": n}]).write(root)


# ---- conform ------------------------------------------------------------------------------

def test_conform_types_null_columns_and_adds_missing_ones():
    table = pa.table({"id": pa.array([3, 1], pa.int64()), "label": pa.nulls(2),
                      "batch": pa.array([None, None])})
    out = conform(table)
    assert out.schema == METADATA_SCHEMA
    assert out.column("label").to_pylist() == [None, None]
    assert out.column("source").to_pylist() == [None, None]  # missing: typed nulls
    assert out.column("weight").to_pylist() == [1.0, 1.0]  # missing weight: unpruned
    empty = conform(pa.table({"id": pa.array([], pa.int64()), "batch": pa.array([])}))
    assert empty.schema == METADATA_SCHEMA and empty.num_rows == 0
    assert pa.concat_tables([out, empty]).num_rows == 2


def test_conform_casts_equivalent_types_and_keeps_values():
    table = pa.table({
        "id": pa.array([5, 7], pa.int32()),
        "label": pa.array(["a", "b"]).dictionary_encode(),
        "key": pa.array(["k5", "k7"], pa.large_string()),
        "weight": pa.array([0.5, 2.0], pa.float32()),
        "batch": pa.array(["b", "b"]),
    })
    out = conform(table)
    assert out.schema == METADATA_SCHEMA
    assert out.column("id").to_pylist() == [5, 7]
    assert out.column("label").to_pylist() == ["a", "b"]
    assert out.column("key").to_pylist() == ["k5", "k7"]
    assert out.column("weight").to_pylist() == [0.5, 2.0]
    assert with_weights(table).equals(out)


def test_conform_keeps_right_columns_zero_copy_and_drops_column_order_and_metadata():
    table = conform(pa.table({"id": pa.array([1, 2], pa.int64()), "key": ["a", "b"]}))
    reordered = table.select(list(reversed(table.column_names))).replace_schema_metadata({"x": "y"})
    out = conform(reordered)
    assert out.schema.names == METADATA_SCHEMA.names and out.schema.metadata is None
    assert (out.column("key").chunk(0).buffers()[2].address
            == table.column("key").chunk(0).buffers()[2].address)


def test_conform_drops_the_embedding_batch_columns_metadata_does_not_hold():
    batch = pa.Table.from_batches([embedding_batch([1, 2], ["a", "b"], ["x", None], [None, None],
                                                   ["h", "h"], np.eye(2, DIM, dtype=np.float32),
                                                   ENCODER)])
    out = conform(batch)
    assert out.schema == METADATA_SCHEMA and out.column("label").to_pylist() == ["x", None]


@pytest.mark.parametrize("table, column", [
    (pa.table({"id": pa.array([1], pa.int64()), "label": pa.array([3], pa.int64())}), "label"),
    (pa.table({"id": pa.array(["1"]), "label": ["a"]}), "id"),
    (pa.table({"id": pa.array([1], pa.int64()), "weight": ["heavy"]}), "weight"),
    (pa.table({"id": pa.array([2 ** 63], pa.uint64())}), "id"),  # a cast that would overflow
    (pa.table({"id": pa.array([1, None], pa.int64())}), "id"),
    (pa.table({"label": ["a"]}), "id"),
    (pa.table({"id": pa.array([1], pa.int64()), "colour": ["red"]}), "colour"),
])
def test_conform_refuses_a_real_conflict_naming_the_column(table, column):
    with pytest.raises(ValueError, match=repr(column) if column != "colour" else column):
        conform(table)


# ---- boundary 1: one Parquet schema whichever writer ---------------------------------------

def test_api_and_beam_batches_have_one_parquet_schema(tmp_path):
    root = str(tmp_path / "memory")
    api_batch(root, "online-1", keys_of("api", 5), seed=1)
    beam_batch(root, "beam", keys_of("beam", 7), seed=2)
    files = {name: BatchManifest.read(root, name).embedding_urls(root)[0]
             for name in ("online-1", "beam")}
    schemas = {name: pq.read_schema(url) for name, url in files.items()}
    for schema in schemas.values():
        assert schema.equals(embedding_schema(DIM))
    assert (pq.ParquetFile(files["online-1"]).schema
            .equals(pq.ParquetFile(files["beam"]).schema))
    # tables of both kinds (and of files other tools wrote) concatenate as read
    foreign_batch(root, "foreign", keys_of("foreign", 3), seed=3)
    table = pa.concat_tables([read_embeddings(root, name) for name in list_batches(root)])
    assert table.num_rows == 15 and table.schema.equals(embedding_schema(DIM))


# ---- the indexer: every part conformed, a rebuild after add + forget -----------------------

def test_a_part_whose_rows_were_all_forgotten_reads_typed(tmp_path):
    root = str(tmp_path / "memory")
    keys = keys_of("api", 4)
    api_batch(root, "online-1", keys, seed=1)
    record_forgotten(root, "v1", np.array([stable_id(k) for k in keys]))
    [part] = plan_inputs(root).parts
    meta, vectors = read_part(part)
    assert meta.num_rows == 0 and vectors.shape == (0, DIM)
    assert meta.schema == METADATA_SCHEMA  # batch was type null here before conform


def test_rebuild_after_api_adds_and_forgetting_them(tmp_path):
    """I-build-after-forget: a Beam batch, API batches (None labels and sources), one of them
    entirely forgotten and one in part, and a batch of null-typed columns: the full build
    succeeds with every row not forgotten, in 2 shards, and keeps the None labels."""
    root = str(tmp_path / "memory")
    beam_keys, kept_api, gone_api, foreign_keys = (keys_of("beam", 40), keys_of("api", 6),
                                                   keys_of("gone", 3), keys_of("foreign", 5))
    beam_batch(root, "beam", beam_keys, seed=2)
    api_batch(root, "online-1", kept_api, seed=1)
    api_batch(root, "online-2", gone_api, seed=4)
    foreign_batch(root, "foreign", foreign_keys, seed=3)
    executor = LocalExecutor()
    first = run_build(BuildConfig(root, num_shards=2), executor)
    assert first.count == 54
    forgotten = gone_api + kept_api[:2] + beam_keys[:1]  # what an unlearning delete records
    record_forgotten(root, first.version, np.array([stable_id(k) for k in forgotten]))

    rebuilt = run_build(BuildConfig(root, num_shards=2), executor)

    assert rebuilt.count == 54 - len(forgotten) == 48
    meta = ShardedIndex(root, rebuilt).metadata()
    assert meta.num_rows == 48
    assert sorted(meta.column("key").to_pylist()) == sorted(
        beam_keys[1:] + kept_api[2:] + foreign_keys)
    by_key = dict(zip(meta.column("key").to_pylist(), meta.column("label").to_pylist()))
    assert by_key[kept_api[2]] is None and by_key[beam_keys[1]] == "label-1"
    assert set(meta.column("batch").to_pylist()) == {"beam", "online-1", "foreign"}
