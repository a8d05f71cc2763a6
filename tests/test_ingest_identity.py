"""Issue 12 kind 1: item identity across runs. Ids hash batch + shard + key, so two
img2dataset runs numbering keys from 000000000 are both kept; a re-run gives the same ids;
duplicate content is reported (or skipped with --dedupe content); delete by key forgets every
item under that key; memories built with key-only ids still load and delete by key."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, run_add, run_delete
from indexer.executor import LocalExecutor
from pipelines.data.shard_writer import shard_bytes
from pipelines.ingest import IngestConfig, main, run_ingest
from pipelines.manifest import BatchManifest, read_embeddings, read_rejected, write_embedding_batch
from pipelines.records import ID_SCHEME_ITEM, ID_SCHEME_KEY, api_id, item_id, item_ids, stable_id
from pipelines.schema import embedding_batch

LOCAL = LocalExecutor()
KEYS = [f"{i:09d}" for i in range(3)]  # img2dataset numbers keys within each run


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buffer, "JPEG")
    return buffer.getvalue()


def run_shard(path, base, label: str, keys=KEYS, extra=()):
    """An img2dataset-style shard: keys 000000000.., .jpg + .cls, colours from ``base``."""
    samples = [(key, {"jpg": jpeg(tuple(c + 10 * i for c in base)), "cls": label.encode()})
               for i, key in enumerate(keys)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(shard_bytes(samples + list(extra)))
    return path


def ingest(shards, memory, batch, **options):
    return run_ingest(IngestConfig(inputs=[str(s) for s in shards], memory=str(memory),
                                   batch=batch, device="cpu", **options))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("i2d")
    a = run_shard(base / "run_a" / "00000.tar", (220, 30, 30), "apple")
    b = run_shard(base / "run_b" / "00000.tar", (30, 30, 220), "berry")
    memory = base / "mem"
    results = {"run-a": ingest([a], memory, "run-a"), "run-b": ingest([b], memory, "run-b")}
    return SimpleNamespace(base=base, a=a, b=b, memory=memory, results=results)


def test_ids_hash_batch_shard_and_key():
    assert item_id("b", "s", "k") == item_id("b", "s", "k")
    assert len({item_id("b", "s", "k"), item_id("c", "s", "k"), item_id("b", "t", "k"),
                item_id("b", "s", "j"), stable_id("k"), api_id("k")}) == 6
    assert item_id("a/b", "", "c") != item_id("a", "b/", "c")  # parts never run together
    assert 0 <= item_id("b", "s", "k") < 2 ** 63
    keys = ["k", "0/1", 'quote"d', "ünï", ""]
    assert item_ids("bätch", "gs://x/y.npy", keys) == [item_id("bätch", "gs://x/y.npy", k) for k in keys]


def test_two_runs_with_the_same_keys_are_both_kept_and_build(two_runs):
    tables = {b: read_embeddings(str(two_runs.memory), b) for b in ("run-a", "run-b")}
    for batch, shard in (("run-a", two_runs.a), ("run-b", two_runs.b)):
        table = tables[batch]
        assert sorted(table.column("key").to_pylist()) == KEYS
        assert sorted(table.column("id").to_pylist()) == sorted(
            item_id(batch, str(shard), key) for key in KEYS)
        manifest = BatchManifest.read(str(two_runs.memory), batch)
        assert manifest.id_scheme == ID_SCHEME_ITEM and manifest.counts["embedded"] == 3
        assert manifest.counts["duplicate_content"] == 0  # different images, same keys
    ids = tables["run-a"].column("id").to_pylist() + tables["run-b"].column("id").to_pylist()
    assert len(set(ids)) == 6
    built = run_build(BuildConfig(str(two_runs.memory)), LOCAL)
    assert built.count == 6 and sorted(built.batches) == ["run-a", "run-b"]

    # delete by key: the key names one item in each batch; both are forgotten
    manifest, report = run_delete(str(two_runs.memory), ForgetRequest(keys=["000000000"]), LOCAL)
    assert report["removed"] == 2 and manifest.count == 4
    assert sorted(report["ids"]) == sorted(item_id(b, str(s), "000000000")
                                           for b, s in (("run-a", two_runs.a), ("run-b", two_runs.b)))


def test_one_ingest_of_both_runs_keeps_all_six(two_runs):
    result = ingest([two_runs.a, two_runs.b], two_runs.base / "mem2", "both")
    counts = result.manifest.counts
    assert (counts["read"], counts["embedded"], counts["rejected"]) == (6, 6, 0)
    table = read_embeddings(str(two_runs.base / "mem2"), "both")
    assert len(set(table.column("id").to_pylist())) == 6


def test_reingesting_the_same_batch_gives_the_same_ids(two_runs, tmp_path):
    again = ingest([two_runs.a], two_runs.memory, "run-a")
    first = two_runs.results["run-a"]
    assert again.manifest.run_id != first.manifest.run_id
    table = read_embeddings(str(two_runs.memory), "run-a")
    assert table.num_rows == 3  # replaced, not appended
    assert sorted(table.column("id").to_pylist()) == sorted(
        item_id("run-a", str(two_runs.a), key) for key in KEYS)
    assert again.manifest.counts["duplicate_content"] == 0  # not a duplicate of itself


def test_duplicate_content_is_reported_by_default_and_skipped_on_request(two_runs):
    # run_c repeats run_a's first image under two other keys, and has twins of its own
    copied, twin = jpeg((220, 30, 30)), jpeg((90, 90, 10))
    c = run_shard(two_runs.base / "run_c" / "00000.tar", (30, 220, 30), "cherry", keys=["new"],
                  extra=[("copy1", {"jpg": copied, "cls": b"apple"}),
                         ("copy2", {"jpg": copied, "cls": b"apple"}),
                         ("twin1", {"jpg": twin, "cls": b"olive"}),
                         ("twin2", {"jpg": twin, "cls": b"olive"})])
    memory = str(two_runs.memory)
    result = ingest([c], memory, "run-c")
    counts = result.manifest.counts
    assert (counts["read"], counts["embedded"], counts["rejected"]) == (5, 5, 0)
    assert counts["duplicate_content"] == 3 and "duplicate_content=3" in result.summary()
    [listing] = result.manifest.duplicate_urls(memory)
    rows = {r["key"]: r for r in pq.read_table(listing).to_pylist()}
    assert set(rows) == {"copy1", "copy2", "twin2"}
    assert (rows["copy1"]["same_as_batch"], rows["copy1"]["same_as_key"]) == ("run-a", "000000000")
    assert (rows["twin2"]["same_as_batch"], rows["twin2"]["same_as_key"]) == ("run-c", "twin1")
    assert read_rejected(memory, "run-c").num_rows == 0  # kept: reported, not rejected

    # --dedupe content: both copies skipped (policy rejections: the reject ratio does not apply)
    assert main(["--input", str(c), "--memory", memory, "--batch", "run-c", "--device", "cpu",
                 "--dedupe", "content", "--log-level", "WARNING"]) == 0
    manifest = BatchManifest.read(memory, "run-c")
    assert (manifest.counts["embedded"], manifest.counts["rejected"]) == (2, 3)
    assert manifest.counts["duplicate_content_skipped"] == 3 and manifest.duplicate_files == []
    assert sorted(read_embeddings(memory, "run-c").column("key").to_pylist()) == ["new", "twin1"]
    rejected = {r["key"]: r for r in read_rejected(memory, "run-c").to_pylist()}
    assert {k: (r["stage"], r["error_type"]) for k, r in rejected.items()} == {
        k: ("dedupe", "DuplicateContent") for k in ("copy1", "copy2", "twin2")}
    assert "'run-a' key '000000000'" in rejected["copy1"]["message"]
    assert "key 'twin1'" in rejected["twin2"]["message"]


def _synthetic_batch(root: str, name: str, keys: list[str], ids: list[int], scheme: str,
                     seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(len(keys), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.Table.from_batches([embedding_batch(
        ids, keys, [f"l{i % 2}" for i in range(len(keys))], [f"s/{k}" for k in keys],
        [f"h-{name}-{k}" for k in keys], vectors, "test-encoder")])
    write_embedding_batch(root, name, table, "test-encoder", "test", id_scheme=scheme)
    return vectors


def test_a_memory_built_with_key_ids_loads_and_deletes_by_key(tmp_path):
    root = str(tmp_path / "old")
    keys = [f"{i:09d}" for i in range(6)]
    _synthetic_batch(root, "old", keys, [stable_id(k) for k in keys], ID_SCHEME_KEY, 0)
    # as written before id schemes existed: no id_scheme (nor duplicate_files) in the manifest
    path = tmp_path / "old" / "embeddings" / "old" / "_manifest.json"
    stored = json.loads(path.read_text())
    del stored["id_scheme"], stored["duplicate_files"]
    path.write_text(json.dumps(stored))
    assert BatchManifest.read(root, "old").id_scheme == ID_SCHEME_KEY
    assert run_build(BuildConfig(root), LOCAL).count == 6

    # key-only ids: the key hashes to its id (fast path), ids are what they were
    _, report = run_delete(root, ForgetRequest(keys=["000000001"]), LOCAL)
    assert report["ids"] == [stable_id("000000001")]

    # a batch of the new scheme holding the same keys joins it; delete by key finds both
    new_ids = [item_id("new", "shard.tar", k) for k in keys]
    _synthetic_batch(root, "new", keys, new_ids, ID_SCHEME_ITEM, 1)
    assert run_add(root, ["new"], LOCAL).count == 11
    manifest, report = run_delete(root, ForgetRequest(keys=["000000002", "000000001"]), LOCAL)
    assert sorted(report["ids"]) == sorted([stable_id("000000002"), new_ids[2], new_ids[1]])
    assert manifest.count == 8 and report["not_found"]["keys"] == []


def test_online_adds_get_api_ids():
    from serving.editing import online_table

    items = [SimpleNamespace(key="000000000", label="apple", source="", image_base64=None)]
    table = online_table(items, np.eye(1, 8, dtype=np.float32), "test-encoder")
    assert table.column("id").to_pylist() == [api_id("000000000")]
    assert api_id("000000000") not in (stable_id("000000000"),
                                       item_id("run-a", "x.tar", "000000000"))
