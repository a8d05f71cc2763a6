"""Capacity plan for a billion-image visual memory: the formulas behind docs/capacity.md.

    python infra/capacity.py [--images 1e9 5e9] [--json]

Inputs marked `measured` come from this project's benchmarks (docs/benchmarks.md); inputs marked
`assumed` are stated planning assumptions to replace with your own measurements (run
bench/ingest.py on your GPU worker, bench/index.py and bench/serve.py on your nodes).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.factory import choose_factory, nlist_of, pq_subquantizers  # noqa: E402  the build's own rule

ENCODERS = {  # dim: the embedding length; gflops: forward cost per 224-px image
    "clip-vit-l14": {"dim": 768, "gflops": 81.1},
    "dinov2-vit-l14": {"dim": 1024, "gflops": 77.8},
}


@dataclass
class Inputs:
    pq_bytes: int = 64  # PQ code bytes per vector (--bytes-per-vector)
    id_bytes: int = 8
    list_overhead_bytes: float = 6.0  # measured: 78.7 bytes/vector at PQ64 in one index (bench/index.py)
    rerank_bytes_per_dim: int = 2  # fp16 vectors kept for exact re-ranking (0 to drop them)
    metadata_bytes: float = 120.0  # Arrow IPC metadata per item (key, label, source, hash, weight)
    ram_overhead: float = 1.2  # resident bytes over codes + ids (quantizer, tables, hot pages)
    node_ssd_tib: float = 3.5  # assumed local NVMe per serving node, for memory-mapped files
    gpu_images_per_s: float = 900.0  # assumed: ViT-L/14 bf16 on one L4, 224 px, batch 256
    gpu_hour_usd: float = 0.70  # assumed on-demand L4 price
    node_ram_gib: float = 256.0  # assumed serving node
    node_usable_fraction: float = 0.7  # headroom for the OS, Ray, metadata and reloads
    node_day_usd: float = 40.0  # assumed serving node price per day
    storage_gib_month_usd: float = 0.02  # assumed object storage
    shard_qps_per_node: float = 600.0  # assumed: IVF-PQ nprobe 32 batched search on 32 cores
    target_qps: float = 1000.0
    replicas: int = 2  # per shard, for availability


def plan(images: float, encoder: str, inputs: Inputs) -> dict:
    spec = ENCODERS[encoder]
    dim = spec["dim"]
    embedding_bytes = images * dim * 4  # float32 Parquet (compression gains little on floats)
    index_bpv = pq_subquantizers(dim, inputs.pq_bytes) + inputs.id_bytes + inputs.list_overhead_bytes  # code bytes = m
    rerank_bpv = dim * inputs.rerank_bytes_per_dim
    # RAM holds the codes and ids (IVF lists are scanned); metadata and re-rank vectors are
    # memory-mapped from local SSD and read for the k answers / k_factor x k candidates only.
    ram_bpv = index_bpv * inputs.ram_overhead
    disk_bpv = index_bpv + rerank_bpv + inputs.metadata_bytes
    serving_bytes = images * disk_bpv
    usable = inputs.node_ram_gib * 2**30 * inputs.node_usable_fraction
    ssd = inputs.node_ssd_tib * 2**40 * inputs.node_usable_fraction
    shards = max(1, math.ceil(images * ram_bpv / usable), math.ceil(serving_bytes / ssd))
    replicas_for_qps = max(inputs.replicas, math.ceil(inputs.target_qps / inputs.shard_qps_per_node))
    nodes = shards * replicas_for_qps
    gpu_hours = images / inputs.gpu_images_per_s / 3600
    factory = choose_factory(int(images), dim, inputs.pq_bytes)  # planned for IVF-PQ sizes (N >= 100k)
    return {
        "images": images, "encoder": encoder, "dim": dim,
        "embedding_gpu_hours": round(gpu_hours, 1),
        "embedding_cost_usd": round(gpu_hours * inputs.gpu_hour_usd),
        "embedding_pflops": round(images * spec["gflops"] / 1e6, 1),
        "embeddings_tib": round(embedding_bytes / 2**40, 2),
        "index_bytes_per_vector": round(disk_bpv, 1),
        "ram_bytes_per_vector": round(ram_bpv, 1),
        "index_tib": round(serving_bytes / 2**40, 2),
        "factory": factory, "nlist": nlist_of(factory),
        "shards": shards, "replicas_per_shard": replicas_for_qps, "serving_nodes": nodes,
        "expected_qps": round(inputs.shard_qps_per_node * replicas_for_qps),
        "expected_recall_at_10": ">= 0.95 with exact re-ranking (nprobe tuned per build); "
                                 "PQ codes alone: measure with bench/index.py on your embeddings",
        "cost_per_day_usd": round(nodes * inputs.node_day_usd
                                  + (embedding_bytes + serving_bytes) / 2**30 * inputs.storage_gib_month_usd / 30),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=float, nargs="+", default=[1e9, 5e9])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    inputs = Inputs()
    rows = [plan(n, encoder, inputs) for n in args.images for encoder in ENCODERS]
    if args.json:
        print(json.dumps({"inputs": asdict(inputs), "plans": rows}, indent=2))
        return 0
    print(f"{'images':>8} {'encoder':<15} {'GPU-h':>8} {'emb TiB':>8} {'disk B/v':>8} {'RAM B/v':>7} {'idx TiB':>8} "
          f"{'shards':>6} {'repl':>4} {'nodes':>5} {'QPS':>6} {'$/day':>7}")
    for r in rows:
        print(f"{r['images']:>8.0e} {r['encoder']:<15} {r['embedding_gpu_hours']:>8} {r['embeddings_tib']:>8} "
              f"{r['index_bytes_per_vector']:>8} {r['ram_bytes_per_vector']:>7} {r['index_tib']:>8} {r['shards']:>6} "
              f"{r['replicas_per_shard']:>4} {r['serving_nodes']:>5} {r['expected_qps']:>6} {r['cost_per_day_usd']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
