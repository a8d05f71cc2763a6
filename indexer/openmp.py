"""OpenMP's wait policy for the build: threads that sleep at a barrier instead of spinning.

libgomp (bundled with faiss-cpu) spins a waiting thread before it sleeps (``OMP_WAIT_POLICY``
unset). On a machine whose cores Ray's daemons and idle workers also wake on, a thread of
FAISS's k-means spins at each barrier while its partner is descheduled: measured on 2 cores
(300,000 x 384, OPQ64_256,IVF1024,PQ64x8 on 65,536 vectors, fresh processes alternating,
2026-12-01), training after a Ray sampling pass took a median 79.7 CPU-s against 66.7 in a
plain process; with ``OMP_WAIT_POLICY=PASSIVE`` 61.4 against 62.3, at the same wall time
(docs/benchmarks.md). libgomp reads the variable once, when it is loaded (with faiss), and a
local Ray instance's workers inherit the driver's environment; workers of a running cluster
take it from that cluster's environment (``ray start`` / KubeRay ``env``).

``omp_threads`` sets how many OpenMP threads FAISS uses for the span of one task: behind an
HNSW coarse quantizer the add runs as one task per node with every CPU of that node
(indexer/factory.py: ``add_threads``, which also says why not behind a flat one), since two
single-threaded processes assigning through an HNSW coarse quantizer each pay their own
quantizer's cache misses: measured on 2 cores (bench/add_threads.py: OPQ64,IVF16384_HNSW32,
PQ64x8, 128-d, 400,000 rows a side, alternating rounds, 2026-12-01), two 1-thread processes
of 200,000 rows each, run at once, took 1.19, 1.52 and 1.20x the CPU per vector of one
process with 2 threads (264, 223, 257 CPU-us); an earlier run of the same probe 1.60, 1.33,
1.39x (docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib
import os
import sys

VARIABLE, POLICY = "OMP_WAIT_POLICY", "PASSIVE"


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy. Returns whether
    this process's libgomp waits passively: the environment's policy when it names one;
    otherwise True unless faiss (and with it libgomp) was loaded before the call."""
    if VARIABLE in os.environ:
        return os.environ[VARIABLE].upper() == POLICY
    os.environ[VARIABLE] = POLICY
    return "faiss" not in sys.modules


@contextlib.contextmanager
def omp_threads(count: int):
    """FAISS's OpenMP thread count set to ``count`` (>= 1) inside the block, restored after
    (a Ray worker process runs other tasks next). Raises ValueError for ``count`` < 1."""
    if count < 1:
        raise ValueError(f"OpenMP threads must be >= 1, got {count}")
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
