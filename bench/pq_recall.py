"""Recall@10 / @100 by nprobe and training CPU-seconds of FAISS factories on the index
benchmark's data (``bench/synthetic.py`` DecayingSpace), in one process: a quick probe for the
auto factory's choices (e.g. does an OPQ rotation lift the PQ plateau, and at what training
cost). Not a system comparison; prints one JSON object.

    python bench/pq_recall.py --vectors 200000 --dim 384 --nlist 1024 \\
        "IVF1024,PQ64x8" "OPQ64,IVF1024,PQ64x8"
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

from bench.synthetic import DecayingSpace  # noqa: E402
from indexer.factory import train  # noqa: E402

NPROBES = (4, 8, 16, 32, 64)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("factories", nargs="+", help="FAISS factory strings (inner product).")
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--nlist", type=int, default=1024, help="Training sample = 64 x nlist.")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    space = DecayingSpace(args.dim, args.seed)
    base = np.concatenate(list(space.chunks(args.vectors, 0)))
    queries = space.chunk(args.queries, 1, 0)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(base)
    truth = exact.search(queries, 100)[1]
    rng = np.random.default_rng(args.seed)
    sample = base[rng.choice(len(base), min(len(base), 64 * args.nlist), replace=False)]
    out: dict = {"vectors": args.vectors, "dim": args.dim, "train_vectors": len(sample), "factories": {}}
    for factory in args.factories:
        cpu = time.process_time()
        index = train(factory, args.dim, sample, args.seed)
        train_cpu = time.process_time() - cpu
        index.add(base)
        result = {"train_cpu_seconds": round(train_cpu, 1),
                  "add_cpu_seconds": round(time.process_time() - cpu - train_cpu, 1), "by_nprobe": {}}
        ivf = faiss.extract_index_ivf(index)
        for nprobe in NPROBES:
            ivf.nprobe = nprobe
            found = index.search(queries, 100)[1]
            result["by_nprobe"][nprobe] = {"recall_at_10": round(recall(found, truth, 10), 4),
                                           "recall_at_100": round(recall(found, truth, 100), 4)}
        out["factories"][factory] = result
        print(f"{factory}: {result}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
