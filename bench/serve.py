"""Serving benchmark: the project over HTTP (Ray Serve on 127.0.0.1) next to its peers, all
measured in the same run on the same held-out queries; one JSON document with every figure
beside its peers' and as ratios (stdout, and ``--out FILE``). Progress lines go to stderr.

Memories (seeded synthetic unit vectors with a decaying spectrum, bench/synthetic.py; queries
are a separate stream of the same distribution, so they are not in the memory), each built by
``indexer.build.run_build`` at S = 1 and S = 4 shards (``--shards``) from one batch on disk:

  ann    --vectors x --dim, ``--factory auto`` at --bytes-per-vector 64 (IVF4096,PQ64x8 at 1M),
         --keep-vectors fp16 (exact re-rank of PQ candidates from memory-mapped vectors);
         search defaults tuned by the build (recall target 0.95 at k = 10 and 100)
  exact  --exact-vectors x --dim, IDMap2,Flat

Systems, per memory and shard count:

  project_groups0           the project over HTTP, embeddings_only, searcher_groups 0
                            (search inside the router: the single-machine default)
  project_groups1           ... searcher_groups 1 (one searcher replica: one more hop)
  in_process_sharded_index  indexer.search.ShardedIndex in this process (the project's own
                            searcher, the same defaults and re-rank, no HTTP)
  in_process_raw_faiss      the S = 1 file read into RAM (the version's quantizer attached),
                            index.search at the same nprobe (no re-rank: PQ scores)  [S = 1]
  clip_back                 clip-retrieval's clip back serving the S = 1 file (same nprobe, no
                            re-rank) and its Arrow metadata, memory-mapped, over HTTP  [S = 1]
  serve_floor               a trivial Serve FastAPI app echoing the 384-float body: the floor
                            under any Serve app on this machine (measured once, shown in every
                            block)

Per system, at k = 10 and 100 and concurrency 1 and 8 (closed loop, one requests.Session per
thread): p50 / p99 / mean latency, QPS, errors, CPU seconds of the serving process tree per
1,000 queries, in total and by process (wall time on a small shared machine is noisy; for
in-process systems, this process), recall@k against brute force. For served systems: RSS / PSS / USS of every process
of the serving tree (Ray: every process of this run's Ray instance, named by its title; clip
back: its process tree) with totals, RAM bytes per vector, and the memory target "tree RSS <=
1.5 GB + 1.2 x (codes + ids)", codes + ids being the shard .faiss files.

Flat in N: in-process ``serving.answers.answer(searcher, q, k=10)`` time per single query on
one shard of --sizes vectors (--flat-n-dim, --flat-n-factory, no kept vectors; generated in
chunks straight into Parquet parts), at a fixed nprobe (--flat-n-nprobe) and at each build's
tuned default; lowest of 3 round medians; ratio largest / smallest. With a fixed nlist, the
codes a query scans grow as nprobe x N / nlist: the report shows them next to the times.

Servers bind 127.0.0.1 only and are stopped at the end, on failure and on SIGTERM; a failed
section is reported under "errors" (exit status 1) and the others still run.

    nice -n 10 .venv/bin/python bench/serve.py --out serve.json   # full size (about an hour+)
    nice -n 10 .venv/bin/python bench/serve.py --quick            # smoke: small sizes, minutes

clip back runs in its own virtualenv (``bash bench/peers/setup_clip_back.sh``); without it,
or with --no-clip-back, its entries say "skipped: <reason>".
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from bench import proctree  # noqa: E402
from bench.common import compile_bytecode, machine  # noqa: E402
from bench.load import run_load  # noqa: E402

CLIP_PYTHON = REPO / "bench" / ".venv-clip-back" / "bin" / "python"
CLIP_SCRIPT = REPO / "bench" / "peers" / "clip_back.py"
TARGET_FIXED_BYTES = 1.5e9  # memory target: tree RSS <= 1.5 GB + 1.2 x (codes + ids)
TARGET_FACTOR = 1.2
JSON_HEADERS = {"Content-Type": "application/json"}

FULL = {"vectors": 1_000_000, "exact_vectors": 100_000, "factory": "auto", "queries": 1000,
        "warmup": 50, "clusters": 1000, "sizes": "100000,1000000,10000000", "flat_n_queries": 1000,
        "flat_n_factory": "IVF4096,PQ16x8"}
# The smoke: every path of the full run at sizes that build in seconds (PQ training is the cost).
QUICK = {"vectors": 20_000, "exact_vectors": 10_000, "factory": "IVF256,PQ16x8", "queries": 100,
         "warmup": 10, "clusters": 100, "sizes": "20000,50000", "flat_n_queries": 200,
         "flat_n_factory": "IVF256,PQ16x8"}
_STARTED = time.monotonic()


def exit_on_sigterm(*_) -> None:
    """SIGTERM -> SystemExit: the finally blocks stop every server this run started."""
    sys.exit(143)


def progress(message: str) -> None:
    print(f"[bench/serve {time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memories

@dataclass
class Memory:
    """One synthetic memory on disk, built at several shard counts, with its held-out queries
    (measured rows first, then the warm-up rows) and their exact neighbours (bench ids)."""

    name: str
    root: str
    count: int
    queries: np.ndarray
    measured: int
    truth: np.ndarray | None  # None: no ground truth (the Serve floor's echo)
    manifests: dict[int, Any] = field(default_factory=dict)
    builds: dict[str, dict] = field(default_factory=dict)


def write_with_exact_index(root: str, space, count: int, chunk: int):
    """Write the memory as Parquet parts, chunk by chunk, into an exact IndexFlatIP too."""
    import faiss

    from bench.synthetic import write_batch_chunks

    exact = faiss.IndexFlatIP(space.dim)

    def chunks():
        for vectors in space.chunks(count, stream=0, chunk=chunk):
            exact.add(vectors)
            yield vectors

    write_batch_chunks(root, "synthetic", chunks())
    return exact


def index_files(root: str, manifest) -> dict:
    """Bytes of a version's shard files: codes + ids (the .faiss files), metadata, vectors."""
    def size(path: str) -> int:
        return os.path.getsize(os.path.join(root, "index", path)) if path else 0

    return {"codes_ids_bytes": sum(size(e.index_path) for e in manifest.shards),
            "metadata_bytes": sum(size(e.metadata_path) for e in manifest.shards),
            "vectors_bytes": sum(size(e.vectors_path) for e in manifest.shards)}


def build(root: str, shards: int, factory: str, keep_vectors: str, args) -> tuple[Any, dict]:
    from indexer.build import BuildConfig, run_build
    from indexer.executor import LocalExecutor

    started = time.perf_counter()
    manifest = run_build(BuildConfig(root, num_shards=shards, factory=factory,
                                     bytes_per_vector=args.bytes_per_vector,
                                     keep_vectors=keep_vectors, seed=args.seed), LocalExecutor())
    info = {"version": manifest.version, "factory": manifest.factory, "num_shards": shards,
            "count": manifest.count, "keep_vectors": keep_vectors,
            "search_defaults": manifest.search_defaults,
            "tuning_reached_target": manifest.details.get("tuning_reached_target"),
            "build_seconds": round(time.perf_counter() - started, 1), **index_files(root, manifest)}
    return manifest, info


def prepare_memory(name: str, root: str, count: int, factory: str, keep_vectors: str, args) -> Memory:
    from bench.synthetic import DecayingSpace

    space = DecayingSpace(args.dim, args.seed, args.clusters)
    progress(f"{name}: writing {count} x {args.dim} vectors")
    exact = write_with_exact_index(root, space, count, args.chunk)
    queries = space.chunk(args.queries + args.warmup, stream=1, number=0)
    truth = exact.search(queries[:args.queries], max(args.ks))[1] + 1  # bench ids are row + 1
    del exact
    memory = Memory(name, root, count, queries, args.queries, truth)
    for shards in args.shards:
        progress(f"{name}: building S={shards} ({factory}, keep_vectors {keep_vectors})")
        memory.manifests[shards], memory.builds[str(shards)] = build(root, shards, factory,
                                                                     keep_vectors, args)
        progress(f"{name}: S={shards} built: {memory.builds[str(shards)]['factory']}, "
                 f"defaults {memory.manifests[shards].search_defaults}")
    return memory


# --------------------------------------------------------------------------- systems

@dataclass
class System:
    """A system under test: per-thread clients, how to read ids from an answer, and which
    processes do its work (their CPU time is charged; their memory reported if ``served``)."""

    name: str
    make_client: Callable[[], Callable[[int, int], Any]]
    ids_of: Callable[[Any], list[int]]
    processes: Callable[[], list]
    served: bool = True
    holds_searcher: Callable[[str], bool] = lambda name: False


class HttpError(RuntimeError):
    pass


def http_system(name: str, url: str, bodies: dict[int, list[bytes]], ids_of, processes,
                holds_searcher=lambda name: False) -> System:
    """POSTs of pre-serialised bodies (``bodies[k][row]``); any status but 200 is an error."""
    import requests

    def make_client():
        session = requests.Session()

        def fetch(row: int, k: int) -> bytes:
            response = session.post(url, data=bodies[k][row], headers=JSON_HEADERS, timeout=120)
            if response.status_code != 200:
                raise HttpError(f"HTTP {response.status_code}: {response.text[:200]}")
            return response.content
        return fetch

    return System(name, make_client, ids_of, processes, True, holds_searcher)


def in_process_system(name: str, search: Callable[[np.ndarray, int], np.ndarray],
                      queries: np.ndarray) -> System:
    """``search(queries (1, d), k) -> (1, k) ids`` called in this process."""
    def make_client():
        return lambda row, k: search(queries[row:row + 1], k)[0]

    return System(name, make_client, lambda ids: ids, proctree.this_process, served=False)


def project_bodies(queries: np.ndarray, ks: list[int]) -> dict[int, list[bytes]]:
    return {k: [orjson.dumps({"embedding": q.tolist(), "k": k}) for q in queries] for k in ks}


def clip_back_bodies(queries: np.ndarray, ks: list[int]) -> dict[int, list[bytes]]:
    return {k: [orjson.dumps({"embedding_input": q.tolist(), "modality": "image", "num_images": k,
                              "indice_name": "bench", "deduplicate": False}) for q in queries]
            for k in ks}


def project_ids(raw: bytes) -> list[int]:
    return [n["id"] for n in orjson.loads(raw)["neighbours"]]


def clip_back_ids(raw: bytes) -> list[int]:
    """clip back answers faiss labels; its metadata is padded so that row == label == bench id."""
    return [r["id"] for r in orjson.loads(raw)]


# --------------------------------------------------------------------------- measuring

def recall(found: list[list[int]], truth: np.ndarray) -> float:
    from indexer.tuning import recall_at

    k = truth.shape[1]
    padded = np.full((len(found), k), -1, dtype=np.int64)
    for row, ids in enumerate(found):
        ids = np.asarray(ids, dtype=np.int64)[:k]
        padded[row, :len(ids)] = ids
    return round(recall_at(padded, truth), 4)


def measure(system: System, memory: Memory, k: int, concurrency: int) -> dict:
    """One closed-loop run over every measured query: latency, QPS, errors, CPU, recall@k."""
    before = proctree.cpu_snapshot(system.processes())
    result = run_load(system.make_client, list(range(memory.measured)), k, concurrency)
    by_process = proctree.cpu_by_process(before, proctree.cpu_snapshot(system.processes()))
    cpu = sum(by_process.values())
    stats = result.stats()
    stats["load_average_1m"] = round(os.getloadavg()[0], 2)  # others' work on the machine
    stats["cpu_s"] = round(cpu, 3)
    stats["cpu_s_per_1k"] = round(1000 * cpu / max(result.requests, 1), 3)
    if system.served:
        stats["cpu_s_per_1k_by_process"] = {
            name: round(1000 * seconds / max(result.requests, 1), 2)
            for name, seconds in sorted(by_process.items(), key=lambda item: -item[1]) if seconds > 0}
    rows = sorted(result.answers)
    if memory.truth is not None and rows:
        stats[f"recall_at_{k}"] = recall([system.ids_of(result.answers[r]) for r in rows],
                                         memory.truth[rows, :k])
    return stats


def warm_up(system: System, memory: Memory, k: int) -> None:
    rows = list(range(memory.measured, len(memory.queries)))
    if rows:
        run_load(system.make_client, rows, k, 1)


def tree_memory(system: System, count: int, codes_ids_bytes: int) -> dict:
    """The serving tree's memory, RAM bytes per vector and the memory target."""
    usage = proctree.memory(system.processes())
    holders = [p for p in usage["processes"] if system.holds_searcher(p["name"])]
    holder_rss = sum(p["rss_bytes"] for p in holders)
    target = TARGET_FIXED_BYTES + TARGET_FACTOR * codes_ids_bytes
    usage["searcher_holder"] = {"names": [p["name"] for p in holders], "rss_bytes": holder_rss,
                                "pss_bytes": sum(p["pss_bytes"] for p in holders)}
    usage["ram_bytes_per_vector"] = {
        "tree_rss": round(usage["rss_total_bytes"] / count, 1),
        "tree_pss": round(usage["pss_total_bytes"] / count, 1),
        "searcher_holder_rss": round(holder_rss / count, 1) if holders else None}
    usage["target"] = {"codes_ids_bytes": codes_ids_bytes, "tree_rss_at_most_bytes": int(target),
                       "tree_rss_bytes": usage["rss_total_bytes"],
                       "tree_rss_over_target": round(usage["rss_total_bytes"] / target, 3),
                       "met": usage["rss_total_bytes"] <= target}
    return usage


def measure_system(system: System, memory: Memory, args, codes_ids_bytes: int = 0,
                   ks: list[int] | None = None) -> dict:
    out: dict[str, Any] = {}
    if system.served:
        out["settled_seconds"] = proctree.wait_quiet(system.processes)
    for k in ks or args.ks:
        warm_up(system, memory, k)
        for concurrency in args.concurrency:
            stats = measure(system, memory, k, concurrency)
            out.setdefault(f"k{k}", {})[f"c{concurrency}"] = stats
            progress(f"  {system.name} k={k} c={concurrency}: p50 {stats['p50_ms']} ms, "
                     f"p99 {stats['p99_ms']} ms, {stats['qps']} qps, {stats['cpu_s_per_1k']} "
                     f"cpu-s/1k, errors {stats['errors']}"
                     + (f", recall {stats[f'recall_at_{k}']}" if f"recall_at_{k}" in stats else ""))
    if system.served:
        out["memory"] = tree_memory(system, memory.count, codes_ids_bytes)
        progress(f"  {system.name}: tree RSS {out['memory']['rss_total_bytes'] / 2**20:.0f} MiB, "
                 f"PSS {out['memory']['pss_total_bytes'] / 2**20:.0f} MiB")
    return out


# --------------------------------------------------------------------------- in-process systems

def measure_in_process(memory: Memory, shards: int, args) -> dict:
    """The project's searcher in this process, and (S = 1) raw FAISS on the same file."""
    from indexer.search import ShardedIndex, faiss_params
    from indexer.store import load_index

    manifest = memory.manifests[shards]
    out = {}
    progress(f"{memory.name} S={shards}: in-process ShardedIndex")
    index = ShardedIndex(memory.root, manifest)
    out["in_process_sharded_index"] = measure_system(
        in_process_system("in_process_sharded_index", lambda q, k: index.search(q, k)[1],
                          memory.queries), memory, args)
    out["in_process_sharded_index"]["searching"] = (
        f"ShardedIndex(root, manifest).search(q, k): the version's defaults {manifest.search_defaults}")
    if shards == 1:
        progress(f"{memory.name} S=1: in-process raw faiss")
        # the shard file read into RAM, with the version's quantizer (and rotation) attached:
        # segment files hold inverted lists only (indexer/quantizer.py)
        raw = load_index(memory.root, manifest.shards[0].base, mmap=False, manifest=manifest)
        nprobe = int(manifest.search_defaults.get("nprobe") or 0)
        params = faiss_params(raw, nprobe)
        out["in_process_raw_faiss"] = measure_system(
            in_process_system("in_process_raw_faiss", lambda q, k: raw.search(q, k, params=params)[1],
                              memory.queries), memory, args)
        out["in_process_raw_faiss"]["searching"] = (
            f"faiss.read_index (in RAM, the version's quantizer attached) + index.search(q, k, "
            f"nprobe={nprobe if params else None}), "
            "no re-rank")
        del raw
    return out


# --------------------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll GET ``url`` until it answers 200; raise if ``process`` exits or time runs out."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def clip_back_skip_reason(args) -> str | None:
    if args.no_clip_back:
        return "skipped: --no-clip-back"
    if not CLIP_PYTHON.exists():
        return f"skipped: {CLIP_PYTHON.relative_to(REPO)} missing (bash bench/peers/setup_clip_back.sh)"
    return None


def prepare_clip_back_folder(memory: Memory, folder: str) -> int | None:
    """clip back's folder for the S = 1 shard: its index made self-contained (the version's
    quantizer attached, nprobe saved) and its metadata as Arrow, padded so that row number ==
    id. Returns the nprobe saved."""
    from bench.peers.clip_back import prepare_index_folder
    from indexer.factory import nlist_of
    from indexer.store import load_index, load_metadata

    manifest = memory.manifests[1]
    entry = manifest.shards[0]
    table = load_metadata(memory.root, entry)
    ids = table.column("id").to_numpy()
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        raise ValueError("clip back needs ids 1 ... N (row == id after one padding row)")
    nprobe = int(manifest.search_defaults.get("nprobe") or 0) if nlist_of(manifest.factory) else 0
    # a self-contained index: the shard file holds inverted lists only, the version's trained
    # index gives it its quantizer (and rotation); written whole for clip back
    index = load_index(memory.root, entry, mmap=False, manifest=manifest)
    prepare_index_folder(folder, index, table, nprobe=nprobe or None, metadata_format="arrow",
                         first_id=1)
    return nprobe or None


@contextlib.contextmanager
def clip_back_served(folder: str, log_path: str, startup_timeout: float) -> Iterator[tuple[str, int]]:
    """clip back on 127.0.0.1 (its own venv, no CLIP model, index memory-mapped, Arrow
    metadata); yields (knn url, server pid); always stopped."""
    port = free_port()
    command = [str(CLIP_PYTHON), str(CLIP_SCRIPT), "--index-folder", folder, "--port", str(port),
               "--host", "127.0.0.1", "--name", "bench", "--mmap", "--metadata", "arrow",
               "--columns", "key,source,label", "--clip-model", "none"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/indices-list", startup_timeout, process)
        except Exception as error:
            tail = Path(log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"clip back did not start: {error}\n{tail}") from error
        yield f"http://127.0.0.1:{port}/knn-service", process.pid
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM the server, SIGKILL after 15 s; then any process it left behind."""
    if process.poll() is not None:
        return
    children = proctree.process_tree(process.pid)[1:]
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(15)
    for child in children:
        with contextlib.suppress(proctree.psutil.NoSuchProcess):
            child.kill()


def measure_clip_back(memory: Memory, args, work: str) -> dict:
    folder = os.path.join(work, f"clip-back-{memory.name}")
    progress(f"{memory.name} S=1: preparing clip back's folder")
    nprobe = prepare_clip_back_folder(memory, folder)
    with clip_back_served(folder, os.path.join(work, f"clip-back-{memory.name}.log"),
                          args.startup_timeout) as (url, pid):
        progress(f"{memory.name} S=1: clip back up (pid {pid})")
        system = http_system("clip_back", url, clip_back_bodies(memory.queries, args.ks),
                             clip_back_ids, lambda: proctree.process_tree(pid),
                             holds_searcher=lambda name: True)
        result = measure_system(system, memory, args, memory.builds["1"]["codes_ids_bytes"])
    result["nprobe"] = nprobe
    result["options"] = "--mmap --metadata arrow --clip-model none (one Flask process, threaded)"
    return result


# --------------------------------------------------------------------------- Ray Serve

@contextlib.contextmanager
def ray_running() -> Iterator[None]:
    """A local Ray instance on 127.0.0.1 (as ``serving.serve.start`` makes one), quiet, with
    this repository importable by its workers (the echo app lives in bench/)."""
    import logging

    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    from indexer.localray import init_local
    init_local(include_dashboard=False, log_to_driver=False)  # loopback only (indexer/localray.py)
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # Ray's own handler aborts, leaving servers
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        if not proctree.ray_tree():
            raise RuntimeError("no Ray process found under this process: joined another instance?")
        yield
    finally:
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


@contextlib.contextmanager
def echo_served(startup_timeout: float) -> Iterator[str]:
    from ray import serve

    from bench.serve_echo import app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app, name="echo", route_prefix="/")
        wait_http(f"http://127.0.0.1:{port}/healthz", startup_timeout)
        yield f"http://127.0.0.1:{port}/echo"
    finally:
        serve.shutdown()


@contextlib.contextmanager
def project_served(memory: Memory, shards: int, groups: int, routers: int,
                   startup_timeout: float) -> Iterator[tuple[str, str]]:
    """The project's Serve app over one built version (pinned), embeddings only, on 127.0.0.1,
    with ``routers`` Router replicas: yields the query URL on Serve's proxy and on the direct
    data plane (serving/data_plane.py)."""
    from ray import serve

    from serving.serve import DEFAULT_CONFIG, load_config, start

    port, direct_port = free_port(), free_port()
    config = load_config(DEFAULT_CONFIG, memory.root, "127.0.0.1", port,
                         {"embeddings_only": True, "searcher_groups": groups,
                          "version": memory.manifests[shards].version},
                         data_plane_port=direct_port)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Router":
            deployment["num_replicas"] = routers
    try:
        start(config)
        wait_http(f"http://127.0.0.1:{port}/healthz", startup_timeout)
        wait_http(f"http://127.0.0.1:{direct_port}/healthz", startup_timeout)
        yield f"http://127.0.0.1:{port}/v1/neighbors", f"http://127.0.0.1:{direct_port}/v1/neighbors"
    finally:
        serve.shutdown()


def measure_serve_floor(memory: Memory, args) -> dict:
    progress("serve floor: a trivial Serve FastAPI echo app")
    with echo_served(args.startup_timeout) as url:
        bodies = {10: [orjson.dumps({"embedding": q.tolist()}) for q in memory.queries]}
        system = http_system("serve_floor", url, bodies, lambda raw: [], proctree.ray_tree,
                             holds_searcher=lambda name: "Echo" in name)
        result = measure_system(system, Memory("floor", "", memory.count, memory.queries,
                                               memory.measured, None), args, 0, ks=[10])
    result["what"] = ("POST /echo {embedding: [384 floats]} parsed by FastAPI/pydantic and "
                      "echoed: the floor under any Serve app on this machine")
    return result


def measure_uvicorn_floor(memory: Memory, args) -> dict:
    """The same echo app under plain uvicorn (httptools, one process, no Serve): the floor
    under the direct data plane."""
    progress("uvicorn floor: the echo app under plain uvicorn")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.serve_echo:plain_api",
                                "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
                                "--no-access-log", "--log-level", "warning"], cwd=REPO)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", args.startup_timeout, process)
        bodies = {10: [orjson.dumps({"embedding": q.tolist()}) for q in memory.queries]}
        system = http_system("uvicorn_floor", f"http://127.0.0.1:{port}/echo", bodies, lambda raw: [],
                             lambda: proctree.process_tree(process.pid),
                             holds_searcher=lambda name: True)
        result = measure_system(system, Memory("floor", "", memory.count, memory.queries,
                                               memory.measured, None), args, 0, ks=[10])
    finally:
        stop_process(process)
    result["what"] = "the Serve floor's echo app under plain uvicorn: no proxy, no actor call"
    return result


def measure_project(memory: Memory, shards: int, groups: int, args, routers: int = 1) -> dict[str, dict]:
    """The project's app with ``searcher_groups`` = ``groups`` and ``routers`` Router replicas,
    measured through Serve's proxy (``project_groups{G}``) and through the direct data plane
    (``project_direct_groups{G}``); ``_routers{R}`` is appended when R > 1."""
    holder = "Router" if groups == 0 else "Searcher"
    suffix = f"_routers{routers}" if routers > 1 else ""
    out = {}
    with project_served(memory, shards, groups, routers, args.startup_timeout) as urls:
        for name, url, endpoint in ((f"project_groups{groups}{suffix}", urls[0], "Serve proxy"),
                                    (f"project_direct_groups{groups}{suffix}", urls[1], "data plane")):
            progress(f"{memory.name} S={shards}: {name} (Ray Serve, {endpoint})")
            system = http_system(name, url, project_bodies(memory.queries, args.ks), project_ids,
                                 proctree.ray_tree,
                                 holds_searcher=lambda n: n.startswith("ray::ServeReplica") and holder in n)
            result = measure_system(system, memory, args, memory.builds[str(shards)]["codes_ids_bytes"])
            result["serving"] = {"endpoint": f"POST /v1/neighbors {{embedding, k}} via the {endpoint}",
                                 "embeddings_only": True, "searcher_groups": groups,
                                 "router_replicas": routers,
                                 "version": memory.manifests[shards].version,
                                 "search_defaults": memory.manifests[shards].search_defaults}
            out[name] = result
    return out


# --------------------------------------------------------------------------- flat in N

def time_answers(searcher, queries: np.ndarray, warmup: int, params, rounds: int = 3) -> dict:
    """Per-query time of ``answer(searcher, q, k=10)``, one query per call. The timed queries
    run ``rounds`` times; the lowest round median is the figure (others' work on a shared
    machine only ever adds time), the round medians are shown, with the minor page faults per
    query of each round (first touches of memory-mapped pages: a cost of a cold process that
    grows with the file, not work per item)."""
    import resource

    from serving.answers import answer

    timed = queries[:len(queries) - warmup]
    for q in queries[len(queries) - warmup:]:
        answer(searcher, q[None], 10, params)
    medians, p99s, faults = [], [], []
    for _ in range(rounds):
        seconds = []
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for q in timed:
            started = time.perf_counter()
            answer(searcher, q[None], 10, params)
            seconds.append(time.perf_counter() - started)
        faults.append(round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(timed), 2))
        ms = np.asarray(seconds) * 1000
        medians.append(round(float(np.median(ms)), 4))
        p99s.append(round(float(np.percentile(ms, 99)), 4))
    best = int(np.argmin(medians))
    return {"median_ms": medians[best], "p99_ms": p99s[best], "round_medians_ms": medians,
            "minor_faults_per_query_by_round": faults}


def codes_scanned(nprobe: int, size: int, nlist: int) -> int:
    """PQ codes one query scans: nprobe lists of size / nlist codes (all of them without IVF)."""
    return round(nprobe * size / nlist) if nlist and nprobe else size


def flat_n_point(size: int, space, queries: np.ndarray, args, work: str) -> dict:
    """Build one shard of ``size`` vectors, time ``answer`` on it, delete it."""
    from bench.synthetic import write_batch_chunks
    from indexer.search import SearchParams, ShardSearcher

    root = os.path.join(work, f"flat-n-{size}")
    try:
        progress(f"flat in N: writing {size} x {space.dim} vectors")
        write_batch_chunks(root, "synthetic", space.chunks(size, stream=0, chunk=args.chunk))
        progress(f"flat in N: building {args.flat_n_factory} over {size}")
        manifest, info = build(root, 1, args.flat_n_factory, "none", args)
        searcher = ShardSearcher.load(root, manifest, 0)
        fixed = min(args.flat_n_nprobe, searcher.nlist) if searcher.nlist else 0
        default = int(manifest.search_defaults.get("nprobe") or 0)
        point = {"vectors": size, "factory": manifest.factory, "nlist": searcher.nlist,
                 "build_seconds": info["build_seconds"], "codes_ids_bytes": info["codes_ids_bytes"],
                 "fixed_nprobe": fixed, "default_nprobe": default,
                 "default_recall_at_10": manifest.search_defaults.get("recall_at_10"),
                 "codes_scanned_per_query": {"fixed_nprobe": codes_scanned(fixed, size, searcher.nlist),
                                             "default_nprobe": codes_scanned(default, size, searcher.nlist)},
                 "fixed_nprobe_time": time_answers(searcher, queries, args.warmup, SearchParams(nprobe=fixed)),
                 "default_nprobe_time": time_answers(searcher, queries, args.warmup, None)}
        progress(f"flat in N: {size}: {point['fixed_nprobe_time']['median_ms']} ms at nprobe {fixed}, "
                 f"{point['default_nprobe_time']['median_ms']} ms at the default {default}")
        return point
    finally:
        shutil.rmtree(root, ignore_errors=True)


def time_raw_search(searcher, queries: np.ndarray, nprobe: int, rounds: int = 3) -> float:
    """Median ms of the bare FAISS search (k = 10) of one query per call: what ``answer`` costs
    beyond it is the request's own work, which must not grow with N."""
    from indexer.search import faiss_params

    segment = searcher.segments[0]
    medians = []
    for _ in range(rounds):
        seconds = []
        for q in queries:
            started = time.perf_counter()
            segment.index.search(q[None], 10, params=faiss_params(segment.index, nprobe))
            seconds.append(time.perf_counter() - started)
        medians.append(float(np.median(seconds)) * 1000)
    return round(min(medians), 4)


def flat_n_point_random(size: int, space, queries: np.ndarray, args, work: str) -> dict:
    """One shard of ``size`` items with random PQ codes and random list assignments
    (bench/edit.py's synthetic memory: built in seconds at any size; a query's cost depends on
    the codes it scans, not on their values) and nlist = size / --flat-n-list-size, so a query
    at the fixed nprobe scans the same number of codes at every size. Times ``answer`` and the
    bare FAISS search."""
    from bench.edit import synthetic_memory
    from indexer.search import SearchParams, ShardSearcher

    root = os.path.join(work, f"flat-n-{size}")
    nlist = max(size // args.flat_n_list_size, 1)
    try:
        progress(f"flat in N: {size} random codes, IVF{nlist},PQ16x8")
        manifest = synthetic_memory(root, size, args.flat_n_dim, nlist, 16, args.seed, space)
        searcher = ShardSearcher.load(root, manifest, 0)
        fixed = min(args.flat_n_nprobe, nlist)
        timed = queries[:len(queries) - args.warmup]
        answers = time_answers(searcher, queries, args.warmup, SearchParams(nprobe=fixed))
        raw = time_raw_search(searcher, timed, fixed)
        point = {"vectors": size, "factory": manifest.factory, "nlist": nlist, "fixed_nprobe": fixed,
                 "codes_scanned_per_query": codes_scanned(fixed, size, nlist),
                 "fixed_nprobe_time": answers, "raw_faiss_search_median_ms": raw,
                 "answer_minus_search_ms": round(answers["median_ms"] - raw, 4)}
        progress(f"flat in N: {size}: answer {answers['median_ms']} ms, FAISS search {raw} ms")
        return point
    finally:
        shutil.rmtree(root, ignore_errors=True)


def largest_over_smallest(points: list[dict], metrics: dict[str, Callable[[dict], float]]) -> dict:
    """Each metric of the largest size over the smallest's (points in size order)."""
    smallest, largest = points[0], points[-1]
    return {"sizes": [smallest["vectors"], largest["vectors"]],
            **{name: _ratio(value(largest), value(smallest)) for name, value in metrics.items()}}


def flat_in_n(args, work: str) -> dict:
    from bench.synthetic import DecayingSpace

    space = DecayingSpace(args.flat_n_dim, args.seed, args.clusters)
    queries = space.chunk(args.flat_n_queries + args.warmup, stream=1, number=0)
    if args.flat_n_list_size:
        points = [flat_n_point_random(size, space, queries, args, work) for size in args.sizes]
        return {"dim": args.flat_n_dim, "k": 10, "queries": args.flat_n_queries,
                "list_size": args.flat_n_list_size,
                "what": "in-process serving.answers.answer(searcher, q, k=10) (search + the k "
                "answers' metadata), one query per call, on random-code shards whose nlist grows "
                "with N (the same codes scanned per query), next to the bare FAISS search",
                "by_size": {str(p["vectors"]): p for p in points},
                "ratio_largest_over_smallest": largest_over_smallest(points, {
                    "fixed_nprobe": lambda p: p["fixed_nprobe_time"]["median_ms"],
                    "answer_minus_search": lambda p: p["answer_minus_search_ms"]})}
    points = [flat_n_point(size, space, queries, args, work) for size in args.sizes]
    return {"dim": args.flat_n_dim, "factory": args.flat_n_factory, "k": 10,
            "queries": args.flat_n_queries, "what": "in-process serving.answers.answer(searcher, q, k=10), "
            "one query per call, ShardSearcher.load(root, manifest, 0), no kept vectors",
            "by_size": {str(p["vectors"]): p for p in points},
            "ratio_largest_over_smallest": largest_over_smallest(points, {
                "fixed_nprobe": lambda p: p["fixed_nprobe_time"]["median_ms"],
                "default_nprobe": lambda p: p["default_nprobe_time"]["median_ms"]})}


# --------------------------------------------------------------------------- report

RATIO_METRICS = ("p50_ms", "p99_ms", "mean_ms", "qps", "cpu_s_per_1k")


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def ratios(numerator: dict, denominator: dict) -> dict:
    out = {m: _ratio(numerator.get(m), denominator.get(m)) for m in RATIO_METRICS}
    for key, value in numerator.items():
        if key.startswith("recall_at_"):
            out[key] = _ratio(value, denominator.get(key))
    return {m: v for m, v in out.items() if v is not None}


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Each project configuration over every peer, and the searcher hop (groups1 / groups0)."""
    projects = [n for n in names if n.startswith("project_")]
    pairs = [(p, peer) for p in projects for peer in names if not peer.startswith("project_")]
    if "project_groups0" in names and "project_groups1" in names:
        pairs.append(("project_groups1", "project_groups0"))
    for groups in ("groups0", "groups1"):  # the proxy hop: data plane / proxy
        if f"project_direct_{groups}" in names and f"project_{groups}" in names:
            pairs.append((f"project_direct_{groups}", f"project_{groups}"))
    return pairs


def comparison(systems: dict[str, dict], floor: dict | None, ks: list[int], concurrency: list[int]) -> dict:
    """Per (k, concurrency): every system's figures side by side, then the ratios."""
    out: dict[str, Any] = {}
    for k in ks:
        for c in concurrency:
            block = {name: result.get(f"k{k}", {}).get(f"c{c}") if "skipped" not in result else result
                     for name, result in systems.items()}
            if floor and f"c{c}" in floor.get("k10", {}):
                block["serve_floor"] = floor["k10"][f"c{c}"]
            block = {n: v for n, v in block.items() if v}
            measured = [n for n, v in block.items() if "p50_ms" in v]
            block["ratios"] = {f"{a} / {b}": ratios(block[a], block[b])
                               for a, b in ratio_pairs(measured)}
            out.setdefault(f"k{k}", {})[f"c{c}"] = block
    figures = {f"k{k}" for k in ks} | {"memory"}
    out["systems"] = {name: {key: value for key, value in result.items() if key not in figures}
                      for name, result in systems.items()}
    memories = {name: r["memory"] for name, r in systems.items() if "memory" in r}
    if floor and "memory" in floor:  # its per-process list is under serve_floor.memory
        memories["serve_floor"] = {k: v for k, v in floor["memory"].items() if k != "processes"}
    out["memory"] = {**memories, "ratios": memory_ratios(memories)}
    return out


def memory_ratios(memories: dict[str, dict]) -> dict:
    def figures(m: dict) -> dict:
        return {"tree_rss": m["rss_total_bytes"], "tree_pss": m["pss_total_bytes"],
                "searcher_holder_rss": m["searcher_holder"]["rss_bytes"] or None}

    return {f"{a} / {b}": {key: _ratio(value, figures(memories[b])[key])
                           for key, value in figures(memories[a]).items()}
            for a, b in ratio_pairs(list(memories))}


def memory_report(memory: Memory, results: dict[int, dict], floor: dict | None, args) -> dict:
    return {"vectors": memory.count, "dim": args.dim, "queries": memory.measured,
            "builds": memory.builds,
            "by_shards": {str(s): comparison(results.get(s, {}), floor, args.ks, args.concurrency)
                          for s in args.shards}}


def headline(report: dict) -> dict:
    """The figures the issue asks about first, S = 1: p50 at k = 10 and concurrency 1, QPS at
    concurrency 8 next to clip back's, recall at the defaults, the memory target; for the
    project through the direct data plane and through Serve's proxy."""
    out = {}
    for name, memory in report.get("memories", {}).items():
        by_k = memory.get("by_shards", {}).get("1", {})
        c1, c8 = by_k.get("k10", {}).get("c1", {}), by_k.get("k10", {}).get("c8", {})
        line: dict[str, Any] = {}
        for project in ("project_direct_groups0", "project_direct_groups0_routers2", "project_groups0"):
            if project not in c1:
                continue
            recall_100 = by_k.get("k100", {}).get("c1", {}).get(project, {}).get("recall_at_100")
            figures = {"p50_ms_c1": c1[project].get("p50_ms"), "qps_c8": c8.get(project, {}).get("qps"),
                       "recall_at_10": c1[project].get("recall_at_10"), "recall_at_100": recall_100,
                       "recall_at_least_0_95": min(c1[project].get("recall_at_10") or 0,
                                                   recall_100 or 0) >= 0.95}
            for peer in ("in_process_sharded_index", "in_process_raw_faiss", "clip_back",
                         "serve_floor", "uvicorn_floor", "project_groups0", "project_groups1"):
                pair = c1.get("ratios", {}).get(f"{project} / {peer}")
                if pair and "p50_ms" in pair:
                    figures[f"p50_over_{peer}"] = pair["p50_ms"]
                pair = c8.get("ratios", {}).get(f"{project} / {peer}")
                if pair and "qps" in pair:
                    figures[f"qps_c8_over_{peer}"] = pair["qps"]
            target = by_k.get("memory", {}).get(project, {}).get("target")
            if target:
                figures["memory_target"] = target
            line[project] = figures
        if line:
            out[name] = line
    flat = report.get("flat_in_n", {}).get("ratio_largest_over_smallest")
    if flat:
        out["flat_in_n_ratio_largest_over_smallest"] = flat
    return out


# --------------------------------------------------------------------------- the run

class Sections:
    """Runs the benchmark's sections; one that fails is reported (with its traceback tail) and
    the others go on, so that a late failure does not lose an hour of figures."""

    def __init__(self) -> None:
        self.errors: list[dict] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - recorded in the report, exit status 1
            progress(f"{name} FAILED: {error!r}")
            traceback.print_exc(file=sys.stderr)
            self.errors.append({"section": name, "error": repr(error)[:1000],
                                "traceback": traceback.format_exc()[-3000:]})
            return None


def build_memories(args, work: str, sections: Sections) -> list[Memory]:
    plans = [("ann", args.vectors, args.factory, args.keep_vectors),
             ("exact", args.exact_vectors, "IDMap2,Flat", "none")]
    memories = [sections.run(f"{name}: build", lambda name=name, n=n, f=f, kv=kv: prepare_memory(
        name, os.path.join(work, name), n, f, kv, args)) for name, n, f, kv in plans if n]
    return [m for m in memories if m is not None]


def measure_all(memories: list[Memory], args, work: str, sections: Sections) -> tuple[dict, dict | None]:
    """Every system on every memory: in-process and clip back first (no Ray running), then the
    Serve floor and the project's configurations on one Ray instance."""
    results: dict[str, dict[int, dict]] = {m.name: {s: {} for s in args.shards} for m in memories}
    for memory in memories:
        for shards in args.shards:
            got = sections.run(f"{memory.name} S={shards}: in-process",
                               lambda: measure_in_process(memory, shards, args))
            results[memory.name][shards].update(got or {})
        if 1 in args.shards:
            skip = clip_back_skip_reason(args)
            got = ({"skipped": skip} if skip else
                   sections.run(f"{memory.name}: clip back", lambda: measure_clip_back(memory, args, work)))
            if got:
                results[memory.name][1]["clip_back"] = got
    floor = None
    if memories:
        if 1 in args.shards:  # a peer of the S = 1 figures of the first memory
            got = sections.run("uvicorn floor", lambda: measure_uvicorn_floor(memories[0], args))
            if got:
                results[memories[0].name][1]["uvicorn_floor"] = got
        floor = sections.run("Ray Serve", lambda: measure_served(memories, results, args, sections))
    return results, floor


def measure_served(memories: list[Memory], results: dict, args, sections: Sections) -> dict | None:
    """The Serve floor, then every project configuration, on one Ray instance (stopped after)."""
    with ray_running():
        floor = sections.run("serve floor", lambda: measure_serve_floor(memories[0], args))
        for memory in memories:
            for shards in args.shards:
                for groups in args.groups:
                    got = sections.run(f"{memory.name} S={shards}: project_groups{groups}",
                                       lambda: measure_project(memory, shards, groups, args))
                    results[memory.name][shards].update(got or {})
            for routers in args.more_routers if 1 in args.shards else []:
                got = sections.run(f"{memory.name} S=1: project_groups0 with {routers} routers",
                                   lambda: measure_project(memory, 1, 0, args, routers))
                results[memory.name][1].update(got or {})
    return floor


def run(args, work: str) -> dict:
    sections = Sections()
    report: dict[str, Any] = {"benchmark": "serve", "command": " ".join(sys.argv),
                              "settings": {k: v for k, v in vars(args).items()},
                              "bytecode": compile_bytecode(),
                              "machine": {**machine(), "cpu_count": os.cpu_count(),
                                          "load_average_at_start": os.getloadavg()}}
    memories = build_memories(args, work, sections)
    results, floor = measure_all(memories, args, work, sections)
    report["serve_floor"] = floor
    report["memories"] = {m.name: memory_report(m, results[m.name], floor, args) for m in memories}
    if args.sizes:
        report["flat_in_n"] = sections.run("flat in N", lambda: flat_in_n(args, work))
    report["headline"] = headline(report)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["errors"] = sections.errors
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_argument_group("sizes (defaults: the full run; --quick: the smoke run)")
    size.add_argument("--quick", action="store_true",
                      help=f"smoke run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    size.add_argument("--vectors", type=int, help=f"ann memory size (default {FULL['vectors']})")
    size.add_argument("--exact-vectors", type=int,
                      help=f"exact (IDMap2,Flat) memory size; 0 skips it (default {FULL['exact_vectors']})")
    size.add_argument("--queries", type=int,
                      help=f"held-out queries per measurement, each sent once (default {FULL['queries']})")
    size.add_argument("--warmup", type=int, help="warm-up requests (other held-out queries) before "
                      f"each system's runs at each k (default {FULL['warmup']})")
    size.add_argument("--sizes", help="flat in N: vectors per shard, comma-separated; '' skips "
                      f"(default {FULL['sizes']})")
    size.add_argument("--flat-n-queries", type=int,
                      help=f"flat in N: timed queries per size (default {FULL['flat_n_queries']})")
    data = parser.add_argument_group("data and index")
    data.add_argument("--dim", type=int, default=384, help="dimension (default %(default)s: DINOv2 ViT-S/14)")
    data.add_argument("--clusters", type=int, help=f"cluster centres of the data (default {FULL['clusters']})")
    data.add_argument("--factory", help="ann index: 'auto' picks IVF-PQ from the size and "
                      f"--bytes-per-vector (default {FULL['factory']})")
    data.add_argument("--bytes-per-vector", type=int, default=64,
                      help="PQ code budget for auto (default %(default)s)")
    data.add_argument("--keep-vectors", default="fp16", choices=("none", "fp16", "fp32"),
                      help="ann index: vectors kept for exact re-ranking (default %(default)s)")
    data.add_argument("--shards", default="1,4", help="shard counts to build and serve (default %(default)s)")
    data.add_argument("--chunk", type=int, default=100_000,
                      help="rows generated and written per Parquet part (default %(default)s)")
    data.add_argument("--seed", type=int, default=0, help="seeds data, queries, builds (default %(default)s)")
    data.add_argument("--flat-n-dim", type=int, default=64, help="flat in N: dimension (default %(default)s)")
    data.add_argument("--flat-n-factory", help=f"flat in N: index factory (default {FULL['flat_n_factory']})")
    data.add_argument("--flat-n-list-size", type=int, default=4000,
                      help="flat in N: items per inverted list of random-code shards (nlist = N / "
                      "this, so every size scans the same codes per query); 0 = build real "
                      "indexes with --flat-n-factory instead (default %(default)s)")
    data.add_argument("--flat-n-nprobe", type=int, default=16,
                      help="flat in N: the fixed nprobe, the same at every size (default %(default)s)")
    load = parser.add_argument_group("load")
    load.add_argument("--ks", default="10,100",
                      help="k values (project: k; clip back: num_images) (default %(default)s)")
    load.add_argument("--concurrency", default="1,8", help="client threads (default %(default)s)")
    load.add_argument("--groups", default="0,1",
                      help="the project's searcher_groups configurations (default %(default)s)")
    load.add_argument("--more-routers", default="2",
                      help="also measure S=1, searcher_groups 0 with these Router replica counts "
                      "(the data plane's replicas share its port); '' skips (default %(default)s)")
    load.add_argument("--no-clip-back", action="store_true", help="leave clip back out")
    load.add_argument("--startup-timeout", type=float, default=600,
                      help="seconds a server may take to come up (default %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", help="also write the JSON document to this file")
    out.add_argument("--work", help="work directory, kept (default: a temporary one, removed at the end)")
    out.add_argument("--verbose", action="store_true", help="the build's INFO logs on stderr")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.shards = _ints(args.shards)
    args.ks = _ints(args.ks)
    args.concurrency = _ints(args.concurrency)
    args.groups = _ints(args.groups)
    args.more_routers = [r for r in _ints(args.more_routers) if r > 1]
    args.sizes = _ints(args.sizes)
    if args.warmup < 0 or args.queries < 1:
        parser.error("--queries must be >= 1 and --warmup >= 0")
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


@contextlib.contextmanager
def work_dir(path: str | None) -> Iterator[str]:
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            yield tmp


def main(argv: list[str] | None = None) -> int:
    import logging

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    with work_dir(args.work) as work:
        report = run(args, work)
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    progress("done" + (f" with {len(report['errors'])} failed section(s)" if report["errors"] else ""))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
