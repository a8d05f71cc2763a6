"""Process trees of a served system: which processes, their memory (RSS, PSS) and CPU time.

A tree is a list of ``psutil.Process``. ``ray_tree`` finds this process's Ray cluster (every
descendant whose command line mentions ray: gcs_server, raylet, agents, Serve's controller,
proxy and replicas, idle workers), leaving out this process itself (the benchmark driver) and
any other Ray instance on the machine. ``process_tree`` is a server process and its
descendants.
"""
from __future__ import annotations

import os


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
                              "pss_bytes": info.pss, "uss_bytes": info.uss})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    processes.sort(key=lambda p: -p["rss_bytes"])
    return {"processes": processes, "count": len(processes),
            **{f"{kind}_total_bytes": sum(p[f"{kind}_bytes"] for p in processes)
               for kind in ("rss", "pss", "uss")}}


def cpu_snapshot(tree: list[psutil.Process]) -> dict[int, tuple[float, float]]:
    """pid -> (create time, user + system CPU seconds so far)."""
    out = {}
    for process in tree:
        try:
            times = process.cpu_times()
            out[process.pid] = (process.create_time(), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def cpu_seconds(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> float:
    """CPU seconds the tree used between two snapshots (a process started in between counts
    from its start; one that ended in between is lost)."""
    used = 0.0
    for pid, (created, seconds) in after.items():
        earlier = before.get(pid)
        used += seconds - (earlier[1] if earlier and earlier[0] == created else 0.0)
    return used
