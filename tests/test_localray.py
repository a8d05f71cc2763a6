"""A local Ray instance the project starts listens on loopback only (indexer/localray.py):
a real instance in a fresh process, every listening socket of its process tree checked."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _listening(start: str) -> dict:
    script = textwrap.dedent("""
        import json
        import ray  # before psutil: Ray ships it (ray/thirdparty_files), as bench/proctree.py notes
        import psutil
        START
        ray.get(ray.remote(lambda: 1).remote())  # a worker is up, listening too
        tree = [psutil.Process()] + psutil.Process().children(recursive=True)
        sockets = []
        for process in tree:
            try:
                connections = getattr(process, "net_connections", process.connections)(kind="inet")
            except psutil.NoSuchProcess:
                continue
            sockets += [(process.name(), c.laddr.ip, c.laddr.port) for c in connections
                        if c.status == psutil.CONN_LISTEN]
        import os
        from ray._private import ray_constants
        print(json.dumps({"node": ray.util.get_node_ip_address(), "sockets": sockets,
                          "switch": ray_constants.ENABLE_RAY_CLUSTER,
                          "env": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}))
        ray.shutdown()
    """).replace("START", start)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_local_instance_listens_on_loopback_only():
    """GCS, raylet, agents, the driver's and the worker's servers: every one of them on
    127.0.0.1. Ray given only ``_node_ip_address="127.0.0.1"`` put them on the machine's
    address and on every interface (Ray 2.60 resolves a loopback node address away): the first assertion fails then."""
    out = _listening("from indexer.localray import init_local\ninit_local(num_cpus=1, include_dashboard=False)")
    assert out["node"] == "127.0.0.1"
    names = {name for name, _, _ in out["sockets"]}
    assert len(out["sockets"]) >= 5 and {"gcs_server", "raylet"} <= names, out
    assert {ip for _, ip, _ in out["sockets"]} <= LOOPBACK, out
    # and the process is left as it was: a `ray start` it runs later may still join a cluster
    assert out["switch"] is True and out["env"] is None


def test_the_project_starts_local_instances_only_through_it():
    """Every place that starts a local instance goes through indexer.localray: no module of
    the project passes a node address to ``ray.init`` itself (Ray would resolve it away)."""
    users = [ROOT / p for p in ("indexer/executor.py", "serving/serve.py", "serving/batch.py",
                                "experiments/demo.py", "pipelines/import_embeddings.py",
                                "bench/edit.py", "bench/serve.py")]
    for source in users:
        assert "localray import" in source.read_text(), source
    for package in ("indexer", "serving", "pipelines", "vmem", "experiments", "bench"):
        for source in (ROOT / package).rglob("*.py"):
            if source.name != "localray.py":
                assert "_node_ip_address" not in source.read_text(), source
