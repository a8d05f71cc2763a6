"""A Ray instance that is already running when a build starts, as on a KubeRay or `ray start`
cluster that scheduled ingestion submits to: what one more build costs it, start-up left out.

``RunningRay`` starts a head node with ``ray start`` (loopback, ``--num-cpus``, no dashboard,
its own ``--temp-dir``) outside this process's subreaper tree, so that its daemons are not
descendants of the benchmark driver and a measured build's teardown does not wait for them.
Its processes are found by that temp dir on their command lines (gcs_server, raylet, agents,
the workers the raylet starts for each job). ``sampler`` is a ``proctree.TreeSampler`` of
them: sampled alongside a build (``proctree.run_measured(alongside=...)``), the CPU seconds
they used over the build (``cpu_since``) are the instance's share of the build's cost: its
daemons' polling, and the build's workers, from their start to their exit. A worker that ends
between two samples loses what it used after its last one (at most ``interval`` s of CPU
each): the figure is a lower bound, by at most that.

    with RunningRay(cpus=2) as ray_instance:
        before = ray_instance.cpu_snapshot()
        tree = proctree.run_measured(command, out, err, alongside=ray_instance.sampler,
                                     env={**os.environ, **ray_instance.env})
        spent = ray_instance.cpu_since(before)
"""
from __future__ import annotations

import shutil
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import proctree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningRay:
    """A local head node started by ``ray start`` (module docstring). ``start_up``: wall and
    CPU seconds from ``ray start`` until its processes are quiet (the cost a running cluster
    paid once, before any build). Raises CalledProcessError when ``ray start`` fails."""

    def __init__(self, cpus: int, interval: float = 0.5) -> None:
        self.cpus, self.interval = cpus, interval
        # short: Ray's socket paths under it must fit in 107 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="rr", dir="/tmp")
        self.address = f"127.0.0.1:{_free_port()}"
        # Ray turns token authentication on for `ray start`: a token of this instance's own,
        # so that ~/.ray/auth_token is neither read nor written; drivers need ``env`` too
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_ADDRESS": self.address, "RAY_USAGE_STATS_ENABLED": "0",
                    # as infra/kuberay/rayjob-index-build.yaml sets it for a cluster's workers
                    # (indexer/openmp.py: a local instance's workers inherit it from the build)
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.sampler = proctree.TreeSampler(self.processes)
        self.start_up: dict = {}

    def processes(self) -> list:
        """The instance's live processes: those whose command line names its temp dir
        (gcs_server, raylet, ...) and their descendants (agents, workers)."""
        found: dict[int, object] = {}
        for process in proctree.psutil.process_iter(["cmdline"]):
            try:
                if self.temp_dir in " ".join(process.info["cmdline"] or ()):
                    found[process.pid] = process
                    found.update((child.pid, child) for child in process.children(recursive=True))
            except (proctree.psutil.NoSuchProcess, proctree.psutil.AccessDenied):
                continue
        return list(found.values())

    def __enter__(self) -> "RunningRay":
        ray = str(Path(sys.executable).with_name("ray"))
        started = time.monotonic()
        was_subreaper = proctree.set_subreaper(False)  # its daemons are not this run's descendants
        try:
            subprocess.run([ray, "start", "--head", f"--num-cpus={self.cpus}", "--node-ip-address=127.0.0.1",
                            f"--port={self.address.rsplit(':', 1)[1]}", "--include-dashboard=false",
                            f"--temp-dir={self.temp_dir}", "--disable-usage-stats"],
                           check=True, capture_output=True, text=True, env={**os.environ, **self.env})
        finally:
            proctree.set_subreaper(was_subreaper)
        quiet = proctree.wait_quiet(self.processes, timeout=60.0)
        self.sampler.sample()
        self.start_up = {"wall_seconds": round(time.monotonic() - started, 3),
                         "cpu_seconds": round(sum(used for _, used in self.sampler.cpu.values()), 3),
                         "quiet_after_seconds": quiet, "processes": len(self.sampler.cpu)}
        return self

    def cpu_snapshot(self) -> dict:
        """{(pid, start time): CPU seconds so far} of the instance's processes, sampled now."""
        self.sampler.sample()
        return {key: used for key, (_, used) in self.sampler.cpu.items()}

    def cpu_since(self, before: dict) -> tuple[float, dict[str, float]]:
        """CPU seconds the instance used since ``before`` (a ``cpu_snapshot``), in total and
        by process name, from the sampler's latest figures."""
        self.sampler.sample()
        by_name: dict[str, float] = {}
        for key, (name, used) in self.sampler.cpu.items():
            by_name[name] = by_name.get(name, 0.0) + used - before.get(key, 0.0)
        by_name = {n: round(s, 2) for n, s in sorted(by_name.items(), key=lambda i: -i[1]) if s > 0.005}
        return round(sum(by_name.values()), 3), by_name

    def __exit__(self, *exc) -> None:
        # not `ray stop`: it stops every Ray instance on the machine, not only this one
        live = self.processes()
        for process in live:
            try:
                process.terminate()
            except (proctree.psutil.NoSuchProcess, proctree.psutil.AccessDenied):
                continue
        _, alive = proctree.psutil.wait_procs(live, timeout=15)
        for process in alive:
            try:
                process.kill()
            except (proctree.psutil.NoSuchProcess, proctree.psutil.AccessDenied):
                continue
        shutil.rmtree(self.temp_dir, ignore_errors=True)
