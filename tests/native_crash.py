"""Run a job as a process so that a native crash explains itself: the child may dump a core
(RLIMIT_CORE raised to its hard limit, in its own working directory), and when it dies of a signal
the failure message gets every thread's native backtrace from that core (gdb, where installed).
faulthandler alone says nothing about a crash after Python's own finalization (a library's
static destructor, a native thread still running at exit)."""
from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path


def _allow_core() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(args, cwd=cwd, **kwargs)`` with core dumps allowed in ``cwd``."""
    return subprocess.run(args, cwd=cwd, preexec_fn=_allow_core, **kwargs)


def backtrace(cwd: Path, frames: int = 25) -> str:
    """Every thread's native stack from a core left in ``cwd`` (then removed: cores are GBs);
    a line saying why there is none otherwise."""
    cores = sorted(cwd.glob("core*"), key=lambda p: p.stat().st_mtime)
    if not cores:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
        return f"(no core in {cwd}; kernel.core_pattern is {pattern!r})"
    if shutil.which("gdb") is None:
        return f"(core {cores[-1]} left; gdb not installed)"
    try:
        done = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"thread apply all bt {frames}",
                               sys.executable, str(cores[-1])],
                              capture_output=True, text=True, timeout=300)
        return done.stdout[-20000:] + done.stderr[-2000:]
    finally:
        for core in cores:
            core.unlink()


def explain(done: subprocess.CompletedProcess, cwd: Path) -> str:
    """The tail of the process's output, and its native backtrace when a signal ended it."""
    text = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:]
    if done.returncode < 0:
        text += f"\n\nkilled by signal {-done.returncode}; native backtrace:\n{backtrace(cwd)}"
    return text
