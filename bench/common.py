"""Helpers shared by the benchmarks: run each measured phase in a fresh child process."""
from __future__ import annotations

import compileall
import json
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_phase(script: str, phase: str, args: list[str]) -> dict:
    """Run ``script --phase PHASE ...`` in a fresh process and return its JSON result line."""
    out = subprocess.run([sys.executable, script, "--phase", phase, *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def emit_phase(result: dict) -> None:
    """Print a phase's result with this process's own peak resident memory."""
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result), flush=True)


def emit_report(report: dict, out: str | None) -> None:
    """Print a benchmark's JSON report, and write it to ``out`` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as handle:
            handle.write(text + "\n")


def compile_bytecode() -> dict:
    """Compile every module of this interpreter's environment (site-packages and the project's
    packages) to ``__pycache__`` before anything is measured, as an installed deployment has
    them (``pip install`` compiles by default; the images in infra/docker are built so).

    Without it a process imports from source and compiles what it imports each time when
    ``PYTHONDONTWRITEBYTECODE`` is set or the files are not writable: measured on this machine
    (2026-12-02), a local Ray instance's start-up took 11.9 CPU-s compiling against 5.0 CPU-s
    from cached bytecode (docs/benchmarks.md, "Bytecode"). The Makefile installs with
    ``--no-compile``, so a fresh checkout's venv has none. Already compiled files are only
    checked (their source's mtime), so later runs take a second or two.

    Returns ``{"seconds": wall seconds spent, "folders": [...]}`` for the report. A file that
    does not compile (some packages ship templates or Python 2 fixtures as ``.py``) is skipped
    silently, as ``pip install`` skips it.
    """
    paths = sysconfig.get_paths()
    # bench/ one level down only: its peers' own venvs (bench/.venv-*) are other interpreters'
    depth = {"bench": 1}
    folders = [(folder, 64) for folder in sorted({paths["purelib"], paths["platlib"]})] + [
        (str(ROOT / package), depth.get(package, 64))
        for package in ("indexer", "serving", "pipelines", "vmem", "experiments", "bench") if (ROOT / package).is_dir()]
    start = time.perf_counter()
    for folder, levels in folders:
        compileall.compile_dir(folder, maxlevels=levels, quiet=2, workers=os.cpu_count() or 1)
    return {"seconds": round(time.perf_counter() - start, 1), "folders": [folder for folder, _ in folders]}


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
