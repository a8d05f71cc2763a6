"""Helpers shared by the benchmarks: run each measured phase in a fresh child process."""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys


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


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
