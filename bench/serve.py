"""Serving: QPS and p50/p99 latency through Ray Serve (HTTP on 127.0.0.1) for single and
batched queries at S = 1, 2, 4 shards, against direct in-process FAISS search of the same
merged index in the same run (the router's overhead as a ratio), and recall@10 vs exact.

    python bench/serve.py [--vectors 50000] [--dim 384] [--factory IVF256,Flat] [--requests 300]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import machine  # noqa: E402


def percentiles(latencies: list[float]) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_baseline(vectors: np.ndarray, queries: np.ndarray, factory: str, nprobe: int,
                    batch: int) -> dict:
    """The same data in one in-process FAISS index: what the router's fan-out costs on top."""
    import faiss

    from indexer import factory as factories

    wanted = factories.training_size(factory, len(vectors))
    index = factories.train(factory, vectors.shape[1], vectors[:wanted]) if wanted else factories.make_index(factory, vectors.shape[1])
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    faiss.extract_index_ivf(index).nprobe = nprobe if nprobe else 1
    latencies = []
    for q in queries:
        started = time.perf_counter()
        index.search(q[None], 10)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start:start + batch], 10)
    batched_qps = len(queries) / (time.perf_counter() - started)
    return {"single_qps": round(len(queries) / sum(latencies), 1), **percentiles(latencies),
            "batched_qps": round(batched_qps, 1)}


def through_serve(root: str, queries: np.ndarray, batch: int, concurrency: int, port: int) -> dict:
    """Deploy (or redeploy: Serve's proxy keeps its port) the app over ``root`` and measure."""
    import requests

    from serving.serve import DEFAULT_CONFIG, load_config, start

    config = load_config(DEFAULT_CONFIG, root, "127.0.0.1", port,
                         {"token": "bench", "embeddings_only": True})  # synthetic: no encoder
    start(config)
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    payloads = [{"embedding": q.tolist(), "k": 10} for q in queries]
    for p in payloads[:20]:
        session.post(f"{url}/v1/neighbors", json=p)  # warm-up
    latencies, found = [], []
    for p in payloads:
        started = time.perf_counter()
        body = session.post(f"{url}/v1/neighbors", json=p).json()
        latencies.append(time.perf_counter() - started)
        found.append([n["id"] for n in body["neighbours"]])

    def one(p):
        return requests.post(f"{url}/v1/neighbors", json=p).status_code

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(one, payloads))
    concurrent_qps = len(payloads) / (time.perf_counter() - started)
    started = time.perf_counter()
    for offset in range(0, len(payloads), batch):
        session.post(f"{url}/v1/neighbors/batch", json={"queries": payloads[offset:offset + batch]})
    batched_qps = len(payloads) / (time.perf_counter() - started)
    return {"single_qps": round(len(payloads) / sum(latencies), 1), **percentiles(latencies),
            f"concurrent{concurrency}_qps": round(concurrent_qps, 1), "batched_qps": round(batched_qps, 1),
            "errors": sum(s != 200 for s in statuses), "found": found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--factory", default="IVF256,Flat")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--shards", default="1,2,4")
    args = parser.parse_args()

    import ray

    from bench.synthetic import mixture, write_batch
    from indexer.build import BuildConfig, run_build
    from indexer.executor import LocalExecutor
    from indexer.tuning import recall_at

    def exact_topk(base, q, k):
        import faiss
        flat = faiss.IndexFlatIP(base.shape[1]); flat.add(base)
        return flat.search(q, k)[1]

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    data = mixture(args.vectors + args.requests, args.dim, clusters=500, seed=0)
    queries, vectors = data[:args.requests], data[args.requests:]
    truth = exact_topk(vectors, queries, 10) + 1  # bench ids are row + 1
    report = {"benchmark": "serve", "vectors": args.vectors, "dim": args.dim, "factory": args.factory,
              "machine": machine(), "by_shards": {}}
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        for shards in [int(s) for s in args.shards.split(",")]:
            root = os.path.join(work, f"s{shards}")
            write_batch(root, "synthetic", vectors, parts=4)
            manifest = run_build(BuildConfig(root, num_shards=shards, factory=args.factory), LocalExecutor())
            nprobe = manifest.search_defaults.get("nprobe", 0)
            served = through_serve(root, queries, args.batch, args.concurrency, port)
            direct = direct_baseline(vectors, queries, args.factory, nprobe, args.batch)
            found = np.asarray(served.pop("found"))
            report["by_shards"][str(shards)] = {
                "nprobe": nprobe, "router": served, "direct_faiss": direct,
                "recall_at_10": round(recall_at(found, truth), 4),
                "ratio_single_qps_router_over_direct": round(served["single_qps"] / direct["single_qps"], 4),
                "ratio_batched_qps_router_over_direct": round(served["batched_qps"] / direct["batched_qps"], 4)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
