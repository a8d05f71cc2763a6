"""Index build: the Ray build (train once, add parts in parallel, merge into shards) vs a
single-process FAISS build of the same factory, and autofaiss at the same memory budget, on
1M seeded synthetic vectors and on real Fashion-MNIST embeddings. Prints one JSON object.

    python bench/index.py [--vectors 1000000] [--dim 384] [--shards 4] [--skip-autofaiss]

autofaiss pins numpy<2, so it runs in its own virtualenv (bench/.venv-autofaiss, created on
first use) on the same vectors, saved as .npy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit_phase, machine, run_phase  # noqa: E402

HERE = Path(__file__).resolve().parent
AUTOFAISS_VENV = HERE / ".venv-autofaiss"


def _recall(found, truth) -> float:
    from indexer.tuning import recall_at

    return round(recall_at(found, truth), 4)


def _truth(vectors, queries, k=10):
    from indexer.tuning import exact_topk

    return exact_topk(vectors, queries, k)


def phase_ray(root: str, shards: int, factory: str, budget: int, queries: str, truth: str) -> dict:
    import numpy as np

    from indexer.build import BuildConfig, run_build
    from indexer.executor import RayExecutor
    from indexer.search import ShardedIndex

    executor = RayExecutor(num_cpus=os.cpu_count())
    started = time.perf_counter()
    manifest = run_build(BuildConfig(root, num_shards=shards, factory=factory,
                                     bytes_per_vector=budget), executor)
    seconds = time.perf_counter() - started
    index = ShardedIndex(root, manifest)
    q, t = np.load(queries), np.load(truth)
    _, found = index.search(q, 10)
    found = np.where(found >= 0, found - 1, -1)  # bench ids are row + 1
    size = sum(os.path.getsize(os.path.join(root, "index", e.index_path)) for e in manifest.shards)
    return {"factory": manifest.factory, "seconds": round(seconds, 3),
            "prepare_seconds": manifest.details["prepare_seconds"],
            "train_seconds": manifest.details["train_seconds"],
            "add_merge_seconds": manifest.details["add_merge_seconds"],
            "vectors_per_s": round(manifest.count / seconds, 1), "nprobe": manifest.search_defaults["nprobe"],
            "recall_at_10": _recall(found, t), "bytes_per_vector": round(size / manifest.count, 2)}


def phase_single(root: str, factory: str, nprobe: int, queries: str, truth: str) -> dict:
    """The plain FAISS way: load everything, train on the same-size seeded sample, add, done."""
    import faiss
    import numpy as np

    from indexer import factory as factories
    from indexer.reader import plan_inputs, read_part
    from indexer.search import set_nprobe

    started = time.perf_counter()
    inputs = plan_inputs(root)
    vectors = np.concatenate([read_part(p)[1] for p in inputs.parts])
    wanted = factories.training_size(factory, len(vectors))
    train_started = time.perf_counter()
    sample = vectors[np.random.default_rng(0).choice(len(vectors), wanted, replace=False)] if wanted else None
    index = factories.train(factory, vectors.shape[1], sample) if wanted else factories.make_index(factory, vectors.shape[1])
    train_seconds = time.perf_counter() - train_started
    add_started = time.perf_counter()
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    add_seconds = time.perf_counter() - add_started
    seconds = time.perf_counter() - started
    set_nprobe(index, nprobe)
    _, found = index.search(np.load(queries), 10)
    return {"factory": factory, "seconds": round(seconds, 3), "train_seconds": round(train_seconds, 3),
            "add_seconds": round(add_seconds, 3), "vectors_per_s": round(len(vectors) / seconds, 1),
            "recall_at_10": _recall(found, np.load(truth)),
            "bytes_per_vector": round(len(faiss.serialize_index(index)) / len(vectors), 2)}


def ensure_autofaiss() -> Path:
    python = AUTOFAISS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AUTOFAISS_VENV)], check=True)
        # autofaiss 2.18 pins numpy<2 (so pyarrow<18) and calls faiss APIs that faiss 1.9+
        # changed (OPQMatrix keywords): it runs with faiss-cpu 1.8.0.
        subprocess.run([str(python), "-m", "pip", "install", "-q", "autofaiss==2.18.0",
                        "faiss-cpu==1.8.0", "numpy<2", "pyarrow<18"], check=True)
    return python


AUTOFAISS_SCRIPT = r"""
import json, sys, time, resource
import numpy as np, faiss
from autofaiss import build_index
npy_dir, index_path, budget, queries, truth = sys.argv[1:6]
started = time.perf_counter()
index, infos = build_index(embeddings=npy_dir, index_path=index_path,
                           index_infos_path=index_path + ".json", max_index_memory_usage=budget,
                           current_memory_available="12G", metric_type="ip", verbose=30,
                           save_on_disk=True)
seconds = time.perf_counter() - started
faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
_, found = index.search(np.load(queries), 10)
t = np.load(truth)
recall = float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, t)]))
print(json.dumps({"factory": infos.get("index_key"), "seconds": round(seconds, 3),
                  "recall_at_10": round(recall, 4), "nprobe_params": infos.get("index_param"),
                  "bytes_per_vector": round(faiss.serialize_index(index).nbytes / index.ntotal, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def run_autofaiss(vectors_npy_dir: str, budget_bytes: int, queries: str, truth: str, work: str) -> dict:
    python = ensure_autofaiss()
    out = subprocess.run([str(python), "-c", AUTOFAISS_SCRIPT, vectors_npy_dir,
                          os.path.join(work, "autofaiss.index"), f"{budget_bytes}B", queries, truth],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(root: str, vectors, queries, work: str, args, label: str, autofaiss: bool) -> dict:
    import numpy as np

    q_path, t_path = os.path.join(work, f"{label}-q.npy"), os.path.join(work, f"{label}-t.npy")
    np.save(q_path, queries)
    np.save(t_path, _truth(vectors, queries))
    common = ["--root", root, "--queries", q_path, "--truth", t_path]
    ray = run_phase(__file__, "ray", common + ["--shards", str(args.shards), "--factory", args.factory,
                                              "--budget", str(args.budget)])
    single = run_phase(__file__, "single", common + ["--factory", ray["factory"],
                                                     "--nprobe", str(ray["nprobe"])])
    result = {"vectors": len(vectors), "dim": vectors.shape[1], "ray_build": ray,
              "single_process_build": single,
              "ratio_ray_over_single_seconds": round(ray["seconds"] / single["seconds"], 3),
              "target_ratio_at_most": 1.25}
    if autofaiss:
        npy_dir = os.path.join(work, f"{label}-npy")
        os.makedirs(npy_dir, exist_ok=True)
        np.save(os.path.join(npy_dir, "part-0.npy"), vectors)
        try:
            result["autofaiss"] = run_autofaiss(npy_dir, args.budget * len(vectors), q_path, t_path, work)
        except subprocess.CalledProcessError as error:  # report it; keep the other figures
            result["autofaiss"] = {"error": (error.stderr or "")[-2000:]}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384, help="384 = DINOv2 ViT-S/14.")
    parser.add_argument("--parts", type=int, default=20, help="Embedding files (parallel add units).")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--budget", type=int, default=64, help="Bytes per vector for auto / autofaiss.")
    parser.add_argument("--real-images", type=int, default=2000, help="Fashion-MNIST images (0: skip).")
    parser.add_argument("--skip-autofaiss", action="store_true")
    parser.add_argument("--phase", choices=("ray", "single"), help=argparse.SUPPRESS)
    for hidden in ("--root", "--queries", "--truth"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--nprobe", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "ray":
        emit_phase(phase_ray(args.root, args.shards, args.factory, args.budget, args.queries, args.truth))
        return 0
    if args.phase == "single":
        emit_phase(phase_single(args.root, args.factory, args.nprobe, args.queries, args.truth))
        return 0

    from bench.synthetic import mixture, write_batch

    report = {"benchmark": "index", "machine": machine()}
    with tempfile.TemporaryDirectory() as work:
        vectors = mixture(args.vectors + 1000, args.dim, clusters=1000, seed=0)
        queries, vectors = vectors[:1000], vectors[1000:]
        root = os.path.join(work, "synthetic")
        write_batch(root, "synthetic", vectors, args.parts)
        report["synthetic"] = compare(root, vectors, queries, work, args, "synthetic",
                                      not args.skip_autofaiss)
        if args.real_images:
            report["real"] = real_section(work, args)
    print(json.dumps(report, indent=2))
    return 0


def real_section(work: str, args) -> dict:
    """Fashion-MNIST train images embedded by the offline encoder (Beam), test images as queries."""
    from pipelines.data.fashion_mnist import write_fashion_mnist
    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.manifest import read_embeddings
    from pipelines.schema import embeddings_matrix

    data = os.path.join(work, "fmnist")
    write_fashion_mnist(data, ("train",), per_class=args.real_images // 10, shard_size=500)
    write_fashion_mnist(data, ("test",), per_class=20, shard_size=500)
    root, qroot = os.path.join(work, "real"), os.path.join(work, "real-queries")
    run_ingest(IngestConfig([os.path.join(data, "fashion-mnist-train-*.tar")], root, "train"))
    run_ingest(IngestConfig([os.path.join(data, "fashion-mnist-test-*.tar")], qroot, "test"))
    table = read_embeddings(root, "train")
    # Row numbers stand in for ids in the single-process baseline: re-write ids as row + 1.
    vectors = embeddings_matrix(table)
    from bench.synthetic import write_batch

    renumbered = os.path.join(work, "real-renumbered")
    write_batch(renumbered, "train", vectors, parts=4)
    queries = embeddings_matrix(read_embeddings(qroot, "test"))
    return compare(renumbered, vectors, queries, work, args, "real", autofaiss=False)


if __name__ == "__main__":
    sys.exit(main())
