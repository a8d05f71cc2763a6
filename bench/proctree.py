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
