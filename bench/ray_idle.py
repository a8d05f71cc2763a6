"""What does the local Ray instance a build starts for itself cost while it does nothing, and
what changes that cost? The CPU seconds of its processes (driver, workers, raylet, GCS, agents,
log and autoscaler monitors) are a fixed cost of every Ray build (docs/benchmarks.md, "Ray's
fixed cost").

Each round runs two fresh processes one after the other, each starting a local instance as
``indexer.executor.RayExecutor`` does (2 CPUs), running one trivial task per CPU, then
waiting ``--seconds`` with no work and shutting down. ``--compare`` picks the pair:

  polling   Ray's own polling periods (``RAY_DEFAULTS``) against longer ones
            (``LONGER_POLLING``: the environment variables the daemons read at start).
  bytecode  every process importing from cached bytecode (``cached``: the environment is
            compiled first, bench/common.compile_bytecode, as an installed deployment is)
            against every process compiling what it imports outside the standard library
            (``compiling``: ``PYTHONPYCACHEPREFIX`` set to a folder holding only the standard
            library's bytecode, and ``PYTHONDONTWRITEBYTECODE=1``, as in a venv installed with
            ``pip --no-compile`` run from a shell that sets that variable).

Each process tree is measured whole (bench/proctree.run_measured: CPU seconds by process, wall
time); rounds alternate the order, so both sides see the same noise.

    python bench/ray_idle.py --seconds 120 --rounds 3 --out bench/results-ray-idle.json
    python bench/ray_idle.py --compare bytecode --seconds 3 --rounds 3 --out bench/results-ray-bytecode.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Ray 2.60's defaults (ray/_private/log_monitor.py, ray/autoscaler/_private/constants.py,
# ray/dashboard/modules/reporter/reporter_consts.py) and the candidate: the log monitor
# rescans its folder every LOG_NAME_UPDATE_INTERVAL_S (0.5 s) rather than on every 0.1 s
# poll, the autoscaler monitor and the dashboard agent's node stats every 60 s, not 5.
RAY_DEFAULTS = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "1000", "AUTOSCALER_UPDATE_INTERVAL_S": "5",
                "REPORTER_UPDATE_INTERVAL_MS": "5000"}
LONGER_POLLING = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "AUTOSCALER_UPDATE_INTERVAL_S": "60",
                  "REPORTER_UPDATE_INTERVAL_MS": "60000"}
COMPARISONS = {
    "polling": {"ray_defaults": RAY_DEFAULTS, "longer_polling": LONGER_POLLING},
    # The pycache prefix is filled in per run (an empty temporary folder): no cached bytecode
    # is found there, and none is written.
    "bytecode": {"cached": {}, "compiling": {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": ""}},
}


def idle(seconds: float, cpus: int) -> None:
    """The measured child: a build's Ray instance, one task per CPU, then ``seconds`` idle."""
    import ray

    from indexer.executor import RayExecutor

    executor = RayExecutor(num_cpus=cpus)
    executor.get([executor.submit(abs, -n) for n in range(cpus)], "warm-up")
    time.sleep(seconds)
    ray.shutdown()


def measure(variant: str, settings: dict, seconds: float, cpus: int, logs: Path) -> dict:
    import os

    from bench import proctree

    env = {k: v for k, v in os.environ.items() if k not in RAY_DEFAULTS and not k.startswith("RAY_ADDRESS")}
    env.update(settings, PYTHONPATH=str(ROOT))
    if env.get("PYTHONPYCACHEPREFIX") == "":
        # A prefix holding the standard library's bytecode alone: a venv installed without
        # compiling still has the interpreter's own (it ships compiled); site-packages and the
        # project are compiled by every process that imports them.
        env["PYTHONPYCACHEPREFIX"] = prefix = tempfile.mkdtemp(prefix="stdlib-pycache-", dir=logs)
        subprocess.run([sys.executable, "-X", f"pycache_prefix={prefix}", "-m", "compileall", "-q", "-j", "0",
                        "-x", "site-packages", sysconfig.get_paths()["stdlib"]], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = proctree.run_measured([sys.executable, __file__, "--out", "-", "--_idle", str(seconds), str(cpus)],
                                 str(logs / f"{variant}.out"), str(logs / f"{variant}.err"), env=env)
    return {"wall_seconds": tree["wall_seconds"], "cpu_seconds": tree["cpu_seconds"],
            "cpu_seconds_by_process": tree["cpu_seconds_sampled_by_process"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file.")
    parser.add_argument("--seconds", type=float, default=120.0, help="Idle time per instance (120).")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each instance (2, the builds').")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="polling",
                        help="Which pair of instances to compare (polling).")
    parser.add_argument("--_idle", nargs=2, help=argparse.SUPPRESS)  # seconds cpus
    args = parser.parse_args()
    if args._idle:
        idle(float(args._idle[0]), int(args._idle[1]))
        return
    from bench import proctree
    from bench.common import compile_bytecode, machine

    proctree.become_subreaper()
    bytecode = compile_bytecode()
    settings = COMPARISONS[args.compare]
    first, second = settings
    ratio_name = f"ratio_{second}_over_{first}"
    rounds = []
    with tempfile.TemporaryDirectory(prefix="ray-idle-") as logs:
        for number in range(args.rounds):
            order = list(settings) if number % 2 == 0 else list(settings)[::-1]
            runs = {variant: measure(variant, settings[variant], args.seconds, args.cpus, Path(logs))
                    for variant in order}
            runs[ratio_name] = round(runs[second]["cpu_seconds"] / runs[first]["cpu_seconds"], 3)
            rounds.append(runs)
            print(json.dumps({v: runs[v]["cpu_seconds"] for v in order}), flush=True)
    ratios = sorted(r[ratio_name] for r in rounds)
    out = {"benchmark": "ray_idle", "compare": args.compare, "machine": machine(), "bytecode": bytecode,
           "seconds": args.seconds, "cpus": args.cpus, "settings": settings, "rounds": rounds,
           f"median_{ratio_name}": ratios[len(ratios) // 2]}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")

if __name__ == "__main__":
    main()
