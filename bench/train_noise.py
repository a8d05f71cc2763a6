"""How much one identical FAISS training call varies on this machine, in a plain process and in
a Ray driver (a local instance started, its workers warmed by a task each), alternating.

The index benchmark (bench/index.py) compares the project's build with a single FAISS process
run minutes later; both train with ``indexer.factory.train`` on the same sample. This measures
the spread of that one call between back-to-back fresh processes, and whether a running Ray
instance changes it, so that a ratio of the two builds can be read against it.

    .venv/bin/python bench/train_noise.py --vectors 100000 --dim 128 --repeats 3 --out noise.json

One JSON document: each run's mode, wall seconds and CPU seconds of the training call (the
process's own user + system time: FAISS's OpenMP threads included), then per mode the
minimum, maximum and max / min.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import emit_phase, emit_report, run_phase  # noqa: E402

MODES = ("plain", "ray")


def _warm(number: int) -> int:
    return number


def train_once(args) -> None:
    """One fresh process: (mode ray: start Ray and warm its workers), then time the call."""
    import numpy as np

    from bench.synthetic import mixture
    from indexer import factory as factories

    vectors = mixture(args.vectors, args.dim, clusters=200, seed=args.seed).astype(np.float32)
    if args.phase == "ray":
        from indexer.executor import RayExecutor

        executor = RayExecutor(None, args.ray_cpus)
        executor.get([executor.submit(_warm, number) for number in range(2 * args.ray_cpus)])
        time.sleep(3.0)  # past start-up: the daemons idle as during a build's training
    wall, cpu = time.perf_counter(), time.process_time()
    factories.train(args.factory, args.dim, vectors, args.seed)
    emit_phase({"mode": args.phase, "train_wall_seconds": round(time.perf_counter() - wall, 2),
                "train_cpu_seconds": round(time.process_time() - cpu, 2)})


def spread(values: list[float]) -> dict:
    return {"min": min(values), "max": max(values), "max_over_min": round(max(values) / min(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000, help="Training vectors (100000).")
    parser.add_argument("--dim", type=int, default=128, help="Dimension (128).")
    parser.add_argument("--factory", default="OPQ64,IVF2048,PQ64x8",
                        help="FAISS factory trained (OPQ64,IVF2048,PQ64x8).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per mode, alternating (3).")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the Ray instance (2).")
    parser.add_argument("--seed", type=int, default=0, help="Data and training seed (0).")
    parser.add_argument("--out", help="Also write the JSON document to this file.")
    parser.add_argument("--phase", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        train_once(args)
        return
    passed = ["--vectors", str(args.vectors), "--dim", str(args.dim), "--factory", args.factory,
              "--ray-cpus", str(args.ray_cpus), "--seed", str(args.seed)]
    runs = []
    for repeat in range(args.repeats):
        for mode in MODES:
            runs.append(run_phase(__file__, mode, passed))
            print(f"[train_noise] {runs[-1]}", file=sys.stderr, flush=True)
    summary = {mode: {key: spread([r[key] for r in runs if r["mode"] == mode])
                      for key in ("train_wall_seconds", "train_cpu_seconds")} for mode in MODES}
    emit_report({"benchmark": "train_noise", "config": {k: v for k, v in vars(args).items()
                                                        if k not in ("phase", "out")},
                 "runs": runs, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
