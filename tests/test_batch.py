"""Batch classification on Ray Data and `vmem eval`, against the in-process reference."""
from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from indexer.search import ShardedIndex
from serving.aggregation import Aggregator
from serving.answers import answer, merge_answers
from serving.batch import export_neighbour_json, main, read_predictions, run_classify
from serving.decision import decide
from serving.evaluate import accuracy_by_k
from tests.indexer_helpers import load_embeddings


@pytest.fixture(scope="module")
def classified(embedded_memory, tmp_path_factory, ray_executor):
    import shutil

    root = str(tmp_path_factory.mktemp("batch") / "memory")
    shutil.copytree(embedded_memory / "memory", root)
    manifest = run_build(BuildConfig(root, num_shards=2), LocalExecutor())
    out = str(tmp_path_factory.mktemp("predictions"))
    summary = run_classify(root, str(embedded_memory / "queries"), out, k=100, aggregator="rank")
    return root, manifest, out, summary


def test_batch_predictions_equal_the_router_code_in_process(classified, embedded_memory):
    root, manifest, out, summary = classified
    table = read_predictions(out).sort_by("key")
    assert summary["queries"] == table.num_rows == 200 and summary["version"] == manifest.version
    ids, vectors, labels = load_embeddings(str(embedded_memory / "queries"))
    index = ShardedIndex(root, manifest)
    merged = merge_answers([answer(s, vectors, 100) for s in index.shards], 100)
    expected = {int(i): d.label for i, d in zip(ids, decide(merged.ids, merged.scores, merged.meta,
                                                             Aggregator("rank")))}
    assert {r["query_id"]: r["predicted"] for r in table.to_pylist()} == expected
    accuracy = np.mean([expected[int(i)] == l for i, l in zip(ids, labels)])
    assert summary["accuracy"] == pytest.approx(accuracy)
    assert accuracy > 0.6  # Fashion-MNIST with 60 images per class in memory, ImageNet features
    assert all(len(n) == 100 for n in table.column("neighbour_ids").to_pylist())


def test_eval_reports_every_aggregator_at_every_k(classified):
    _, _, out, summary = classified
    report = accuracy_by_k(out, max_k=100)
    rows = report["aggregators"]
    assert set(rows) == {"plurality", "distance", "softmax", "rank"}
    assert all(len(row["accuracy_at_k"]) == 100 for row in rows.values())
    # k = 1 is the nearest neighbour's label for every aggregator.
    assert len({row["accuracy_at_k"][0] for row in rows.values()}) == 1
    # The same neighbours, voted by rank at k = 100, give classify's own accuracy.
    assert rows["rank"]["accuracy_at_k"][99] == pytest.approx(summary["accuracy"])
    assert rows["rank"]["best_accuracy"] >= rows["rank"]["accuracy_at_k"][0]


def test_neighbour_json_export_has_the_paper_schema(classified, tmp_path):
    _, _, out, _ = classified
    path = str(tmp_path / "memory-fmnist_msplit-train_query-fmnist_qsplit-test_efficientnet-lite0_full_neighbor_info.json")
    assert export_neighbour_json(out, path, "efficientnet-lite0") == 200
    document = json.loads(open(path).read())
    entry = next(iter(document.values()))
    assert set(entry) == {"featurizer", "image_id", "image_class", "neighbor_image_ids",
                          "neighbor_classes", "neighbor_distances"}
    assert len(entry["neighbor_image_ids"]) == len(entry["neighbor_classes"]) == 100
    assert entry["neighbor_distances"] == sorted(entry["neighbor_distances"])


def test_batch_rerank_and_eval_over_predictions(classified, embedded_memory, tmp_path):
    from experiments.cli import main as eval_main
    from serving.rerank import make_reranker, rerank_answer

    root, manifest, _, _ = classified
    out = str(tmp_path / "reranked")
    summary = run_classify(root, str(embedded_memory / "queries"), out, k=50, rerank="prototype")
    assert summary["rerank"] == "prototype"
    table = read_predictions(out).sort_by("key")
    ids, vectors, _ = load_embeddings(str(embedded_memory / "queries"))
    index = ShardedIndex(root, manifest)
    merged = merge_answers([answer(s, vectors, 50, with_vectors=True) for s in index.shards], 50)
    expected = rerank_answer(make_reranker("prototype"), vectors, merged)
    by_query = {r["query_id"]: r["neighbour_ids"] for r in table.to_pylist()}
    assert all(by_query[int(q)] == expected.ids[i].tolist() for i, q in enumerate(ids))
    # `vmem eval aggregation --predictions` scores a classify run and writes the report.
    report = tmp_path / "report"
    assert eval_main(["aggregation", "--predictions", out, "--k", "50", "--out", str(report)]) == 0
    result = json.loads((report / "aggregation.json").read_text())
    assert result["data"]["queries"] == 200 and (report / "index.html").exists()


@pytest.mark.parametrize("options, error", [
    (["--k", "0"], "argument --k: k must be between 1 and 1000, not 0"),
    (["--k", "-1"], "argument --k: k must be between 1 and 1000, not -1"),
    (["--k", "100000"], "argument --k: k must be between 1 and 1000, not 100000"),
    (["--k", "ten"], "argument --k: k must be an integer, not 'ten'"),
    (["--aggregator", "rank", "--parameter", "-1"], "--parameter -1.0: rank voting needs alpha >= 0.1"),
    (["--aggregator", "softmax", "--parameter", "0"], "--parameter 0.0: softmax voting needs tau > 0"),
    (["--aggregator", "distance", "--parameter", "nan"],
     "--parameter nan: the aggregator's parameter must be a finite number, not nan"),
])
def test_k_and_the_parameter_are_checked_before_anything_runs(tmp_path, capsys, options, error):
    """`vmem classify` takes k in 1 ... MAX_K, the HTTP API's default limit (k = 0 reported
    accuracy 0.0, k = -1 failed in a Ray task, k = 100000 overflowed an Arrow string column),
    and an aggregator parameter the aggregator accepts: one usage line, exit 2, nothing read."""
    with pytest.raises(SystemExit) as exited:
        main(["--memory", str(tmp_path / "nomem"), "--queries", str(tmp_path / "noq"),
              "--out", str(tmp_path / "out"), *options])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"vmem classify: error: {error}"
    assert not (tmp_path / "out").exists()
    from serving.options import MAX_K, ServingOptions

    assert MAX_K == ServingOptions(memory="m").max_k == 1000
