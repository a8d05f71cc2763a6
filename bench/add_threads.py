"""Does the add cost more CPU per vector as single-threaded processes (one build task per core,
each with its own copy of the HNSW coarse quantizer) than as one process with one OpenMP
thread per core (one build task per node)? indexer/openmp.py quotes the answer.

Each round adds ``--rows`` seeded vectors to a trained OPQ64,IVF16384_HNSW32,PQ64x8 (the 10M
benchmark's factory until 2026-12-02; efSearch 128, the build's beam then) twice, in fresh processes: once in one process with ``--cpus`` threads,
once split over ``--cpus`` one-thread processes running at once. Rounds alternate, so both
sides see the same machine noise; the JSON holds every round's CPU-us per vector and their
paired ratio.

    python bench/add_threads.py --work /tmp/add-threads --out bench/results-add-threads.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
FACTORY = "OPQ64,IVF16384_HNSW32,PQ64x8"
DIM, CHUNK = 128, 100_000


def train(path: Path, seed: int) -> None:
    import numpy as np

    from bench.synthetic import mixture
    from indexer import factory

    import faiss

    x = mixture(200_000, DIM, clusters=1000, seed=seed).astype(np.float32)
    faiss.write_index(factory.train(FACTORY, DIM, x, seed), str(path))


def add(path: Path, threads: int, rows: int, seed: int) -> dict:
    import faiss
    import numpy as np

    from bench.synthetic import mixture

    faiss.omp_set_num_threads(threads)
    index = faiss.read_index(str(path))
    x = mixture(rows, DIM, clusters=1000, seed=seed).astype(np.float32)
    cpu = time.process_time()
    for start in range(0, rows, CHUNK):
        end = min(rows, start + CHUNK)
        index.add_with_ids(x[start:end], np.arange(start, end, dtype=np.int64))
    return {"threads": threads, "rows": rows, "cpu_seconds": round(time.process_time() - cpu, 3)}


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="Folder for the trained index.")
    parser.add_argument("--out", required=True, help="JSON results file.")
    parser.add_argument("--rows", type=int, default=400_000, help="Vectors added per side per round.")
    parser.add_argument("--cpus", type=int, default=2, help="Threads of one side, processes of the other.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--_add", nargs=3, type=int, help=argparse.SUPPRESS)  # threads rows seed
    args = parser.parse_args()
    path = Path(args.work) / "trained.faiss"
    if args._add:
        print(json.dumps(add(path, *args._add)))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        train(path, args.seed)
    rounds = []
    for number in range(args.rounds):
        one = _spawn(["--work", args.work, "--out", "-", "--_add", str(args.cpus), str(args.rows), str(number)])
        threaded = json.loads(one.communicate()[0].strip().splitlines()[-1])
        share = args.rows // args.cpus
        procs = [_spawn(["--work", args.work, "--out", "-", "--_add", "1", str(share), str(100 + number * args.cpus + p)])
                 for p in range(args.cpus)]
        split = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        us_threaded = 1e6 * threaded["cpu_seconds"] / threaded["rows"]
        us_split = 1e6 * sum(s["cpu_seconds"] for s in split) / (share * args.cpus)
        rounds.append({"one_process_threads_us_per_vector": round(us_threaded, 1),
                       "processes_one_thread_us_per_vector": round(us_split, 1),
                       "ratio_processes_over_threads": round(us_split / us_threaded, 3)})
        print(json.dumps(rounds[-1]), flush=True)
    out = {"benchmark": "add_threads", "factory": FACTORY, "dim": DIM, "rows": args.rows, "cpus": args.cpus,
           "rounds": rounds}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
