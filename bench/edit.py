"""Edit benchmark (issue 11): what an add or a delete costs until every replica serves it, as a
shard grows; compaction against a full rebuild; queries under tombstones. JSON out.

    .venv/bin/python bench/edit.py --sizes 100000 1000000 --out bench/results-edit.json

Per size N (one shard, synthetic IVF-PQ):

- the memory is made directly: the IVF-PQ quantizer is trained on a seeded sample of a
  decaying-spectrum distribution (bench/synthetic.py), and the N items get seeded random list
  assignments and PQ codes (written straight into the inverted lists: an edit's cost does not
  depend on the codes' values, and encoding 10M vectors would take longer than the benchmark);
- ``serve``: the project's Serve app on 127.0.0.1 with 2 router replicas, then R single adds
  (one embedding) and R single deletes (one id) through the HTTP API. An edit's response
  returns once every live replica lease serves the new version (serving/writer.py), so its
  latency is "until visible on every replica"; each is then checked with queries over fresh
  connections. Baseline in the same run: rewriting the shard, which is what every edit cost
  before segments (measured as the compaction of that shard);
- ``compaction``: vectors/s of ``run_compact`` over the shard with 10 % tombstones and a delta
  segment; at sizes up to ``--rebuild-max`` also a full ``run_build`` of the same N from an
  embedding batch (same factory), as vectors/s, and their ratio;
- ``tombstones``: in-process query latency (ShardedIndex.search, k = 10 and 100, one query per
  call) with 0 %, 10 % and 30 % of the items tombstoned, as ratios to 0 %.

CPU-seconds are reported next to wall times (this machine is noisy).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import compile_bytecode, emit_report  # noqa: E402


def progress(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------- the memory

def synthetic_memory(root: str, count: int, dim: int, nlist: int, m: int, seed: int, space):
    """A published one-shard IVF-PQ version of ``count`` items with random codes (see module
    docstring). Returns its manifest."""
    import faiss
    import pyarrow as pa

    from indexer.checksums import sha256_bytes
    from indexer.layout import index_root, new_version_name, set_latest
    from indexer.manifest import IndexManifest, ShardEntry
    from indexer.segments import write_segment
    from pipelines import storage

    factory = f"IVF{nlist},PQ{m}x8"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(space.chunk(max(40 * nlist, 256 * 40), stream=2, number=0))
    trained = faiss.serialize_index(index).tobytes()
    rng = np.random.default_rng([seed, count])
    ids = np.unique(rng.integers(1, 2**62, int(count * 1.01)))[:count]
    rng.shuffle(ids)
    lists = rng.integers(0, nlist, count)
    ivf = faiss.extract_index_ivf(index)
    order = np.argsort(lists, kind="stable")
    for chunk_start in range(0, count, 2_000_000):  # codes generated in bounded chunks
        chunk = order[chunk_start:chunk_start + 2_000_000]
        codes = rng.integers(0, 256, (len(chunk), ivf.code_size), dtype=np.uint8)
        chunk_lists = lists[chunk]
        for number in np.unique(chunk_lists):
            rows = np.flatnonzero(chunk_lists == number)
            list_ids = np.ascontiguousarray(ids[chunk[rows]])  # kept alive across the call
            list_codes = np.ascontiguousarray(codes[rows])
            ivf.invlists.add_entries(int(number), len(rows), faiss.swig_ptr(list_ids),
                                     faiss.swig_ptr(list_codes))
    ivf.ntotal = index.ntotal = count
    meta = pa.table({"id": pa.array(ids, pa.int64()),
                     "label": pa.array((ids % 100).astype(str).astype(object), pa.string()),
                     "key": pa.array(np.char.add("k", ids.astype(str)).astype(object), pa.string()),
                     "source": pa.nulls(count, pa.string()), "content_hash": pa.nulls(count, pa.string()),
                     "batch": pa.array(["synthetic"] * count, pa.string())})
    version = new_version_name()
    segment = write_segment(index_root(root), f"{version}/shard-00000", index, meta, None)
    trained_path = f"{version}/trained.faiss"
    storage.write_bytes_atomic(storage.join(index_root(root), trained_path), trained)
    manifest = IndexManifest(version=version, parent=None, created=datetime.now(timezone.utc).isoformat(),
                             operation="build", encoder="synthetic", dim=dim, factory=factory,
                             num_shards=1, count=count,
                             search_defaults={"k": 100, "nprobe": 16, "rerank": False, "k_factor": 4},
                             shards=[ShardEntry(0, count, [segment])], batches=[],
                             trained_path=trained_path, trained_sha256=sha256_bytes(trained))
    manifest.write(root)
    set_latest(root, version)
    return manifest


# --------------------------------------------------------------------------- serve

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(root: str, routers: int, token: str):
    import ray
    import requests
    from ray import serve

    from serving.serve import DEFAULT_CONFIG, load_config, start

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    from indexer.localray import init_local
    init_local(include_dashboard=False, log_to_driver=False)  # loopback only (indexer/localray.py)
    port = free_port()
    config = load_config(DEFAULT_CONFIG, root, "127.0.0.1", port,
                         {"token": token, "embeddings_only": True, "searcher_groups": 0})
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Router":
            deployment["num_replicas"] = routers
    try:
        start(config)
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while time.monotonic() - started < 600:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median_ms": round(1000 * statistics.median(ordered), 1),
            "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 1),
            "max_ms": round(1000 * ordered[-1], 1), "n": len(ordered)}


def measure_edits(root: str, space, args) -> dict:
    import requests

    token = "bench-edit-token"
    headers = {"Authorization": f"Bearer {token}"}
    adds, deletes, add_visible, delete_gone = [], [], 0, 0
    with served(root, args.routers, token) as url:
        vectors = space.chunk(args.repeats, stream=3, number=0)
        for i, vector in enumerate(vectors):  # warm-up edit first (not counted)
            item = {"key": f"bench/{i}", "label": "bench", "embedding": vector.tolist()}
            started = time.perf_counter()
            response = requests.post(f"{url}/v1/memory/items", headers=headers, json={"items": [item]})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if i:
                adds.append(elapsed)
            assert response.json()["replicas"]["lagging"] == [], response.json()
            found = [requests.post(f"{url}/v1/neighbors", json={"embedding": vector.tolist(), "k": 100})
                     .json()["neighbours"] for _ in range(args.checks)]
            add_visible += sum(any(n["key"] == f"bench/{i}" for n in row) for row in found)
        for i, vector in enumerate(vectors):
            started = time.perf_counter()
            response = requests.delete(f"{url}/v1/memory/items", headers=headers, json={"keys": [f"bench/{i}"]})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if i:
                deletes.append(elapsed)
            found = [requests.post(f"{url}/v1/neighbors", json={"embedding": vector.tolist(), "k": 100})
                     .json()["neighbours"] for _ in range(args.checks)]
            delete_gone += sum(all(n["key"] != f"bench/{i}" for n in row) for row in found)
    checks = len(vectors) * args.checks
    return {"routers": args.routers, "add_until_every_replica": summary(adds),
            "delete_until_every_replica": summary(deletes),
            "add_visible_in_queries": f"{add_visible}/{checks}",
            "deleted_absent_in_queries": f"{delete_gone}/{checks}"}


# --------------------------------------------------------------------------- compaction, tombstones

def measure_tombstones(root: str, space, args) -> dict:
    from indexer.edit import ForgetRequest, run_delete
    from indexer.executor import LocalExecutor
    from indexer.search import ShardedIndex
    from indexer.segments import CompactionPolicy
    from indexer.store import resolve_version

    never = CompactionPolicy(max_tombstone_fraction=1.0, max_segments=1000)
    queries = space.chunk(args.queries + 20, stream=1, number=0)
    manifest = resolve_version(root)
    ids = np.sort(ShardedIndex.ids_of(root, manifest))
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(ids))
    out, done = {}, 0
    for fraction in (0.0, 0.1, 0.3):
        target = int(fraction * len(ids))
        if target > done:
            run_delete(root, ForgetRequest(ids=ids[order[done:target]].tolist()), LocalExecutor(),
                       operation="prune-hard", policy=never)
            done = target
        index = ShardedIndex(root, resolve_version(root))
        point = {}
        for k in (10, 100):
            for q in queries[:20]:
                index.search(q[None], k)
            times, cpu = [], cpu_seconds()
            for q in queries[20:]:
                started = time.perf_counter()
                index.search(q[None], k)
                times.append(time.perf_counter() - started)
            point[f"k{k}"] = {**summary(times), "cpu_ms_per_query": round(1000 * (cpu_seconds() - cpu) / len(times), 3)}
        out[f"{int(fraction * 100)}%"] = point
    for k in ("k10", "k100"):
        base = out["0%"][k]["median_ms"]
        for key in ("10%", "30%"):
            out[key][k]["ratio_to_0%"] = round(out[key][k]["median_ms"] / base, 3) if base else None
    return out


def measure_compaction(root: str, count: int, space, args, work: str) -> dict:
    from indexer.edit import run_compact
    from indexer.executor import LocalExecutor
    from indexer.store import resolve_version

    before = resolve_version(root)
    started, cpu = time.perf_counter(), cpu_seconds()
    compacted = run_compact(root, LocalExecutor())
    seconds, cpu_used = time.perf_counter() - started, cpu_seconds() - cpu
    result = {"stored_rows": before.shards[0].stored, "live_rows": compacted.count,
              "tombstoned": before.shards[0].tombstoned, "segments": len(before.shards[0].segments),
              "seconds": round(seconds, 3), "cpu_seconds": round(cpu_used, 3),
              "vectors_per_second": round(before.shards[0].stored / seconds, 1)}
    if count <= args.rebuild_max:
        from bench.synthetic import write_batch_chunks
        from indexer.build import BuildConfig, run_build

        rebuild_root = os.path.join(work, f"rebuild-{count}")
        write_batch_chunks(rebuild_root, "synthetic", space.chunks(count, stream=0, chunk=100_000))
        started, cpu = time.perf_counter(), cpu_seconds()
        run_build(BuildConfig(rebuild_root, factory=before.factory), LocalExecutor())
        rebuild_s, rebuild_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        shutil.rmtree(rebuild_root, ignore_errors=True)
        result["full_rebuild"] = {"vectors": count, "seconds": round(rebuild_s, 3),
                                  "cpu_seconds": round(rebuild_cpu, 3),
                                  "vectors_per_second": round(count / rebuild_s, 1)}
        result["compaction_over_rebuild_throughput"] = round(result["vectors_per_second"]
                                                             / result["full_rebuild"]["vectors_per_second"], 2)
    else:
        result["full_rebuild"] = f"skipped above --rebuild-max {args.rebuild_max}"
    return result


def one_size(count: int, args, work: str) -> dict:
    from bench.synthetic import DecayingSpace

    space = DecayingSpace(args.dim, args.seed)
    root = os.path.join(work, f"memory-{count}")
    try:
        progress(f"{count}: making a synthetic IVF{args.nlist},PQ{args.m}x8 memory")
        started = time.perf_counter()
        synthetic_memory(root, count, args.dim, args.nlist, args.m, args.seed, space)
        made_s = time.perf_counter() - started
        progress(f"{count}: made in {made_s:.1f} s; single edits through Serve")
        edits = measure_edits(root, space, args)
        progress(f"{count}: {json.dumps(edits)}")
        progress(f"{count}: query latency under tombstones")
        tombstones = measure_tombstones(root, space, args)
        progress(f"{count}: compaction")
        compaction = measure_compaction(root, count, space, args, work)
        baseline_ms = 1000 * compaction["seconds"]
        for kind in ("add_until_every_replica", "delete_until_every_replica"):
            edits[kind]["ratio_to_whole_shard_rewrite"] = round(edits[kind]["median_ms"] / baseline_ms, 4)
        return {"vectors": count, "made_seconds": round(made_s, 1), "edits": edits,
                "whole_shard_rewrite_ms (old per-edit cost)": round(baseline_ms, 1),
                "compaction": compaction, "query_under_tombstones": tombstones}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--m", type=int, default=32, help="PQ sub-quantizers (bytes per code)")
    parser.add_argument("--routers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=11, help="single adds and deletes per size")
    parser.add_argument("--checks", type=int, default=10, help="queries checking each edit")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rebuild-max", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="vmem-bench-edit-")
    os.makedirs(work, exist_ok=True)
    started = time.time()
    results = {"benchmark": "edit", "created": datetime.now(timezone.utc).isoformat(),
               "command": " ".join(["bench/edit.py"] + (argv or sys.argv[1:])),
               "machine": {"cpus": os.cpu_count()}, "bytecode": compile_bytecode(), "by_size": {}}
    for count in args.sizes:
        results["by_size"][str(count)] = one_size(count, args, work)
    sizes = [str(s) for s in args.sizes]
    if len(sizes) > 1:
        first, last = results["by_size"][sizes[0]], results["by_size"][sizes[-1]]
        results["flat_in_n"] = {kind: round(last["edits"][kind]["median_ms"] / first["edits"][kind]["median_ms"], 2)
                                for kind in ("add_until_every_replica", "delete_until_every_replica")}
        results["flat_in_n"]["sizes"] = [sizes[0], sizes[-1]]
    results["seconds"] = round(time.time() - started, 1)
    emit_report(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
