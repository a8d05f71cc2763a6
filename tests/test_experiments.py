"""`vmem eval <experiment>` on a small real set (Fashion-MNIST through Beam, real FAISS versions):
each experiment's numbers are checked for what the paper's claim implies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import (aggregation, interpretability, label_noise, memory_size, new_classes, pruning,
                         reranking, unlearning)
from experiments.report import write_report
from experiments.results import Context, Result
from experiments.workbench import EmbeddedSet, Memories, per_class_sample, retrieve
from indexer.executor import LocalExecutor
from serving.rerank import Candidates, PrototypeReranker

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def context(embedded_memory, tmp_path_factory) -> Context:
    out = tmp_path_factory.mktemp("report")
    return Context(EmbeddedSet.load(str(embedded_memory / "memory")),
                   EmbeddedSet.load(str(embedded_memory / "queries")), str(out),
                   Memories(str(out / "work"), LocalExecutor()), k=100, seed=0, device="cpu")


def written(context: Context, result: Result) -> dict:
    """Write the result as the CLI does and read it back: JSON, and a real PNG beside it."""
    result.write(context.out)
    assert (Path(context.out) / result.plot).read_bytes().startswith(PNG)
    return json.loads((Path(context.out) / f"{result.experiment}.json").read_text())


def check(result: Result, name: str) -> bool:
    return next(c for c in result.checks if c.name.startswith(name)).passed


def test_embedded_set_and_seeded_sample(context):
    memory = context.memory
    assert len(memory) == 600 and len(memory.classes) == 10 and np.all(np.diff(memory.ids) > 0)
    first, again = per_class_sample(memory.labels, 3, 7), per_class_sample(memory.labels, 3, 7)
    assert np.array_equal(first, again) and first.sum() == 30
    assert not np.array_equal(first, per_class_sample(memory.labels, 3, 8))


def test_retrieval_equals_brute_force(context):
    root = context.full_memory()
    found = retrieve(root, context.queries.vectors[:20], 10)
    exact = np.argsort(-(context.queries.vectors[:20] @ context.memory.vectors.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(found.ids, context.memory.ids[exact])
    assert np.allclose(found.distances, 1 - np.take_along_axis(
        context.queries.vectors[:20] @ context.memory.vectors.T, exact, axis=1), atol=1e-5)


def test_aggregation_rank_decays_less_than_plurality(context):
    result = aggregation.run(context)
    data = written(context, result)["data"]["curves"]
    assert set(data) == {"plurality", "distance", "softmax", "rank"}
    assert all(len(row["accuracy_at_k"]) == 100 for row in data.values())
    assert len({row["accuracy_at_k"][0] for row in data.values()}) == 1  # k = 1: the nearest label
    assert check(result, "rank decays less")
    assert data["rank"]["accuracy_at_max_k"] > data["plurality"]["accuracy_at_max_k"]


def test_new_classes_are_learned_and_old_ones_unchanged(context):
    result = new_classes.run(context, ["Bag", "Trouser"])
    data = written(context, result)["data"]
    assert data["held_out"] == ["Bag", "Trouser"] and data["added"] == 120
    assert data["before"]["new"]["rank"]["best_accuracy"] == 0.0
    assert data["after"]["new"]["rank"]["accuracy_at_max_k"] >= 0.8
    assert abs(data["old_class_change"]) <= 0.02 and result.passed


def test_memory_size_error_falls_for_each_encoder(context):
    result = memory_size.run(context, ["efficientnet-lite0", "efficientnet-lite1"], [1, 10, 0])
    data = written(context, result)["data"]
    for encoder in ("efficientnet-lite0", "efficientnet-lite1"):
        sizes, accuracy = data["series"][encoder]
        assert sizes == [10, 100, 600]
        assert accuracy[0] < accuracy[1] < accuracy[2]
    # Lite1 was embedded by the Beam job from the batches' recorded input shards.
    assert (Path(context.memories.work) / "encoders" / "efficientnet-lite1" / "memory").is_dir()
    assert result.passed


def test_unlearning_equals_the_memory_built_without_them(context):
    result = unlearning.run(context, fraction=0.05, single=2)
    data = written(context, result)["data"]
    assert data["deleted"] == 30 and data["forget_report"]["removed"] == 30
    assert result.passed  # identical predictions and neighbours; no deleted id returned
    assert len(data["single_delete_ms"]) == 2 and data["queries_influenced"] > 0


def test_pruning_removes_and_down_weights_real_versions(context):
    result = pruning.run(context, [32, 100000])
    variants = written(context, result)["data"]["variants"]
    assert variants["hard, v_wrong >= 32"]["removed"] > 0
    assert variants["hard, v_wrong >= 32"]["items"] == 600 - variants["hard, v_wrong >= 32"]["removed"]
    assert variants["hard, v_wrong >= 100000"]["removed"] == 0
    assert variants["soft, gamma = 1.75/(1+v)"]["items"] == 600
    assert check(result, "soft pruning down-weights")


def test_label_noise_numbers_equal_a_relabelled_build(context):
    result = label_noise.run(context, [0.0, 0.3, 0.6])
    curves = written(context, result)["data"]["curves"]
    assert check(result, "a real relabelled memory")
    assert check(result, "aggregation beats the nearest neighbour")
    assert curves["0.0"]["rank"]["best_accuracy"] > curves["0.6"]["rank"]["best_accuracy"]
    clean = aggregation.run(context).data["curves"]["rank"]
    assert curves["0.0"]["rank"]["accuracy_at_k"] == clean["accuracy_at_k"]


def test_corruption_moves_exactly_the_fraction_to_other_classes(context):
    labels = label_noise.corrupt(context.memory, 0.3, seed=5)
    changed = labels != context.memory.labels
    assert changed.sum() == 180 and set(labels.tolist()) <= set(context.memory.classes)
    assert np.array_equal(labels, label_noise.corrupt(context.memory, 0.3, seed=5))


def test_interpretability_gallery_and_calibration(context):
    result = interpretability.run(context, gallery_size=6)
    data = written(context, result)
    assert {entry["correct"] for entry in data["gallery"]} == {True, False}
    for entry in data["gallery"]:
        assert (Path(context.out) / entry["image"]).read_bytes().startswith(PNG)
        assert len(entry["neighbours"]) == 5 and entry["neighbours"][0]["vote"] == pytest.approx(0.5)
    reliability = data["data"]["reliability"]
    assert reliability["hit_rate"] >= 0.95 and reliability["a"] < 0
    assert sum(b["queries"] for b in data["data"]["calibration"]["bins"]) == 200


def unit(*rows):
    vectors = np.asarray(rows, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_prototype_reranker_prefers_a_class_that_surrounds_the_query():
    query = np.array([1.0, 0.0, 0.0])
    # A shirt at cos 0.9 whose class-mate points away; two coats at ~0.85 on either side of the query.
    vectors = unit([0.9, 0.436, 0], [0.85, 0.527, 0], [0.84, -0.543, 0], [0.2, 0.98, 0])[None]
    candidates = Candidates(np.array([[1, 2, 3, 4]]), (vectors[0] @ query)[None],
                            np.array([["shirt", "coat", "coat", "shirt"]], dtype=object), vectors)
    order = PrototypeReranker(top=4, weight=1.0).order(query[None], candidates)
    assert order.tolist() == [[1, 2, 0, 3]]  # the coats' mean points at the query: they move up
    assert PrototypeReranker(top=4, weight=0.0).order(query[None], candidates).tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="vectors"):
        PrototypeReranker().order(query[None], Candidates(candidates.ids, candidates.scores, candidates.labels))


def test_reranking_experiment_reorders_only(context):
    result = reranking.run(context)
    written(context, result)
    assert check(result, "re-ranking only reorders")


def test_report_renders_every_section(context):
    aggregation.run(context).write(context.out)
    report = Path(write_report(context.out))
    page = report.read_text()
    names = [p.stem for p in Path(context.out).glob("*.json")]
    assert "aggregation" in names
    for name in names:  # every result in OUT has its section and a link from the summary
        assert f'id="{name}"' in page and f'href="#{name}"' in page
    assert "<script" not in page  # a static page: nothing runs, nothing is fetched

PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  document.body.setAttribute('data-probe', JSON.stringify({
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    tables: document.querySelectorAll('table').length,
    sections: [...document.querySelectorAll('section')].map(s => s.id),
    correct: document.querySelectorAll('[data-case=correct]').length,
    wrong: document.querySelectorAll('[data-case=wrong]').length}));
});
</script>"""


def browse(page: Path) -> dict:
    """Open a page from disk in Debian's headless Chromium; return what the probe script saw."""
    import html
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make test` (scripts/install-system-deps.sh installs it)")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={page.parent / '.chromium'}", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, f"the probe did not run; chromium printed: {dom[:500]}"
    return json.loads(html.unescape(found.group(1)))


def test_report_opens_in_a_real_browser_with_every_image(context):
    for experiment in (aggregation, interpretability):
        experiment.run(context, **({"gallery_size": 6} if experiment is interpretability else {})).write(context.out)
    index = Path(write_report(context.out))
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    seen = browse(probe)
    assert seen["broken"] == [] and seen["images"] >= 2 + 6 * 6  # plots, 6 queries x (query + 5 neighbours)
    assert {"aggregation", "interpretability"} <= set(seen["sections"])
    assert seen["tables"] == len(seen["sections"]) + 1  # one per section and the summary
    assert seen["correct"] == 3 and seen["wrong"] == 3
    # The probe can fail: a page with a missing image is caught.
    broken = index.with_name("broken.html")
    broken.write_text(probe.read_text().replace("</body>", '<img src="missing.png"></body>'))
    assert browse(broken)["broken"] == ["missing.png"]


def test_memory_size_with_a_timm_encoder_from_local_weights(context, tmp_path):
    """Any open_clip / timm encoder joins the comparison when given weights (no hub here): a
    timm MobileNetV3 saved as safetensors, re-embedding the same images through the Beam job."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=0)
    weights = tmp_path / "mobilenetv3.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    encoder = "timm:mobilenetv3_small_100"
    result = memory_size.run(context, [encoder], [10, 0], weights={encoder: str(weights)})
    rows = {(row[0], row[1]): row for row in result.rows}
    assert rows[(encoder, 10)][2] == 100 and rows[(encoder, "all")][2] == 600
    assert rows[(encoder, "all")][3] == 1024  # the model's pooled feature width, recorded by ingest
    assert (Path(context.memories.work) / "encoders" / encoder / "memory").is_dir()


def test_derived_memories_built_on_ray_give_the_same_numbers(context, ray_executor, tmp_path):
    on_ray = Context(context.memory, context.queries, str(tmp_path), Memories(str(tmp_path / "work"), ray_executor,
                                                                              num_shards=2))
    assert aggregation.run(on_ray).data["curves"] == aggregation.run(context).data["curves"]
