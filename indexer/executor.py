"""Run the indexer's tasks on Ray, or in this process: the same task functions either way, so
a distributed build can be checked against a single-process one."""
from __future__ import annotations

import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # a build's task re-runs after a lost worker or an OSError (Ray's max_retries)
STOP_WAIT_S = 60.0  # how long a pass ended by an error waits for its cancelled tasks to end
INTERRUPT_WAIT_S = 5.0  # ... before it kills those an interrupt did not stop


@dataclass(frozen=True)
class _Call:
    """A task submitted to a LocalExecutor: run by ``get``."""

    fn: Callable
    args: tuple


class LocalExecutor:
    """Runs the tasks in this process, one after another, when ``get`` asks for them, with the
    phase's progress bar as RayExecutor (``progress`` False: none, for a server's own edits).
    A task that raises OSError is run again up to ``max_retries`` times, as RayExecutor's
    tasks are (``retry_exceptions=[OSError]``; tasks write under deterministic names, so a
    re-run writes the same files); 0, the default: errors end ``get`` at once.
    ``task_cpu_seconds`` stays 0: its tasks' CPU time is this process's (indexer.phases)."""

    name = "local"
    task_cpu_seconds = 0.0
    running = True  # tasks run in this process, nothing to start

    def __init__(self, progress: bool = True, max_retries: int = 0) -> None:
        self.progress = progress
        self.max_retries = max_retries

    def put(self, value: Any) -> Any:
        return value

    def cpus_per_node(self) -> int:
        """CPUs this process may run on (its affinity mask)."""
        return len(os.sched_getaffinity(0))

    def submit(self, fn: Callable, *args: Any, **options: Any) -> _Call:
        return _Call(fn, args)

    def get(self, handles: Sequence[_Call], what: str = "tasks",
            sizes: Sequence[int] | None = None) -> list:
        """Run the submitted tasks in submission order and return their results; raises the
        first task's error (the rest do not run)."""
        return [value for _, value in self.as_completed(handles, what, sizes)]

    def as_completed(self, handles: Sequence[_Call], what: str = "tasks",
                     sizes: Sequence[int] | None = None) -> Iterator[tuple[int, Any]]:
        """(position in ``handles``, result) of each task, run one after another in
        submission order as the caller iterates (RayExecutor.as_completed's contract)."""
        if not self.progress:
            for number, call in enumerate(handles):
                yield number, self._run(call)
            return
        with progress(what, sum(sizes) if sizes is not None else len(handles),
                      "rows" if sizes is not None else "tasks") as bar:
            for number, call in enumerate(handles):
                value = self._run(call)
                bar.update(sizes[number] if sizes is not None else 1)
                yield number, value

    def _run(self, call: _Call) -> Any:
        retries = 0
        while True:
            try:
                return call.fn(*call.args)
            except OSError as error:
                if retries == self.max_retries:
                    raise
                retries += 1
                log.warning("%s failed (%s); running it again (retry %d of %d)",
                            getattr(call.fn, "__name__", "task"), error, retries, self.max_retries)


class RayExecutor:
    """Ray tasks with retries (a lost worker re-runs its task), progress logged as they finish.

    ``address``: None starts (or joins, inside a Ray job) a local instance; "auto" joins the
    cluster this machine belongs to; "ray://host:10001" connects a client.
    """

    name = "ray"
    running = True  # the instance is up once the executor is made

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES) -> None:
        import ray

        self.ray = ray
        self.task_cpu_seconds = 0.0  # CPU s its tasks reported, summed as get() returns them
        self.max_retries = max_retries
        self._remote: dict[Callable, Any] = {}
        if not ray.is_initialized():
            from indexer.localray import init

            init(address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def cpus_per_node(self) -> int:
        """CPUs of the smallest alive node that has any (``ray.nodes()``' resources), so that
        a task asking for this many fits on every node. Raises RuntimeError when no alive node
        has a CPU."""
        cpus = [int(node["Resources"].get("CPU", 0)) for node in self.ray.nodes()
                if node.get("Alive") and node["Resources"].get("CPU", 0) >= 1]
        if not cpus:
            raise RuntimeError("the Ray cluster has no alive node with a CPU")
        return min(cpus)

    def submit(self, fn: Callable, *args: Any, **options: Any) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            from indexer.heap import releasing_heap

            remote = self._remote[fn] = self.ray.remote(_timed(releasing_heap(fn)))
        return remote.options(max_retries=self.max_retries,
                              retry_exceptions=[OSError], **options).remote(*args)

    def get(self, handles: Sequence[Any], what: str = "tasks",
            sizes: Sequence[int] | None = None) -> list:
        """Wait for every task, showing the phase's progress (``as_completed``), then return
        the results in submission order. Raises a task's error after its retries."""
        results: list = [None] * len(handles)
        for number, value in self.as_completed(handles, what, sizes):
            results[number] = value
        return results

    def as_completed(self, handles: Sequence[Any], what: str = "tasks",
                     sizes: Sequence[int] | None = None) -> Iterator[tuple[int, Any]]:
        """(position in ``handles``, result) of each task as it finishes, fetched one at a
        time, so a caller that folds results (the add pass's exact neighbours, a tuning
        sweep's per-shard answers) holds one result, not all. Shows the phase's progress (a
        tqdm bar on stderr: tasks done, and rows with their rate when ``sizes`` gives each
        task's rows). Raises a task's error, after its retries, when that task is reached."""
        position = {self._key(handle): number for number, handle in enumerate(handles)}
        pending = list(handles)
        total = sum(sizes) if sizes is not None else len(handles)
        with progress(what, total, "rows" if sizes is not None else "tasks") as bar:
            try:
                while pending:
                    done, pending = self.ray.wait(pending, num_returns=1, timeout=5.0)
                    for handle in done:
                        number = position[self._key(handle)]
                        result = self.ray.get(handle)
                        self.task_cpu_seconds += result.cpu_seconds
                        bar.update(sizes[number] if sizes is not None else 1)
                        yield number, result.value
            finally:
                if pending:  # an error (a task's, the caller's, Ctrl-C) ends the pass early
                    self._stop(pending)

    def _stop(self, pending: list) -> None:
        """Cancel a pass's unfinished tasks and wait up to ``STOP_WAIT_S`` for them to end, so
        that nothing they write lands after the caller's cleanup (tasks.build_scratch) ran.
        Queued tasks never start; running ones get KeyboardInterrupt (their staged files are
        dropped), and those still running ``INTERRUPT_WAIT_S`` later are killed with their
        worker: the interrupt does not take in a long C call, nor in a worker whose SIGINT is
        ignored (a job a shell started in the background: CPython's
        ``_thread.interrupt_main`` then does nothing). The error that ended the pass is the
        one raised: one from here is logged."""
        try:
            for handle in pending:
                self.ray.cancel(handle)
            _, running = self.ray.wait(pending, num_returns=len(pending), timeout=INTERRUPT_WAIT_S)
            for handle in running:
                self.ray.cancel(handle, force=True)
            self.ray.wait(running, num_returns=len(running), timeout=STOP_WAIT_S)
        except Exception as error:  # noqa: BLE001 - the pass's own error propagates instead
            log.warning("stopping %d unfinished tasks after an error: %s", len(pending), error)

    @staticmethod
    def _key(handle: Any) -> Any:
        return handle.hex() if hasattr(handle, "hex") else id(handle)


@dataclass(frozen=True)
class _Timed:
    """A task's return value and the CPU seconds its process spent making it."""

    value: Any
    cpu_seconds: float


def _timed(fn: Callable) -> Callable:
    """``fn`` as a task that also reports its process's CPU time (time.process_time) from
    start to return."""
    @functools.wraps(fn)
    def task(*args: Any) -> _Timed:
        started = time.process_time()
        value = fn(*args)
        return _Timed(value, time.process_time() - started)
    return task


def progress(what: str, total: int, unit: str):
    """One phase's progress bar (tqdm), updated in place on a terminal and every 10 s in logs."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=what, unit=unit, unit_scale=True, dynamic_ncols=True,
                mininterval=0.5 if interactive else 10.0, file=sys.stderr)


def make_executor(ray_address: str | None, use_ray: bool = True, num_cpus: int | None = None):
    return RayExecutor(ray_address, num_cpus) if use_ray else LocalExecutor(max_retries=MAX_RETRIES)


def starts_local_instance(ray_address: str | None, use_ray: bool = True) -> bool:
    """Whether ``make_executor(ray_address, use_ray)`` would start a new local Ray instance:
    Ray asked for, no address given, and none that ``ray.init()`` joins instead: a Ray job's
    (``RAY_ADDRESS``) or one ``ray start`` left on this machine (its ``ray_current_cluster``
    file). The same lookup as ``ray.init`` (ray/_private/services.py,
    ``canonicalize_bootstrap_address``)."""
    if not use_ray or ray_address:
        return False
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(None) is None


class DeferredExecutor:
    """The executor ``factory()`` makes, made on first use (any attribute not defined here:
    ``submit``, ``put``, ``cpus_per_node``...). A job that may have nothing to index (a
    scheduled round with no new batch, one whose ingest fails or is killed) then starts no Ray
    instance, and a build starts its local instance at the add, after the driver has trained
    (indexer.build). ``made`` says whether it was made; until then ``running`` is False,
    ``task_cpu_seconds`` 0 and ``name`` the one given."""

    def __init__(self, factory: Callable[[], Any], name: str = "deferred") -> None:
        self._factory = factory
        self._executor: Any = None
        self._name = name

    @property
    def made(self) -> bool:
        return self._executor is not None

    @property
    def running(self) -> bool:
        return self.made and self._executor.running

    @property
    def name(self) -> str:
        return self._executor.name if self.made else self._name

    @property
    def task_cpu_seconds(self) -> float:
        return self._executor.task_cpu_seconds if self.made else 0.0

    def resolve(self) -> Any:
        """The executor, made now if it was not yet (before a job takes the memory's writer
        lock: starting Ray there would hold off online edits for the start-up)."""
        if self._executor is None:
            self._executor = self._factory()
        return self._executor

    def __getattr__(self, name: str) -> Any:  # only for names this class does not define
        if name.startswith("_"):  # copy/pickle probes, and _executor before __init__ set it
            raise AttributeError(name)
        return getattr(self.resolve(), name)
