"""What do a build's tuning ground truths cost, and what does scoring a chunk in blocks save?

An add task feeds every chunk it reads to ``indexer.tuning.ExactTopK``: the exact top-101
of the build's 256 held-out tuning queries over the whole memory. Its cost is a float32 GEMM
(256 x d per row) plus the selection: a partial sort of the first scores, then only the
columns at or above each query's k-th best. Before 2026-12-02 a chunk was scored whole, so
the first chunk's partial sort grew with the chunk (95,325 rows at d = 64 under the default
256 MB task budget); now every chunk is scored ``BLOCK_ROWS`` at a time.

For each (dim, chunk rows) in --cases, --rows seeded Gaussian rows are fed chunk by chunk,
once with blocks of ``BLOCK_ROWS`` (the build's) and once with the whole chunk as one block
(the baseline), alternating which goes first, in this process with --threads BLAS threads.
Both must give the same neighbours (checked). Reported: CPU seconds of each and their ratio.

    python bench/exact_topk.py --out bench/results-exact-topk.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def feed(queries, chunk, rows: int, k: int):
    import numpy as np

    from indexer.tuning import ExactTopK

    exact = ExactTopK(queries, k)
    cpu, seen = time.process_time(), 0
    while seen < rows:
        exact.update(chunk, np.arange(seen, seen + len(chunk), dtype=np.int64))
        seen += len(chunk)
    return time.process_time() - cpu, exact.result[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="384:18724,128:52428,64:95325,64:190650",
                        help="Comma list of dim:chunk_rows (default: the build's chunks at its default 256 MB "
                             "per task, and d = 64 at 512 MB; at 384 a chunk fits one block, so both ways "
                             "are the same: the machine's noise).")
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows fed per case (1000000).")
    parser.add_argument("--queries", type=int, default=256, help="Tuning queries (256, the build's).")
    parser.add_argument("--k", type=int, default=101, help="Neighbours kept (101, the build's).")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (2).")
    parser.add_argument("--out", help="Also write the JSON here.")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))

    import numpy as np

    from bench.common import emit_report, machine
    from indexer import tuning

    build_block = tuning.BLOCK_ROWS
    cases = {}
    for number, case in enumerate(args.cases.split(",")):
        dim, chunk_rows = (int(v) for v in case.split(":"))
        rng = np.random.default_rng(number)
        queries = rng.standard_normal((args.queries, dim), dtype=np.float32)
        chunk = rng.standard_normal((chunk_rows, dim), dtype=np.float32)
        ways = [("blocks", build_block), ("whole_chunk", max(chunk_rows, 1))]
        result, found = {}, {}
        for name, block in (ways if number % 2 == 0 else ways[::-1]):
            tuning.BLOCK_ROWS = block
            seconds, found[name] = feed(queries, chunk, args.rows, args.k)
            result[name] = {"block_rows": block, "cpu_seconds": round(seconds, 3)}
        tuning.BLOCK_ROWS = build_block
        result["same_neighbours"] = bool(np.array_equal(found["blocks"], found["whole_chunk"]))
        result["cpu_ratio_blocks_over_whole_chunk"] = round(
            result["blocks"]["cpu_seconds"] / result["whole_chunk"]["cpu_seconds"], 3)
        cases[case] = result
        print(case, result, file=sys.stderr, flush=True)
    emit_report({"benchmark": "exact_topk", "machine": machine(), "config": vars(args), "cases": cases},
                args.out)
    return 0 if all(c["same_neighbours"] for c in cases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
