"""Closed-loop load: ``concurrency`` threads, each with its own client, send the given query
rows (each once, taken by whichever thread is free) and wait for each answer before the next.

A client is made per thread by ``make_client()`` and is ``fetch(row, k) -> raw answer``; only
the fetch is timed. Answers are turned into ids (``ids_of``) after the clock stops, so that a
client's JSON parsing is not charged to the server.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, answered requests only
    answers: dict[int, Any]  # row -> raw answer
    errors: int
    wall_seconds: float
    first_error: str = ""
    requests: int = 0
    error_rows: list[int] = field(default_factory=list)

    def stats(self) -> dict:
        ms = np.asarray(self.latencies) * 1000 if self.latencies else np.asarray([np.nan])
        return {"requests": self.requests, "errors": self.errors,
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
                "mean_ms": round(float(ms.mean()), 3),
                "qps": round(len(self.latencies) / self.wall_seconds, 1) if self.wall_seconds else None,
                **({"first_error": self.first_error} if self.first_error else {})}


def run_load(make_client: Callable[[], Callable[[int, int], Any]], rows: Sequence[int], k: int,
             concurrency: int) -> LoadResult:
    """Send ``rows`` at ``k`` with ``concurrency`` threads; QPS = answered / wall time."""
    counter = itertools.count()  # next() on a count is atomic under the GIL

    def worker() -> list[tuple[int, float, Any, str]]:
        fetch = make_client()
        done = []
        while (position := next(counter)) < len(rows):
            row = rows[position]
            started = time.perf_counter()
            try:
                answer, error = fetch(row, k), ""
            except Exception as exc:  # noqa: BLE001 - every failure is an error to count
                answer, error = None, f"{type(exc).__name__}: {exc}"[:300]
            done.append((row, time.perf_counter() - started, answer, error))
        return done

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = [r for f in [pool.submit(worker) for _ in range(concurrency)] for r in f.result()]
    wall = time.perf_counter() - started
    failed = [r for r in results if r[3]]
    return LoadResult(latencies=[r[1] for r in results if not r[3]],
                      answers={r[0]: r[2] for r in results if not r[3]}, errors=len(failed),
                      wall_seconds=wall, first_error=failed[0][3] if failed else "",
                      requests=len(results), error_rows=[r[0] for r in failed])
