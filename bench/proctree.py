"""Process trees of a served system: which processes, their memory (RSS, PSS) and CPU time.

A tree is a list of ``psutil.Process``. ``ray_tree`` finds this process's Ray cluster (every
descendant whose command line mentions ray: gcs_server, raylet, agents, Serve's controller,
proxy and replicas, idle workers), leaving out this process itself (the benchmark driver) and
any other Ray instance on the machine. ``process_tree`` is a server process and its
descendants.
"""
from __future__ import annotations

import os
import time
from typing import Callable


def _psutil():
    """psutil: installed, or the copy Ray ships (ray/thirdparty_files, put on sys.path by
    ``import ray``), as in the project's virtualenv."""
    try:
        import psutil
    except ImportError:
        import ray  # noqa: F401

        import psutil
    return psutil


psutil = _psutil()


def this_process() -> list[psutil.Process]:
    return [psutil.Process()]


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants ([] once it has ended)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def ray_tree() -> list[psutil.Process]:
    out = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "ray" in " ".join(process.cmdline()):
                out.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def process_name(process: psutil.Process) -> str:
    """A readable name: the title Ray gives a worker (``ray::ServeReplica:app:Router``), the
    script a Python process runs (``python log_monitor.py``), else the executable's name."""
    command = process.cmdline()
    if not command:
        return process.name()
    if command[0].startswith("ray::"):
        return " ".join(command).strip()
    executable = os.path.basename(command[0])
    if executable.startswith("python"):
        script = next((os.path.basename(a) for a in command[1:] if a.endswith(".py")), None)
        module = command[command.index("-m") + 1] if "-m" in command[:-1] else None
        return f"{executable} {script or module or ''}".strip()
    return executable


def memory(tree: list[psutil.Process]) -> dict:
    """Per-process RSS / PSS / USS (bytes) and their totals. PSS shares each shared page
    (libraries, the page cache of memory-mapped files) among the processes mapping it, so
    the PSS total is what the tree costs the machine; the RSS total counts shared pages
    once per process."""
    processes = []
    for process in tree:
        try:
            info = process.memory_full_info()
            processes.append({"pid": process.pid, "name": process_name(process), "rss_bytes": info.rss,
                              "pss_bytes": info.pss, "uss_bytes": info.uss,
                              **_anon_and_file(process.pid)})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    processes.sort(key=lambda p: -p["rss_bytes"])
    return {"processes": processes, "count": len(processes),
            **{f"{kind}_total_bytes": sum(p[f"{kind}_bytes"] for p in processes)
               for kind in ("rss", "pss", "uss", "rss_anon", "rss_file")}}


def _anon_and_file(pid: int) -> dict:
    """RSS split into anonymous memory (heap: what the process really holds) and file-backed
    pages (memory-mapped files and libraries: page cache, reclaimable), from /proc/PID/status."""
    fields = {"RssAnon:": "rss_anon_bytes", "RssFile:": "rss_file_bytes"}
    out = dict.fromkeys(fields.values(), 0)
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, *value = line.split()
                if name in fields and value:
                    out[fields[name]] = int(value[0]) * 1024
    except OSError:
        pass
    return out


def _pss(pid: int) -> int:
    """Proportional set size (bytes) from /proc/PID/smaps_rollup: shared pages (libraries,
    Ray's object store, memory-mapped files) split among the processes mapping them. 0 where
    the kernel has no smaps_rollup (Linux < 4.14) or the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_snapshot(tree: list[psutil.Process]) -> dict[int, tuple[float, float, str]]:
    """pid -> (create time, user + system CPU seconds so far, name)."""
    out = {}
    for process in tree:
        try:
            times = process.cpu_times()
            out[process.pid] = (process.create_time(), times.user + times.system, process_name(process))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def cpu_by_process(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each process of the tree used between two snapshots, by name (a process
    started in between counts from its start; one that ended in between is lost)."""
    used: dict[str, float] = {}
    for pid, (created, seconds, name) in after.items():
        earlier = before.get(pid)
        spent = seconds - (earlier[1] if earlier and earlier[0] == created else 0.0)
        used[name] = used.get(name, 0.0) + spent
    return used


def cpu_seconds(before: dict, after: dict) -> float:
    """CPU seconds the whole tree used between two snapshots."""
    return sum(cpu_by_process(before, after).values())


def wait_quiet(tree_of: Callable[[], list], below: float = 0.15, window: float = 1.0,
               timeout: float = 30.0) -> float:
    """Wait (up to ``timeout`` s) until the tree uses less than ``below`` CPU-seconds per
    second over ``window``: a server just started (or Ray's start-up work) is not measured.
    Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_snapshot(tree_of())
        time.sleep(window)
        if cpu_seconds(before, cpu_snapshot(tree_of())) / window < below:
            break
    return round(time.monotonic() - started, 1)


# --------------------------------------------------------------------------- measured runs

def set_subreaper(on: bool) -> bool:
    """Make this process the reaper of its orphaned descendants, or stop being it (Linux
    ``prctl PR_SET_CHILD_SUBREAPER``); returns whether it was one before. False (and no
    change) where prctl is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        was = ctypes.c_int(0)
        libc.prctl(37, ctypes.byref(was), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        libc.prctl(36, int(on), 0, 0, 0)
        return bool(was.value)
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``prctl
    PR_SET_CHILD_SUBREAPER``): a daemon that a child starts and leaves behind (Ray's
    gcs_server, raylet, agents) stays in this process's tree, and once reaped its CPU time
    reaches this process's ``RUSAGE_CHILDREN``. False where it is not available."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_children() -> bool:
    """Reap every ended child of this process; True when no child is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every child this process has reaped (and of what they reaped)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class TreeSampler:
    """Samples this process's descendants (the measured tree): the RSS (and anonymous RSS)
    summed over the tree, its peak over time with the processes it was made of, and the CPU
    seconds each process was last seen to have used (a process that ends between two samples
    loses at most one interval: ``children_cpu_seconds`` has the exact total).

    ``tree_of``: the processes to sample instead (e.g. a running Ray instance's,
    bench/running_ray.py)."""

    def __init__(self, tree_of: Callable[[], list] | None = None) -> None:
        self._tree_of = tree_of
        self.last_rss = self.last_anon = self.last_pss = 0  # of the latest sample
        self.peak_rss = self.peak_anon = self.peak_pss = 0
        self.peak_processes: list[dict] = []
        self.samples = 0
        self.cpu: dict[tuple[int, float], tuple[str, float]] = {}
        self._names: dict[tuple[int, float], str] = {}

    def sample(self) -> list:
        """One sample; returns the live (non-zombie) descendants."""
        if self._tree_of is not None:
            tree = self._tree_of()
        else:
            try:
                tree = psutil.Process().children(recursive=True)
            except psutil.NoSuchProcess:  # pragma: no cover
                return []
        rss = anon = pss = 0
        live, rows = [], []
        for process in tree:
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()  # a zombie's are its final ones
                    used = times.user + times.system
                    if process.status() == psutil.STATUS_ZOMBIE:
                        name = self._names.get(key, process.name())
                        self.cpu[key] = (name, max(used, self.cpu.get(key, ("", 0.0))[1]))
                        continue
                    name = self._names.get(key) or self._names.setdefault(key, process_name(process))
                    one = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.cpu[key] = (name, used)
            one_anon = _anon_and_file(process.pid)["rss_anon_bytes"]
            one_pss = _pss(process.pid)
            rss, anon, pss = rss + one, anon + one_anon, pss + one_pss
            live.append(process)
            rows.append({"pid": process.pid, "name": name, "rss_bytes": one, "rss_anon_bytes": one_anon,
                         "pss_bytes": one_pss})
        self.samples += 1
        self.last_rss, self.last_anon, self.last_pss = rss, anon, pss
        if rss > self.peak_rss:
            self.peak_rss = rss
            self.peak_processes = sorted(rows, key=lambda r: -r["rss_bytes"])
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_pss = max(self.peak_pss, pss)
        return live

    def reset_peaks(self) -> None:
        """Start the RSS / PSS peaks afresh (the CPU figures are kept)."""
        self.peak_rss = self.peak_anon = self.peak_pss = 0
        self.peak_processes = []

    def cpu_by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, used in self.cpu.values():
            out[name] = out.get(name, 0.0) + used
        return {name: round(seconds, 2) for name, seconds in sorted(out.items(), key=lambda i: -i[1])}


def run_measured(command: list[str], stdout_path: str, stderr_path: str, interval: float = 0.5,
                 teardown_timeout: float = 60.0, env: dict | None = None,
                 deadline: float | None = None, alongside: TreeSampler | None = None) -> dict:
    """Run ``command`` as a child of this process and measure its whole process tree (it and
    every descendant, daemons it leaves behind included: call ``become_subreaper`` once
    first): wall seconds until the child exits, CPU seconds of the tree, the peak of the
    tree's summed RSS (sampled every ``interval`` s) and which processes made it up.

    CPU seconds (user + system) are counted two ways, each a lower bound, and the larger is
    ``cpu_seconds``: ``cpu_seconds_sampled``, each process's CPU time when last sampled,
    summed (final for the child and for descendants that end as this process's children:
    they are sampled as zombies before being reaped; another process loses what it used
    after its last sample, at most ``interval`` s of CPU); ``cpu_seconds_reaped``, this
    process's ``RUSAGE_CHILDREN`` once every descendant has ended and been reaped (exact for
    processes reaped by ``wait``, but the kernel discards the usage of children whose parent
    ignores SIGCHLD, as Ray's raylet does for its workers).

    Descendants still running ``teardown_timeout`` s after the child exits are terminated (by
    pid: they are this run's). This process must have no other child while it runs. Output
    goes to the two files (a chatty child cannot block on a full pipe). Raises
    CalledProcessError when the child fails.

    ``deadline``: seconds after which a child still running is killed (SIGKILL, then its
    descendants at teardown); the figures are then those of the stopped run and
    ``stopped_at_deadline`` is True (a lower bound on what finishing would have cost).

    ``alongside``: another sampler (processes outside the tree, e.g. a running Ray instance
    the child submits to) sampled at the same times, until the tree has ended;
    ``peak_with_alongside`` is then the peak over time of the two trees' RSS, anonymous RSS
    and PSS summed at each sample."""
    import subprocess

    reap_children()
    cpu_before = children_cpu_seconds()
    sampler = TreeSampler()
    combined = [0, 0, 0]  # peak RSS, anonymous RSS, PSS of the tree and ``alongside`` together
    started = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        # Wait for the child to end without reaping it (WNOWAIT), so that one more sample
        # reads its final CPU time from the zombie; then reap it.
        stopped = False
        while os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            sampler.sample()
            if alongside is not None:
                alongside.sample()
                together = (sampler.last_rss + alongside.last_rss, sampler.last_anon + alongside.last_anon,
                            sampler.last_pss + alongside.last_pss)
                combined = [max(a, b) for a, b in zip(combined, together)]
            if deadline is not None and not stopped and time.monotonic() - started > deadline:
                child.kill()
                stopped = True
            time.sleep(interval)
        wall = time.monotonic() - started
        sampler.sample()
        child.wait()
    at_deadline = stopped and child.returncode == -9
    teardown_started, killed = time.monotonic(), []
    while True:
        live = sampler.sample()
        if alongside is not None:
            alongside.sample()
        reap_children()
        if not live:
            break
        if at_deadline or time.monotonic() - teardown_started > teardown_timeout:
            for process in live:
                try:
                    killed.append(process_name(process))
                    process.kill()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            psutil.wait_procs(live, timeout=10)
            teardown_started, at_deadline = float("inf"), False  # kill once, then wait and reap
        time.sleep(0.05)
    while not reap_children():
        time.sleep(0.1)
    reaped = children_cpu_seconds() - cpu_before
    sampled = sum(used for _, used in sampler.cpu.values())
    if child.returncode and not stopped:
        with open(stderr_path, "rb") as err:
            tail = err.read()[-4000:].decode(errors="replace")
        raise subprocess.CalledProcessError(child.returncode, command, stderr=tail)
    return {"wall_seconds": round(wall, 3),
            "teardown_seconds": round(time.monotonic() - started - wall, 3),
            "cpu_seconds": round(max(reaped, sampled), 3),
            "cpu_seconds_sampled": round(sampled, 3), "cpu_seconds_reaped": round(reaped, 3),
            "cpu_seconds_sampled_by_process": sampler.cpu_by_name(),
            "peak_rss_bytes": sampler.peak_rss, "peak_rss_anon_bytes": sampler.peak_anon,
            "peak_pss_bytes": sampler.peak_pss,
            "peak_processes": [{"name": r["name"], "rss_mib": round(r["rss_bytes"] / 2**20, 1),
                                "rss_anon_mib": round(r["rss_anon_bytes"] / 2**20, 1),
                                "pss_mib": round(r["pss_bytes"] / 2**20, 1)}
                               for r in sampler.peak_processes[:12]],
            "processes_seen": len(sampler.cpu), "samples": sampler.samples,
            "killed_at_teardown": killed,
            "stopped_at_deadline": stopped and child.returncode == -9,
            **({} if alongside is None else {"peak_with_alongside": {
                "peak_rss_bytes": combined[0], "peak_rss_anon_bytes": combined[1],
                "peak_pss_bytes": combined[2]}})}
