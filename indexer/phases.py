"""Wall and CPU seconds per phase of a job (sampling, training, adding, merging, tuning), as
Ray Data's per-operator stats and Beam's per-step metrics give them.

CPU seconds of a phase = this process's CPU time over the phase (``time.process_time``: every
thread, OpenMP's included) + the CPU time its tasks reported (``executor.task_cpu_seconds``:
each Ray task's worker-process CPU from start to return; in-process tasks report nothing, as
this process's clock already counts them). Not counted: Ray's daemons (gcs_server, raylet),
idle workers, and the attempts of a task that failed before its retry succeeded.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Phases:
    """Per-phase clocks of one job. ``executor``: anything with a float ``task_cpu_seconds``
    (indexer.executor's executors)."""

    def __init__(self, executor) -> None:
        self.executor = executor
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (a repeated name adds up)."""
        wall, cpu, tasks = time.monotonic(), time.process_time(), self.executor.task_cpu_seconds
        try:
            yield
        finally:
            spent = time.process_time() - cpu + self.executor.task_cpu_seconds - tasks
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - wall
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + spent

    def details(self) -> dict:
        """{phase: {"seconds": wall s, "cpu_seconds": CPU s}} in the order the phases ran,
        rounded to ms, for a manifest's details."""
        return {name: {"seconds": round(self.seconds[name], 3), "cpu_seconds": round(self.cpu_seconds[name], 3)}
                for name in self.seconds}
