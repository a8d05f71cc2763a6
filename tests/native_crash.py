"""Run a job as a process so that a native crash explains itself: the child may dump a core
(RLIMIT_CORE raised to its hard limit, in its own working directory), and when it dies of a signal
the failure message gets every thread's native backtrace from that core (gdb, where installed).
faulthandler alone says nothing about a crash after Python's own finalization (a library's
static destructor, a native thread still running at exit)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


# The shell raises the core limit (no preexec_fn: the test process runs threads, Ray's among
# them); a hard limit below it leaves the soft one as it was.
_ALLOW_CORE = 'ulimit -c unlimited 2>/dev/null; exec "$@"'


def _remove_cores(cwd: Path) -> None:
    for core in cwd.glob("core*"):
        core.unlink()


def run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(args, cwd=cwd, **kwargs)`` with core dumps allowed in ``cwd`` (and in
    its children's, which inherit both). The cores are removed unless a signal ended the
    process itself: ``explain`` reads them then."""
    done = subprocess.run(["/bin/sh", "-c", _ALLOW_CORE, "sh", *args], cwd=cwd, **kwargs)
    if done.returncode >= 0:
        _remove_cores(cwd)
    return done


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
        _remove_cores(cwd)


def explain(done: subprocess.CompletedProcess, cwd: Path) -> str:
    """The tail of the process's output, and its native backtrace when a signal ended it."""
    text = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:]
    if done.returncode < 0:
        text += f"\n\nkilled by signal {-done.returncode}; native backtrace:\n{backtrace(cwd)}"
    return text
