"""Coarse assignment: CPU-microseconds to assign one vector to its IVF list with a flat
quantizer (one BLAS product against every centroid, faiss ``IndexFlatIP``) against an HNSW32
graph over the same centroids (``IndexHNSWFlat``) at several beams (``efSearch``), by nlist,
one OpenMP thread, with the share of vectors the graph sends to the flat quantizer's list
(top-1 agreement). It sets ``indexer/factory.py``'s ``HNSW_FROM_NLIST`` (below it a flat
quantizer is cheaper) and ``ASSIGN_EF_SEARCH`` (the build's beam). Prints one JSON object.

The centroids are a seeded sample of the index benchmark's vectors (``bench/synthetic.py``
DecayingSpace), not k-means centroids: k-means at 65,536 lists costs more than this probe is
worth. Spread-out sample points are a harder graph search than k-means centroids, so the
agreement here is a lower bound of a trained quantizer's.

    python bench/assign.py --nlist 16384,32768,65536 --out bench/results-assign.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit_report  # noqa: E402
from bench.synthetic import DecayingSpace  # noqa: E402


def cpu_us_per_vector(index: faiss.Index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """(CPU-us per query, (q,) int64 list of each query) of ``index.search(queries, 1)``."""
    start = time.process_time()
    _, lists = index.search(queries, 1)
    return 1e6 * (time.process_time() - start) / len(queries), lists[:, 0]


def measure(space: DecayingSpace, nlist: int, queries: np.ndarray, beams: list[int]) -> dict:
    centroids = space.chunk(nlist, stream=2, number=0)
    flat = faiss.IndexFlatIP(space.dim)
    flat.add(centroids)
    flat_us, exact = cpu_us_per_vector(flat, queries)
    graph = faiss.IndexHNSWFlat(space.dim, 32, faiss.METRIC_INNER_PRODUCT)
    graph.add(centroids)
    row = {"nlist": nlist, "flat_us_per_vector": round(flat_us, 1), "hnsw32": []}
    for beam in beams:
        graph.hnsw.efSearch = beam
        graph_us, lists = cpu_us_per_vector(graph, queries)
        row["hnsw32"].append({"ef_search": beam, "us_per_vector": round(graph_us, 1),
                              "over_flat": round(graph_us / flat_us, 3),
                              "top1_agreement": round(float(np.mean(lists == exact)), 4)})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nlist", default="16384,32768,65536", help="Comma-separated list counts.")
    parser.add_argument("--ef-search", default="16,32,64,128", help="Comma-separated HNSW beams.")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=10_000, help="Vectors assigned per measurement.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="Also write the JSON object to this file.")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    space = DecayingSpace(args.dim, args.seed)
    queries = space.chunk(args.queries, stream=1, number=0)
    beams = [int(b) for b in args.ef_search.split(",")]
    rows = []
    for nlist in (int(n) for n in args.nlist.split(",")):
        rows.append(measure(space, nlist, queries, beams))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {"benchmark": "assign", "dim": args.dim, "queries": args.queries, "threads": 1,
           "seed": args.seed, "faiss": faiss.__version__, "rows": rows}
    emit_report(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
