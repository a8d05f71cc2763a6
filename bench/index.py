"""Index build benchmark: the project's Ray build next to single-process FAISS and autofaiss,
all measured in the same run on the same vectors, each as a whole process tree. One JSON
document (stdout, and ``--out FILE``); progress lines go to stderr.

The two full-size runs (hours on a 2-CPU machine; about 15 GB of scratch disk for the 10M one,
under --work):

    nice -n 10 .venv/bin/python bench/index.py --vectors 1000000 --dim 384 --shards 1,4 --out index-1m.json
    nice -n 10 .venv/bin/python bench/index.py --vectors 10000000 --dim 128 --shards 1,4 --out index-10m.json

(or both in one document: ``--vectors 1000000,10000000 --dim 384,128``). A smoke run in about a
minute: ``.venv/bin/python bench/index.py --vectors 30000 --dim 64 --shards 1,2 --skip-autofaiss``.

Data. Seeded unit vectors with a decaying spectrum (bench/synthetic.py ``DecayingSpace``: 1000
clusters, variance decaying with the dimension, randomly rotated), generated --part-rows at a
time and written straight to Parquet parts of one embedding batch (ids = row + 1); never held
whole. Queries: --queries vectors of the same distribution's held-out stream (stream 1), not in
the memory. Ground truth: exact top-100 by inner product, computed part by part (an
IndexFlatIP over each part, merged). With autofaiss, each part is also saved as a .npy file
(autofaiss reads a folder of them; its ids are row numbers).

Systems, each run as its own fresh process:

  project_s{S}   ``indexer.build.run_build`` (factory --factory, ``auto`` at
                 --bytes-per-vector, keep_vectors none) on a local Ray instance
                 (``RayExecutor(num_cpus=--ray-cpus)``), for each S in --shards. The build
                 includes what the project always does: sampling, training, adding in parallel,
                 merging into S shards, and tuning nprobe (exact ground truth for 256 sampled
                 queries over every part, then an nprobe sweep).
  single_faiss   plain FAISS in one process: the factory the project chose at the first S, the
                 same training sample (``indexer.build.sample_inputs``: same size, seed and rows)
                 trained by ``indexer.factory.train``, then each Parquet part read in chunks (id
                 and embedding columns only) and ``add_with_ids``, then ``faiss.write_index``.
                 Searched at the project's recorded nprobe (no tuning of its own).
  autofaiss      autofaiss 2.18 ``build_index`` on the .npy folder, max_index_memory_usage = the
                 bytes of the largest index the project built in the section (codes, ids,
                 lists, the trained quantizer: the same whole-index budget; --autofaiss-budget
                 code: --bytes-per-vector x N, which counts the project's PQ code alone),
                 current_memory_available --autofaiss-memory,
                 metric ip, its own index choice and its own tuned search parameters.
                 With --autofaiss-deadline F its build is stopped once it has run F times the
                 slowest project build of the section: its throughput is then at most N over
                 that time, so the project's is at least F times it; its recall is not measured.

Per system: wall seconds of the build process (start to exit, Ray start-up and shut-down
included), CPU seconds of its whole process tree (user + system of the process and every
descendant: Ray's gcs_server, raylet, agents and idle workers count, as do processes left
behind, which this script adopts as a child subreaper; exact, from RUSAGE_CHILDREN once all
are reaped), peak RSS of the tree (RSS summed over the tree every --sample-interval s, the
maximum over time, with the processes it was made of), vectors per second (N / wall seconds),
bytes on disk per vector, and recall@10 / recall@100 of the held-out queries at the recorded
defaults (project: ``ShardedIndex`` with the manifest's defaults; single: the project's nprobe;
autofaiss: its ``index_param``). Search runs in separate, unmeasured processes.

Ray instance (--ray-instance). ``own`` (default): each project build starts its local Ray
instance and shuts it down, so its figures include Ray's start-up (about 5 CPU-s on 2 cores,
with the bytecode compiled first as this script does) and the daemons' polling; as ``vmem
index build`` does, the instance starts at the add, after the driver has sampled and trained.
``own-at-start``: the same, the instance started before sampling (the build's way until
2026-12-03; its sampling tasks run on Ray). ``running``: one instance is started with ``ray start`` before the
section's builds (its start-up CPU reported apart, under ``ray_instance``) and each build joins
it, as a build submitted to a running cluster (KubeRay, scheduled ingestion) does; a build's
CPU seconds are then its own process tree's plus what the instance's processes used while it
ran (daemons, and the workers Ray starts for the build, from their start to their exit), each
part also given alone (``build_tree``, ``ray_instance``), and its peak RSS the peak of the two
parts' RSS summed at each sample. ``none``: each project build runs every task in its own
process (``vmem index build --no-ray``, ``LocalExecutor``): the same task functions without
Ray, so the difference from ``own`` is what Ray costs.

Bytes on disk per vector: project = every file under ``<root>/index/<version>/`` (shard
indexes, trained.faiss, metadata, key indexes, manifest) and, separately, index only (the
.faiss files: shard indexes + trained.faiss); single = its index file; autofaiss = its index
file.

Repeats (--repeats N): each system is built N times, interleaved (project S..., single, then
the reverse order, and so on), each a fresh process; the first build of each is searched. The
CPU, RSS and wall ratios are the median of the N ratios of builds run side by side, each pair
listed: on a machine whose speed drifts by 20-30 % over minutes (docs/benchmarks.md) one pair
cannot show a 10 % difference. Per phase (``cpu_seconds_by_phase_median``): the project's
build records each phase's CPU (indexer.phases: the driver's plus its Ray tasks'), the single
process times its own (sampling, training, adding, writing); what the tree spent outside the
phases (start-up, imports, Ray's daemons and idle workers) is the remainder.

Ratios, each next to the figures it is made of (targets from the issue): CPU seconds
project / single <= 1.1; peak tree RSS project / single <= 2; index bytes per vector
S = 4 / S = 1 <= 1.05 (the largest S over the smallest); throughput project / autofaiss >= 2
with the project's recall >= autofaiss's at k = 10 and 100.

autofaiss runs in its own virtualenv, bench/.venv-autofaiss, created on first use:
autofaiss==2.18.0 with numpy 1.26 (it pins numpy<2, so pyarrow<18) and faiss-cpu>=1.14 (1.15.1
resolves with numpy 1.26.4 on Python 3.11). The OPQMatrix shim: autofaiss builds OPQ indexes
with ``faiss.OPQMatrix(d, M=M_OPQ, d2=out_d)``; the SWIG bindings of faiss >= 1.9 take only
positional arguments and raise ``TypeError: unexpected keyword argument 'M'``. The autofaiss
process therefore replaces ``faiss.OPQMatrix`` by a subclass whose ``__init__(d=0, M=1,
d2=-1)`` passes the keywords on positionally (same C++ object; ``isinstance`` still holds)
before importing autofaiss. Nothing else is patched.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import compile_bytecode, emit_phase, machine  # noqa: E402
from bench.running_ray import RunningRay  # noqa: E402

HERE = Path(__file__).resolve().parent
AUTOFAISS_VENV = HERE / ".venv-autofaiss"
AUTOFAISS_REQUIREMENTS = ["autofaiss==2.18.0", "faiss-cpu>=1.14", "numpy==1.26.*", "pyarrow<18"]
TRUTH_K = 100
KS = (10, 100)
TARGETS = {"cpu_seconds_project_over_single_at_most": 1.1,
           "peak_rss_project_over_single_at_most": 2.0,
           "index_bytes_per_vector_largest_s_over_smallest_s_at_most": 1.05,
           "throughput_project_over_autofaiss_at_least": 2.0}
_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench/index {time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- phases (child processes)

def phase_project(root: str, shards: int, factory: str, budget: int, seed: int, ray_cpus: int,
                  task_memory_mb: int, ray_address: str | None = None, use_ray: bool = True,
                  at_start: bool = False) -> dict:
    """One project build as ``vmem index build`` runs it: on Ray (a local instance of
    ``ray_cpus`` CPUs, started at the add, or before sampling with ``at_start``; or the one
    at ``ray_address``), or with ``use_ray`` False every task in this process (``--no-ray``:
    the same task functions, no Ray)."""
    from indexer.build import BuildConfig, run_build
    from indexer.executor import DeferredExecutor, make_executor, starts_local_instance

    started = time.perf_counter()
    if starts_local_instance(ray_address, use_ray) and not at_start:  # as the CLI: at the add
        executor = DeferredExecutor(lambda: make_executor(None, num_cpus=ray_cpus), "ray")
    else:
        executor = make_executor(ray_address, use_ray=use_ray, num_cpus=ray_cpus)
    ray_init = time.perf_counter() - started  # ~0 for a deferred instance: it starts inside the build
    manifest = run_build(BuildConfig(root, num_shards=shards, factory=factory, bytes_per_vector=budget,
                                     keep_vectors="none", seed=seed, task_memory_mb=task_memory_mb),
                         executor)
    details = {k: v for k, v in manifest.details.items() if k != "tuning_curve"}
    return {"version": manifest.version, "factory": manifest.factory, "count": manifest.count,
            "num_shards": manifest.num_shards, "ray_init_seconds": round(ray_init, 3),
            "build_seconds": round(time.perf_counter() - started - ray_init, 3),
            "search_defaults": manifest.search_defaults, "details": details}


def phase_project_search(root: str, version: str, queries: str, found: str) -> dict:
    import numpy as np

    from indexer.manifest import IndexManifest
    from indexer.search import ShardedIndex

    manifest = IndexManifest.read(root, version)
    index = ShardedIndex(root, manifest)
    q = np.load(queries)
    np.save(found, np.stack([_pad_to(index.search(q, k)[1], TRUTH_K) for k in KS]))
    return {"search_defaults": manifest.search_defaults}


def phase_single(root: str, factory: str, seed: int, index_path: str, task_memory_mb: int) -> dict:
    """The plain FAISS way, in one process: train on the same sample, add part by part, write."""
    import faiss
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from indexer import factory as factories
    from indexer.build import sample_inputs
    from indexer.executor import LocalExecutor
    from indexer.phases import Phases
    from indexer.reader import plan_inputs
    from indexer.tasks import chunk_rows_for
    from pipelines import storage
    from pipelines.schema import embeddings_matrix

    started = time.perf_counter()
    phases = Phases(LocalExecutor())
    with phases("sampling"):
        inputs = plan_inputs(root)
        wanted = factories.training_size(factory, inputs.count)
        chunk_rows = chunk_rows_for(inputs.dim, task_memory_mb << 20)
        sample = (sample_inputs(LocalExecutor(), inputs.parts, inputs.dim, inputs.count, wanted, 0, seed,
                                chunk_rows).train if wanted else None)
    with phases("training"):
        index = factories.train(factory, inputs.dim, sample, seed) if wanted else factories.make_index(
            factory, inputs.dim)
        del sample
    with phases("adding"):
        for part in inputs.parts:
            fs, path = storage.filesystem(part.url)
            with fs.open(path, "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows,
                                                                columns=["id", "embedding"]):
                    table = pa.Table.from_batches([batch])
                    ids = table.column("id").to_numpy().astype(np.int64)
                    vectors = np.ascontiguousarray(embeddings_matrix(table))
                    index.add_with_ids(vectors, ids)
    with phases("writing"):
        faiss.write_index(index, index_path)
    return {"factory": factory, "count": int(index.ntotal), "train_vectors": int(wanted),
            "phases": phases.details(), "build_seconds": round(time.perf_counter() - started, 3),
            "chunk_rows": chunk_rows}


def phase_single_search(index_path: str, nprobe: int, queries: str, found: str) -> dict:
    import faiss
    import numpy as np

    from indexer.search import faiss_params

    index = faiss.read_index(index_path)
    params = faiss_params(index, nprobe) if nprobe else None
    q = np.load(queries)
    np.save(found, np.stack([_pad_to(index.search(q, k, params=params)[1], TRUTH_K) for k in KS]))
    return {"nprobe": nprobe}


def _pad_to(ids, width: int):
    import numpy as np

    out = np.full((len(ids), width), -1, dtype=np.int64)
    out[:, :ids.shape[1]] = ids
    return out


# --------------------------------------------------------------------------- autofaiss (own venv)

AUTOFAISS_SCRIPT = r'''
import json, sys, time
import faiss


class OPQMatrix(faiss.OPQMatrix):
    """faiss >= 1.9's SWIG constructor is positional only; autofaiss 2.18 passes M= and d2=."""

    def __init__(self, d=0, M=1, d2=-1):
        super().__init__(d, M, d2)


faiss.OPQMatrix = OPQMatrix  # the shim: before autofaiss is imported

import numpy as np

mode = sys.argv[1]
if mode == "build":
    npy_dir, index_path, infos_path, budget, available = sys.argv[2:7]
    from autofaiss import build_index

    started = time.perf_counter()
    index, infos = build_index(embeddings=npy_dir, index_path=index_path, index_infos_path=infos_path,
                               max_index_memory_usage=budget, current_memory_available=available,
                               metric_type="ip", save_on_disk=True, verbose=30)
    print(json.dumps({"build_seconds": round(time.perf_counter() - started, 3), "infos": infos}))
else:
    index_path, infos_path, queries, found = sys.argv[2:6]
    index = faiss.read_index(index_path)
    with open(infos_path) as f:
        infos = json.load(f)
    faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    q = np.load(queries)
    out = np.full((2, len(q), 100), -1, dtype=np.int64)
    for row, k in enumerate((10, 100)):
        ids = index.search(q, k)[1]
        out[row, :, :k] = np.where(ids >= 0, ids + 1, -1)  # autofaiss ids are rows; bench ids row + 1
    np.save(found, out)
    print(json.dumps({"versions": {"faiss": faiss.__version__, "numpy": np.__version__}}))
'''


def autofaiss_python() -> Path:
    """bench/.venv-autofaiss's python, creating the venv on first use."""
    python = AUTOFAISS_VENV / "bin" / "python"
    if not python.exists():
        progress(f"creating {AUTOFAISS_VENV} ({' '.join(AUTOFAISS_REQUIREMENTS)})")
        subprocess.run([sys.executable, "-m", "venv", str(AUTOFAISS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *AUTOFAISS_REQUIREMENTS], check=True)
    return python


def autofaiss_versions(python: Path) -> dict:
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m, json; print(json.dumps("
                          "{p: m.version(p) for p in ('autofaiss', 'faiss-cpu', 'numpy', 'pyarrow', "
                          "'embedding-reader')}))"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- data

def write_data(work: str, count: int, dim: int, args, npy_dir: str | None):
    """The memory (Parquet parts, ids row + 1), optionally the same rows as .npy files, the
    queries and their exact top-100 (bench ids), streamed a part at a time."""
    import faiss
    import numpy as np

    from bench.synthetic import DecayingSpace, write_batch_chunks
    from indexer.search import merge_topk

    space = DecayingSpace(dim, args.seed, args.clusters)
    queries = space.chunk(args.queries, stream=1, number=0)
    state: dict = {"scores": None, "ids": None, "next_id": 1, "truth_seconds": 0.0}
    if npy_dir:
        os.makedirs(npy_dir, exist_ok=True)

    def chunks():
        for number, vectors in enumerate(space.chunks(count, stream=0, chunk=args.part_rows)):
            started = time.perf_counter()
            exact = faiss.IndexFlatIP(dim)
            exact.add(vectors)
            scores, rows = exact.search(queries, min(TRUTH_K, len(vectors)))
            del exact
            ids = np.where(rows >= 0, rows + state["next_id"], -1)  # bench ids are row + 1
            if state["ids"] is not None:
                scores, ids = merge_topk([state["scores"], scores], [state["ids"], ids], TRUTH_K)
            state.update(scores=scores, ids=ids, next_id=state["next_id"] + len(vectors),
                         truth_seconds=state["truth_seconds"] + time.perf_counter() - started)
            if npy_dir:
                np.save(os.path.join(npy_dir, f"part-{number:05d}.npy"), vectors)
            yield vectors

    root = os.path.join(work, "memory")
    started = time.perf_counter()
    written = write_batch_chunks(root, "synthetic", chunks())
    truth = state["ids"]
    q_path, t_path = os.path.join(work, "queries.npy"), os.path.join(work, "truth.npy")
    np.save(q_path, queries)
    np.save(t_path, truth)
    return root, q_path, t_path, {"vectors": written, "dim": dim, "part_rows": args.part_rows,
                                  "parts": -(-written // args.part_rows), "queries": len(queries),
                                  "seconds": round(time.perf_counter() - started, 1),
                                  "truth_seconds": round(state["truth_seconds"], 1),
                                  "parquet_bytes": _tree_bytes(os.path.join(root, "embeddings"))}


def _tree_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def recall(found_path: str, truth) -> dict:
    import numpy as np

    from indexer.tuning import recall_at

    found = np.load(found_path)
    return {f"recall_at_{k}": round(recall_at(found[row][:, :k], truth[:, :k]), 4)
            for row, k in enumerate(KS)}


def project_disk(root: str, version: str) -> dict:
    from indexer.manifest import IndexManifest

    manifest = IndexManifest.read(root, version)
    base = os.path.join(root, "index")
    kinds: dict[str, int] = {}
    for path, _ in manifest.files():
        kind = ("trained" if path == manifest.trained_path else
                "shard_index" if path.endswith(".faiss") else
                "metadata" if ".meta" in path or path.endswith(".arrow") else
                "keys" if "key" in path else "other")
        kinds[kind] = kinds.get(kind, 0) + os.path.getsize(os.path.join(base, path))
    version_bytes = _tree_bytes(os.path.join(base, version))
    index_bytes = kinds.get("shard_index", 0) + kinds.get("trained", 0)
    return {"version_dir_bytes": version_bytes, "bytes_by_kind": kinds, "index_only_bytes": index_bytes,
            "bytes_per_vector_all_files": round(version_bytes / manifest.count, 2),
            "bytes_per_vector_index_only": round(index_bytes / manifest.count, 2)}


# --------------------------------------------------------------------------- driver

def measured(name: str, command: list[str], logs: str, args, deadline: float | None = None,
             instance: RunningRay | None = None) -> tuple[dict | None, dict]:
    """Run a build phase as a measured process tree: (its JSON result, the tree's figures).
    A build stopped at ``deadline`` seconds (proctree.run_measured) has no result (None).

    ``instance``: a running Ray instance the build submits to (--ray-instance running); what
    its processes used over the build is added to the tree's CPU seconds, and the peak RSS is
    that of the two summed at each sample; each part is also given alone."""
    from bench import proctree

    out, err = os.path.join(logs, f"{name}.out"), os.path.join(logs, f"{name}.err")
    before = None
    if instance is not None:
        before = instance.cpu_snapshot()
        instance.sampler.reset_peaks()
    tree = proctree.run_measured(command, out, err, interval=args.sample_interval,
                                 teardown_timeout=args.teardown_timeout, deadline=deadline,
                                 env=None if instance is None else {**os.environ, **instance.env},
                                 alongside=None if instance is None else instance.sampler)
    if instance is not None:
        used, by_name = instance.cpu_since(before)
        tree["build_tree"] = {k: tree[k] for k in ("cpu_seconds", "cpu_seconds_sampled_by_process",
                                                    "peak_rss_bytes", "peak_rss_anon_bytes", "peak_pss_bytes")}
        tree["ray_instance"] = {"cpu_seconds": used, "cpu_seconds_sampled_by_process": by_name,
                                "peak_rss_bytes": instance.sampler.peak_rss,
                                "peak_rss_anon_bytes": instance.sampler.peak_anon,
                                "peak_pss_bytes": instance.sampler.peak_pss}
        tree["cpu_seconds"] = round(tree["build_tree"]["cpu_seconds"] + used, 3)
        tree.update(tree.pop("peak_with_alongside"))
        tree["cpu_seconds_sampled_by_process"] = {
            **tree["build_tree"]["cpu_seconds_sampled_by_process"],
            **{f"instance: {n}": v for n, v in by_name.items()}}
    tree["peak_rss_mib"] = round(tree["peak_rss_bytes"] / 2**20, 1)
    if tree["stopped_at_deadline"]:
        return None, tree
    with open(out) as f:
        result = json.loads(f.read().strip().splitlines()[-1])
    return result, tree


def unmeasured(command: list[str]) -> dict:
    """Run a search phase (not measured) and return its JSON result. A phase that printed its
    result and then died (e.g. a crash at interpreter exit) still counts; the JSON says how it
    ended (``exit_error``)."""
    from bench import proctree

    try:
        out = subprocess.run(command, capture_output=True, text=True)
    finally:
        proctree.reap_children()
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0:
        return json.loads(lines[-1])
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if result is None:
        raise subprocess.CalledProcessError(out.returncode, command, out.stdout, out.stderr[-4000:])
    how = f"signal {-out.returncode}" if out.returncode < 0 else f"exit status {out.returncode}"
    result["exit_error"] = f"died with {how} after writing its result; stderr: {out.stderr[-600:]}"
    progress(f"  warning: {command[2:4]} {result['exit_error'][:200]}")
    return result


def this(phase: str, *options: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--phase", phase, *options]


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def run_section(count: int, dim: int, args, autofaiss: Path | None) -> dict:
    import numpy as np

    if args.work:
        os.makedirs(args.work, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"index-{count}x{dim}-", dir=args.work)
    section: dict = {"vectors": count, "dim": dim, "work": work}
    try:
        npy_dir = os.path.join(work, "npy") if autofaiss else None
        progress(f"{count}x{dim}: writing vectors, .npy copy: {bool(npy_dir)}, exact top-{TRUTH_K}")
        root, q_path, t_path, section["data"] = write_data(work, count, dim, args, npy_dir)
        truth = np.load(t_path)
        logs = os.path.join(work, "logs")
        os.makedirs(logs, exist_ok=True)
        systems: dict = {}
        section["systems"] = systems
        common = ["--seed", str(args.seed), "--task-memory-mb", str(args.task_memory_mb)]
        order = [f"project_s{s}" for s in args.shards] + ([] if args.skip_single else ["single_faiss"])
        with contextlib.ExitStack() as stack:
            instance = None
            if args.ray_instance == "running":
                instance = stack.enter_context(RunningRay(args.ray_cpus, args.sample_interval))
                section["ray_instance"] = {"mode": "running", "start_up": instance.start_up}
                progress(f"{count}x{dim}: Ray instance running at {instance.address} "
                         f"(start-up {instance.start_up['cpu_seconds']} CPU-s, not a build's)")
            for repeat in range(args.repeats):
                # interleaved, the order reversed every other repeat: a drift of the machine's
                # speed over the run weighs on every system alike (docs/benchmarks.md, noise)
                for name in order if repeat % 2 == 0 else order[::-1]:
                    if name == "single_faiss":
                        run_single(systems, root, work, logs, q_path, truth, count, common, args, repeat)
                    else:
                        run_project(systems, name, root, work, logs, q_path, truth, count, common, args,
                                    repeat, instance)
        if args.skip_single:
            systems["single_faiss"] = {"skipped": "--skip-single"}

        if autofaiss:
            slowest = max(systems[f"project_s{s}"]["process_tree"]["wall_seconds"] for s in args.shards)
            deadline = args.autofaiss_deadline * slowest if args.autofaiss_deadline else None
            systems["autofaiss"] = run_autofaiss_system(autofaiss, work, npy_dir, q_path, truth, count,
                                                        logs, args, deadline,
                                                        autofaiss_budget(systems, args, count))
            shutil.rmtree(npy_dir, ignore_errors=True)
        else:
            systems["autofaiss"] = {"skipped": "--skip-autofaiss"}
        section["ratios"] = ratios(systems, args.shards)
    except Exception as error:  # keep what was measured; say what failed
        section["error"] = f"{type(error).__name__}: {error}"[-4000:]
        if isinstance(error, subprocess.CalledProcessError) and error.stderr:
            section["error_stderr_tail"] = str(error.stderr)[-4000:]
        progress(f"{count}x{dim}: FAILED: {section['error'][:500]}")
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
            section["work"] = None
    return section


def _repeat(system: dict, build: dict, tree: dict) -> None:
    system.setdefault("repeats", []).append({"process_tree": tree, "phases": build.get("details", build)["phases"],
                                             "build_seconds": build["build_seconds"]})


def run_project(systems: dict, name: str, root: str, work: str, logs: str, q_path: str, truth, count: int,
                common: list[str], args, repeat: int, instance: RunningRay | None) -> None:
    """One measured project build (a new version each repeat); the first is also searched."""
    shards = int(name.removeprefix("project_s"))
    engine = ("no Ray: tasks in the build's process" if args.ray_instance == "none"
              else f"Ray, {args.ray_cpus} CPUs, {args.ray_instance} instance")
    progress(f"{count}: {name} ({engine}), repeat {repeat + 1} of {args.repeats}")
    joins = ([] if instance is None else ["--ray-address", instance.address]) + (
        ["--no-ray"] if args.ray_instance == "none" else []) + (
        ["--ray-at-start"] if args.ray_instance == "own-at-start" else [])
    result, tree = measured(f"{name}-{repeat}", this(
        "project", "--root", root, "--num-shards", str(shards), "--factory", args.factory,
        "--bytes-per-vector", str(args.bytes_per_vector), "--ray-cpus", str(args.ray_cpus), *joins, *common),
        logs, args, instance=instance)
    if name in systems:
        _repeat(systems[name], result, tree)
        _progress_tree(name, tree)
        return
    found = os.path.join(work, f"{name}-found.npy")
    searched = unmeasured(this("project-search", "--root", root, "--version", result["version"],
                               "--queries-file", q_path, "--found-file", found))
    systems[name] = {"build": result, "process_tree": tree,
                     "search": {"params": "manifest search_defaults (ShardedIndex)",
                                **({"exit_error": searched["exit_error"]} if "exit_error" in searched else {})},
                     "vectors_per_second": round(count / tree["wall_seconds"], 1),
                     "disk": project_disk(root, result["version"]), **recall(found, truth)}
    _repeat(systems[name], result, tree)
    _progress_system(name, systems[name])


def run_single(systems: dict, root: str, work: str, logs: str, q_path: str, truth, count: int,
               common: list[str], args, repeat: int) -> None:
    """One measured single-process FAISS build with the factory and nprobe of the project's
    first S (built before it in the first repeat); the first is also searched."""
    first = systems[f"project_s{args.shards[0]}"]["build"]
    factory, nprobe = first["factory"], int(first["search_defaults"].get("nprobe") or 0)
    progress(f"{count}: single_faiss ({factory}, nprobe {nprobe}), repeat {repeat + 1} of {args.repeats}")
    index_path = os.path.join(work, "single.faiss")
    result, tree = measured(f"single_faiss-{repeat}", this("single", "--root", root, "--factory", factory,
                                                         "--index-file", index_path, *common), logs, args)
    if "single_faiss" in systems:
        _repeat(systems["single_faiss"], result, tree)
        _progress_tree("single_faiss", tree)
        return
    found = os.path.join(work, "single-found.npy")
    searched = unmeasured(this("single-search", "--index-file", index_path, "--nprobe", str(nprobe),
                               "--queries-file", q_path, "--found-file", found))
    size = os.path.getsize(index_path)
    systems["single_faiss"] = {"build": result, "process_tree": tree,
                               "vectors_per_second": round(count / tree["wall_seconds"], 1),
                               "search": {"nprobe": nprobe, **({"exit_error": searched["exit_error"]}
                                                               if "exit_error" in searched else {})},
                               "disk": {"index_bytes": size, "bytes_per_vector": round(size / count, 2)},
                               **recall(found, truth)}
    _repeat(systems["single_faiss"], result, tree)
    _progress_system("single_faiss", systems["single_faiss"])


def autofaiss_budget(systems: dict, args, count: int) -> tuple[int, str]:
    """(bytes, rule) of autofaiss's max_index_memory_usage: by default the largest index the
    project built in this section (its ``index_only_bytes``: shard files and the trained
    quantizer), so both get the same whole-index budget; with --autofaiss-budget code,
    --bytes-per-vector x N (the project's PQ code budget alone, as runs before 2026-12-02)."""
    if args.autofaiss_budget == "code":
        return args.bytes_per_vector * count, f"--bytes-per-vector {args.bytes_per_vector} x N"
    built = max(systems[f"project_s{s}"]["disk"]["index_only_bytes"] for s in args.shards)
    return int(built), "the project's largest index in this section (whole index)"


def run_autofaiss_system(python: Path, work: str, npy_dir: str, q_path: str, truth, count: int,
                         logs: str, args, deadline: float | None, budget_of: tuple[int, str]) -> dict:
    """autofaiss's build at ``budget_of`` = (bytes, rule), measured, then searched; stopped
    after ``deadline`` seconds when given (then only its process tree and the deadline are
    reported)."""
    index_path, infos_path = os.path.join(work, "autofaiss.index"), os.path.join(work, "autofaiss.json")
    budget = f"{budget_of[0]}B"
    progress(f"{count}: autofaiss (max_index_memory_usage {budget}, "
             f"current_memory_available {args.autofaiss_memory}"
             + (f", stopped after {deadline:.0f} s)" if deadline else ")"))
    try:
        result, tree = measured("autofaiss", [str(python), "-c", AUTOFAISS_SCRIPT, "build", npy_dir,
                                              index_path, infos_path, budget, args.autofaiss_memory],
                                logs, args, deadline)
        if result is None:
            progress(f"  autofaiss: stopped at the deadline, {deadline:.0f} s, tree CPU "
                     f"{tree['cpu_seconds']:.1f} s so far")
            return {"stopped_at_deadline": {"deadline_seconds": round(deadline, 1),
                                            "deadline_factor": args.autofaiss_deadline},
                    "build": {"max_index_memory_usage": budget, "budget_rule": budget_of[1],
                              "current_memory_available": args.autofaiss_memory},
                    "process_tree": tree, "vectors_per_second_at_most": round(count / deadline, 1)}
        found = os.path.join(work, "autofaiss-found.npy")
        searched = unmeasured([str(python), "-c", AUTOFAISS_SCRIPT, "search", index_path, infos_path,
                               q_path, found])
    except subprocess.CalledProcessError as error:
        return {"error": f"exit {error.returncode}", "stderr_tail": str(error.stderr or "")[-3000:]}
    infos = result["infos"]
    size = os.path.getsize(index_path)
    out = {"build": {"build_seconds": result["build_seconds"], "index_key": infos.get("index_key"),
                     "max_index_memory_usage": budget, "budget_rule": budget_of[1],
                     "current_memory_available": args.autofaiss_memory},
           "process_tree": tree, "vectors_per_second": round(count / tree["wall_seconds"], 1),
           "search": {"index_param": infos.get("index_param"), **searched},
           "infos": infos, "disk": {"index_bytes": size, "bytes_per_vector": round(size / count, 2)},
           **recall(found, truth)}
    _progress_system("autofaiss", out)
    return out


def _progress_tree(name: str, tree: dict) -> None:
    progress(f"  {name}: wall {tree['wall_seconds']:.1f} s, tree CPU {tree['cpu_seconds']:.1f} s, "
             f"peak tree RSS {tree['peak_rss_mib']:.0f} MiB")


def _progress_system(name: str, system: dict) -> None:
    tree = system["process_tree"]
    progress(f"  {name}: wall {tree['wall_seconds']:.1f} s, tree CPU {tree['cpu_seconds']:.1f} s, "
             f"peak tree RSS {tree['peak_rss_mib']:.0f} MiB, recall@10 {system['recall_at_10']}, "
             f"recall@100 {system['recall_at_100']}")


def ratios(systems: dict, shard_counts: list[int]) -> dict:
    """Every project build over its baselines from the same run, each ratio beside its figures."""
    single, auto = systems["single_faiss"], systems.get("autofaiss", {})
    out: dict = {}
    for shards in shard_counts:
        name = f"project_s{shards}"
        project = systems[name]
        if "process_tree" in single:
            out[f"{name} / single_faiss"] = _single_block(name, project, single)
        if "stopped_at_deadline" in auto:
            out[f"{name} / autofaiss"] = _autofaiss_stopped_block(name, project, auto)
        elif "process_tree" in auto:
            throughput = _ratio(project["vectors_per_second"], auto["vectors_per_second"])
            at_least = all(project[f"recall_at_{k}"] >= auto[f"recall_at_{k}"] for k in KS)
            out[f"{name} / autofaiss"] = _autofaiss_block(name, project, auto, throughput, at_least)
    if len(shard_counts) > 1:
        low, high = f"project_s{min(shard_counts)}", f"project_s{max(shard_counts)}"
        ratio = _ratio(systems[high]["disk"]["bytes_per_vector_index_only"],
                       systems[low]["disk"]["bytes_per_vector_index_only"])
        out[f"bytes_per_vector {high} / {low}"] = {
            f"{high}_index_only": systems[high]["disk"]["bytes_per_vector_index_only"],
            f"{low}_index_only": systems[low]["disk"]["bytes_per_vector_index_only"],
            "ratio_index_only": ratio, "target_at_most": 1.05, "met": ratio is not None and ratio <= 1.05,
            "ratio_all_files": _ratio(systems[high]["disk"]["bytes_per_vector_all_files"],
                                      systems[low]["disk"]["bytes_per_vector_all_files"])}
    return out


# the project's phases (indexer.phases, run_build) against the single process's: what each
# spends on the same work
PHASE_GROUPS = {"sampling": (("planning", "sampling"), ("sampling",)),
                "training": (("training",), ("training",)),
                "adding and writing": (("adding", "merging"), ("adding", "writing")),
                "tuning": (("tuning",), ()),
                "starting Ray (the driver's side; own instance, at the add)": (("starting ray",), ())}


def _median(values: list) -> float | None:
    import statistics

    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _paired(name: str, project: dict, single: dict, metric: str, target: float | None) -> dict:
    """``metric`` of the process tree, per repeat, the project's over the single's run in the
    same repeat (adjacent in time): every pair, and their median as the ratio."""
    pairs = list(zip(project["repeats"], single["repeats"]))
    ratios = [_ratio(p["process_tree"][metric], s["process_tree"][metric]) for p, s in pairs]
    ratio = _median(ratios)
    block = {name: [p["process_tree"][metric] for p, _ in pairs],
             "single_faiss": [s["process_tree"][metric] for _, s in pairs],
             "paired_ratios": ratios, "ratio": ratio}
    if target is not None:
        block.update(target_at_most=target, met=ratio is not None and ratio <= target)
    return block


def _phase_cpu(name: str, project: dict, single: dict) -> dict:
    """Median CPU seconds per phase group over the repeats, project beside single, and what
    each tree spent outside its phases (start-up, imports, Ray's daemons and idle workers)."""
    out = {}
    for group, (ours, theirs) in PHASE_GROUPS.items():
        mine = _median([sum(r["phases"].get(p, {}).get("cpu_seconds", 0.0) for p in ours)
                        for r in project["repeats"]])
        peer = _median([sum(r["phases"].get(p, {}).get("cpu_seconds", 0.0) for p in theirs)
                        for r in single["repeats"]]) if theirs else None
        out[group] = {name: mine, "single_faiss": peer, "ratio": _ratio(mine, peer)}

    def outside(system: dict) -> float | None:
        return _median([r["process_tree"]["cpu_seconds"] - sum(p["cpu_seconds"] for p in r["phases"].values())
                        for r in system["repeats"]])

    out["outside the phases (tree - phases)"] = {name: outside(project), "single_faiss": outside(single)}
    return out


def _single_block(name: str, project: dict, single: dict) -> dict:
    return {
        "repeats": len(project["repeats"]),
        "cpu_seconds": _paired(name, project, single, "cpu_seconds", 1.1),
        "cpu_seconds_by_phase_median": _phase_cpu(name, project, single),
        "peak_rss_bytes": _paired(name, project, single, "peak_rss_bytes", 2.0),
        # PSS: the tree's cost to the machine (RSS counts a shared page once per process
        # mapping it: Ray's object store, the libraries each worker maps)
        "peak_pss_bytes": {name: project["process_tree"].get("peak_pss_bytes"),
                           "single_faiss": single["process_tree"].get("peak_pss_bytes"),
                           "ratio": _ratio(project["process_tree"].get("peak_pss_bytes") or 0,
                                           single["process_tree"].get("peak_pss_bytes") or 0)},
        "wall_seconds": _paired(name, project, single, "wall_seconds", None),
        "bytes_per_vector": {name: project["disk"]["bytes_per_vector_index_only"],
                             f"{name}_all_files": project["disk"]["bytes_per_vector_all_files"],
                             "single_faiss": single["disk"]["bytes_per_vector"],
                             "ratio_index_only": _ratio(project["disk"]["bytes_per_vector_index_only"],
                                                        single["disk"]["bytes_per_vector"])},
        "recall": {name: {f"at_{k}": project[f"recall_at_{k}"] for k in KS},
                   "single_faiss": {f"at_{k}": single[f"recall_at_{k}"] for k in KS}},
    }


def _autofaiss_block(name: str, project: dict, auto: dict, throughput, at_least: bool) -> dict:
    return {
        "vectors_per_second": {name: project["vectors_per_second"],
                               "autofaiss": auto["vectors_per_second"], "ratio": throughput,
                               "target_at_least": 2.0},
        "recall": {name: {f"at_{k}": project[f"recall_at_{k}"] for k in KS},
                   "autofaiss": {f"at_{k}": auto[f"recall_at_{k}"] for k in KS},
                   "project_at_least_autofaiss": at_least},
        "cpu_seconds": {name: project["process_tree"]["cpu_seconds"],
                        "autofaiss": auto["process_tree"]["cpu_seconds"],
                        "ratio": _ratio(project["process_tree"]["cpu_seconds"],
                                        auto["process_tree"]["cpu_seconds"])},
        "peak_rss_bytes": {name: project["process_tree"]["peak_rss_bytes"],
                           "autofaiss": auto["process_tree"]["peak_rss_bytes"],
                           "ratio": _ratio(project["process_tree"]["peak_rss_bytes"],
                                           auto["process_tree"]["peak_rss_bytes"])},
        "bytes_per_vector": {name: project["disk"]["bytes_per_vector_index_only"],
                             "autofaiss": auto["disk"]["bytes_per_vector"]},
        "met": throughput is not None and throughput >= 2.0 and at_least}


def _autofaiss_stopped_block(name: str, project: dict, auto: dict) -> dict:
    """autofaiss stopped at its deadline: throughput bounded, recall unknown, target undecided."""
    bound = _ratio(project["vectors_per_second"], auto["vectors_per_second_at_most"])
    return {"vectors_per_second": {name: project["vectors_per_second"],
                                   "autofaiss_at_most": auto["vectors_per_second_at_most"],
                                   "ratio_at_least": bound, "target_at_least": 2.0},
            "recall": {name: {f"at_{k}": project[f"recall_at_{k}"] for k in KS},
                       "autofaiss": "not measured: its build was stopped at the deadline",
                       "project_at_least_autofaiss": None},
            "cpu_seconds": {name: project["process_tree"]["cpu_seconds"],
                            "autofaiss_until_stopped": auto["process_tree"]["cpu_seconds"]},
            "met": None}


def headline(report: dict) -> dict:
    """The targets at a glance: per section, each target's ratio and whether it is met."""
    out = {}
    for label, section in report["sections"].items():
        if "ratios" not in section:
            out[label] = {"error": section.get("error")}
            continue
        lines = {}
        for pair, block in section["ratios"].items():
            if pair.endswith("/ single_faiss"):
                for metric in ("cpu_seconds", "peak_rss_bytes"):
                    lines[f"{pair}: {metric}"] = {"ratio": block[metric]["ratio"],
                                                  "met": block[metric]["met"]}
            elif pair.endswith("/ autofaiss"):
                lines[f"{pair}: throughput at >= recall"] = {
                    "ratio": block["vectors_per_second"].get("ratio", block["vectors_per_second"].get(
                        "ratio_at_least")),
                    "recall_ok": block["recall"]["project_at_least_autofaiss"], "met": block["met"]}
            else:
                lines[pair] = {"ratio": block["ratio_index_only"], "met": block["met"]}
        out[label] = lines
    return out


def parse_sizes(args) -> list[tuple[int, int]]:
    counts = [int(v) for v in str(args.vectors).split(",")]
    dims = [int(v) for v in str(args.dim).split(",")]
    if len(dims) == 1:
        dims *= len(counts)
    if len(dims) != len(counts):
        raise SystemExit("--dim: one value, or one per --vectors value")
    return list(zip(counts, dims))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", default="1000000",
                        help="Memory size N; a comma list runs one section per size (default 1000000).")
    parser.add_argument("--dim", default="384",
                        help="Dimension: one value for every size, or one per --vectors value "
                             "(default 384; the 10M run uses 128).")
    parser.add_argument("--shards", default="1,4",
                        help="Comma list of shard counts S for the project's builds (default 1,4); "
                             "the first S's factory and nprobe are the single-process peer's.")
    parser.add_argument("--factory", default="auto",
                        help="FAISS factory for the project (and so for the single-process peer); "
                             "'auto' = the project's choice at --bytes-per-vector (exact below 100k "
                             "vectors; OPQ{m}_{d'},IVF{nlist}[_HNSW32],PQ{m}x8 above).")
    parser.add_argument("--bytes-per-vector", "--budget", dest="bytes_per_vector", type=int, default=64,
                        help="PQ code budget in bytes per vector of the project's 'auto' factory "
                             "(default 64); with --autofaiss-budget code also autofaiss's "
                             "max_index_memory_usage (= budget x N bytes).")
    parser.add_argument("--autofaiss-budget", choices=("index", "code"), default="index",
                        help="autofaiss's max_index_memory_usage: index (default) = the bytes of "
                             "the largest index the project built in the section (the same "
                             "whole-index budget); code = --bytes-per-vector x N (the PQ code "
                             "budget alone: autofaiss then gets fewer bytes than the project "
                             "used, as in the runs before 2026-12-02).")
    parser.add_argument("--queries", type=int, default=1000,
                        help="Held-out queries (stream 1 of the same distribution), default 1000.")
    parser.add_argument("--part-rows", type=int, default=250_000,
                        help="Rows per generated chunk = per Parquet part (the project's unit of "
                             "parallel adding) = per .npy file for autofaiss. Default 250000.")
    parser.add_argument("--clusters", type=int, default=1000, help="Clusters of the synthetic space (1000).")
    parser.add_argument("--seed", type=int, default=0, help="Data, training and tuning seed (0).")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count(),
                        help=f"num_cpus of the project's local Ray instance (default: this machine's "
                             f"CPU count, {os.cpu_count()}).")
    from indexer.build import BuildConfig

    default_task_mb = BuildConfig.__dataclass_fields__["task_memory_mb"].default
    parser.add_argument("--ray-instance", choices=("own", "own-at-start", "running", "none"), default="own",
                        help="own (default): each project build starts its local Ray instance (at "
                             "the add, after training, as `vmem index build` does) and stops it, "
                             "and pays for both. own-at-start: the same, the instance started "
                             "before sampling (the build's way before 2026-12-03). running: one instance is started with "
                             "`ray start` before the section (its start-up reported apart) and every "
                             "project build joins it, as a build submitted to a running cluster does; "
                             "a build's figures then add what the instance's processes (daemons, the "
                             "build's workers) used over the build (bench/running_ray.py). none: each "
                             "project build runs its tasks in its own process (`vmem index build "
                             "--no-ray`): the project's code without Ray, to show Ray's share.")
    parser.add_argument("--task-memory-mb", type=int, default=default_task_mb,
                        help="The project's per-task memory (rows read at once); the single-process "
                             f"peer reads chunks of the same size. Default: the build's, {default_task_mb}.")
    parser.add_argument("--repeats", type=int, default=1,
                        help="Measured builds per system, interleaved (project S..., single; the order "
                             "reversed every other repeat). Ratios are the median of the ratios of "
                             "the builds run side by side; the first build of each is searched. "
                             "Default 1; 3 or more on a noisy machine.")
    parser.add_argument("--skip-single", action="store_true",
                        help="Leave out the single-process FAISS baseline (e.g. a 10M run that only "
                             "checks the build completes; its ratios are then absent).")
    parser.add_argument("--skip-autofaiss", action="store_true",
                        help="Leave autofaiss out (no venv, no .npy copy).")
    parser.add_argument("--autofaiss-memory", default="16G",
                        help="autofaiss current_memory_available (default 16G: a 24 GB machine less "
                             "the OS and page cache).")
    parser.add_argument("--autofaiss-deadline", type=float, default=0.0, metavar="FACTOR",
                        help="Stop autofaiss's build once it has run FACTOR times the slowest project "
                             "build of the section (e.g. 2: the throughput target's factor); its "
                             "throughput is then bounded and its recall not measured. Default 0: "
                             "let it finish (at 10M x 128 on 2 CPUs it took 55 minutes, "
                             "2026-12-02).")
    parser.add_argument("--work", default=None,
                        help="Folder for the scratch data (default: the system temp folder). The 10M "
                             "x 128 run needs about 15 GB with autofaiss (Parquet + .npy + indexes).")
    parser.add_argument("--keep-work", action="store_true", help="Keep the scratch data and phase logs.")
    parser.add_argument("--sample-interval", type=float, default=0.5,
                        help="Seconds between samples of a process tree's RSS (default 0.5).")
    parser.add_argument("--teardown-timeout", type=float, default=60.0,
                        help="Seconds a build's leftover processes (Ray daemons) get to exit after it "
                             "does before they are killed (default 60).")
    parser.add_argument("--out", help="Also write the JSON document to this file.")
    # Phases: one measured (or searched) system per fresh process.
    parser.add_argument("--phase", choices=("project", "project-search", "single", "single-search"),
                        help=argparse.SUPPRESS)
    for hidden in ("--root", "--version", "--queries-file", "--found-file", "--index-file"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--num-shards", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ray-address", help=argparse.SUPPRESS)
    parser.add_argument("--no-ray", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ray-at-start", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nprobe", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "project":
        emit_phase(phase_project(args.root, args.num_shards, args.factory, args.bytes_per_vector,
                                 args.seed, args.ray_cpus, args.task_memory_mb, args.ray_address,
                                 use_ray=not args.no_ray, at_start=args.ray_at_start))
        return 0
    if args.phase == "project-search":
        emit_phase(phase_project_search(args.root, args.version, args.queries_file, args.found_file))
        return 0
    if args.phase == "single":
        emit_phase(phase_single(args.root, args.factory, args.seed, args.index_file, args.task_memory_mb))
        return 0
    if args.phase == "single-search":
        emit_phase(phase_single_search(args.index_file, args.nprobe, args.queries_file, args.found_file))
        return 0

    from bench import proctree

    args.shards = [int(s) for s in args.shards.split(",")]
    sizes = parse_sizes(args)
    subreaper = proctree.become_subreaper()
    report: dict = {"benchmark": "index", "machine": {**machine(), "cpu_count": os.cpu_count(),
                                                      "memory_bytes": proctree.psutil.virtual_memory().total},
                    "config": {k: v for k, v in vars(args).items() if k in (
                        "shards", "factory", "bytes_per_vector", "queries", "part_rows", "clusters", "seed", "repeats",
                        "ray_cpus", "ray_instance", "task_memory_mb", "autofaiss_memory", "sample_interval")},
                    "measurement": {"child_subreaper": subreaper, "targets": TARGETS,
                                    "bytecode": compile_bytecode()},
                    "sections": {}}
    autofaiss = None
    if not args.skip_autofaiss:
        autofaiss = autofaiss_python()
        report["autofaiss_venv"] = {"path": str(AUTOFAISS_VENV), "versions": autofaiss_versions(autofaiss),
                                    "shim": "faiss.OPQMatrix keyword arguments (M=, d2=) -> positional"}
    for count, dim in sizes:
        report["sections"][f"{count}x{dim}"] = run_section(count, dim, args, autofaiss)
    report["headline"] = headline(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if any("error" in s for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
