"""What does splitting a chunk across S shards cost the add, and does it change the codes?

A build's add task reads its part a chunk at a time and files each row into its shard's
segment (id mod S). Before 2026-12-02 it called FAISS's ``add_with_ids`` once per shard on
that shard's rows (the baseline here: S calls per chunk, each assigning and encoding
chunk/S rows); now it encodes the chunk once (``indexer.quantizer.encode``: ``sa_encode``,
list number first) and files each shard's codes (``add_codes``: ``add_sa_codes``).

For each S in --shards, both ways run on the same trained index (the 1M benchmark's factory,
OPQ64_256,IVF4096,PQ64x8 by default, trained on --train seeded vectors) and the same --rows
vectors in chunks of --chunk rows (the 1M build's task chunk at dim 384), one after the other
in this process with --threads OpenMP threads, alternating which goes first. Reported per S:
CPU seconds of each and their ratio, and how many rows got a different list or code than
FAISS's ``add_with_ids`` of the whole chunk on one index (the reference).

    python bench/shard_encode.py --out bench/results-shard-encode.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit_report, machine  # noqa: E402


def lists_of(indexes) -> dict[int, tuple[int, bytes]]:
    """id -> (list number, code bytes) over the IVF indexes."""
    import faiss

    found = {}
    for index in indexes:
        ivf = faiss.extract_index_ivf(index)
        lists = ivf.invlists
        for number in range(ivf.nlist):
            size = lists.list_size(number)
            if size:
                ids = faiss.rev_swig_ptr(lists.get_ids(number), size)
                codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size)
                width = lists.code_size
                for row, item in enumerate(ids):
                    found[int(item)] = (number, codes[row * width:(row + 1) * width].tobytes())
    return found


def per_shard(trained, vectors: np.ndarray, ids: np.ndarray, shards: int, chunk: int) -> list:
    """The baseline: add_with_ids of each shard's rows of each chunk."""
    indexes = [trained.empty() for _ in range(shards)]
    for start in range(0, len(ids), chunk):
        v, i = vectors[start:start + chunk], ids[start:start + chunk]
        owner = i % shards
        for shard in range(shards):
            rows = np.flatnonzero(owner == shard)
            if len(rows):
                indexes[shard].add_with_ids(np.ascontiguousarray(v[rows]), i[rows])
    return indexes


def encode_once(trained, vectors: np.ndarray, ids: np.ndarray, shards: int, chunk: int) -> list:
    """The build's way (indexer/tasks.py _add_part): one encode per chunk, codes filed."""
    from indexer.quantizer import add_codes, encode

    indexes = [trained.empty() for _ in range(shards)]
    for start in range(0, len(ids), chunk):
        v, i = vectors[start:start + chunk], ids[start:start + chunk]
        codes = encode(trained.index, v)
        owner = i % shards
        for shard in range(shards):
            rows = np.flatnonzero(owner == shard)
            if len(rows):
                add_codes(indexes[shard], codes[rows], i[rows])
    return indexes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factory", default="OPQ64_256,IVF4096,PQ64x8")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--train", type=int, default=65_536, help="Training vectors (65536).")
    parser.add_argument("--rows", type=int, default=200_000, help="Vectors added each way (200000).")
    parser.add_argument("--chunk", type=int, default=18_724, help="Rows per chunk (18724: the 1M build's).")
    parser.add_argument("--shards", default="1,4,16,64", help="Comma list of S (1,4,16,64).")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads (2).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="Also write the JSON here.")
    args = parser.parse_args(argv)

    import faiss

    from bench.synthetic import mixture
    from indexer import factory
    from indexer.quantizer import Trained, serialize_stripped

    faiss.omp_set_num_threads(args.threads)
    x = mixture(args.train + args.rows, args.dim, clusters=1000, seed=args.seed).astype(np.float32)
    trained_index = factory.train(args.factory, args.dim, x[:args.train], args.seed)
    trained = Trained(trained_index, serialize_stripped(trained_index))
    vectors, ids = x[args.train:], np.arange(args.rows, dtype=np.int64)
    reference = trained.empty()
    for start in range(0, args.rows, args.chunk):
        reference.add_with_ids(vectors[start:start + args.chunk], ids[start:start + args.chunk])
    expected = lists_of([reference])
    by_shards = {}
    for number, shards in enumerate(int(s) for s in args.shards.split(",")):
        ways = [("per_shard_add_with_ids", per_shard), ("encode_once", encode_once)]
        result = {}
        for name, way in (ways if number % 2 == 0 else ways[::-1]):
            cpu = time.process_time()
            indexes = way(trained, vectors, ids, shards, args.chunk)
            seconds = time.process_time() - cpu
            got = lists_of(indexes)
            result[name] = {"cpu_seconds": round(seconds, 3),
                            "rows_unlike_reference": sum(got.get(i) != code for i, code in expected.items())}
        result["cpu_ratio_encode_once_over_per_shard"] = round(
            result["encode_once"]["cpu_seconds"] / result["per_shard_add_with_ids"]["cpu_seconds"], 3)
        by_shards[str(shards)] = result
        print(shards, result, file=sys.stderr, flush=True)
    emit_report({"benchmark": "shard_encode", "machine": machine(), "config": vars(args),
                 "reference": "add_with_ids of each whole chunk on one index", "by_shards": by_shards},
                args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
