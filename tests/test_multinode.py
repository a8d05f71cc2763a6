"""The serving topology on a real two-node Ray cluster on loopback (`ray start --head` plus a
second `ray start --address` node; recipe: shared/notes/ray-cluster-on-loopback.md), with the
second node killed under query load (issue 11): success >= 95 % during the fault, 100 % after,
no item lost, a deleted item never returned."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.test_security import distinct_ports, small_memory, stop, wait_until  # noqa: F401 (fixture)

BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"
TOKEN = "multinode-token-not-a-secret"
pytestmark = pytest.mark.slow


def ray_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """One `ray start --block` node in its own process group (so killing the group kills the
    raylet and every worker of that node)."""
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                             "--disable-usage-stats", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (parent of each process: field 4 of its stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    return tree


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (a node's raylet, agents and workers)."""
    for member in process_tree(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def unit(seed: int, dim: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(dim)
    return (vector / np.linalg.norm(vector)).tolist()


def test_a_node_killed_under_query_load(small_memory, tmp_path):  # noqa: F811 (the fixture)
    from serving.serve import DEFAULT_CONFIG, load_config

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMEM_", "RAY_ADDRESS"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="vm", dir="/tmp")
    head_names = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                  "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
                  "object-manager-port")
    worker_names = head_names[1:]
    gcs, http_port, *numbers = distinct_ports(2 + len(head_names) + len(worker_names))
    head_ports = [f"--{name}={port}" for name, port in zip(head_names, numbers)]
    worker_ports = [f"--{name}={port}" for name, port in zip(worker_names, numbers[len(head_names):])]
    head = ray_node(["--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=false",
                     f"--temp-dir={temp}", "--min-worker-port=21000", "--max-worker-port=21200",
                     *head_ports], env, tmp_path / "head.log")
    worker = server = None
    try:
        wait_until(lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(), 90,
                   "ray start --head", head, tmp_path / "head.log")
        worker = ray_node([f"--address=127.0.0.1:{gcs}", "--num-cpus=2", "--min-worker-port=21300",
                           "--max-worker-port=21500", *worker_ports], env, tmp_path / "worker.log")
        wait_until(lambda: "Ray runtime started" in (tmp_path / "worker.log").read_text(), 90,
                   "ray start (second node)", worker, tmp_path / "worker.log")

        config = load_config(DEFAULT_CONFIG, small_memory, "127.0.0.1", http_port,
                             {"embeddings_only": True, "searcher_groups": 1, "token_env": "VMEM_TEST_TOKEN",
                              "shard_timeout_s": 1.0, "request_deadline_s": 4.0},
                             data_plane_port=0)  # queried through the proxy here
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] in ("Router", "Searcher0"):
                deployment.update(num_replicas=2, ray_actor_options={"num_cpus": 0.1},
                                  health_check_period_s=2, health_check_timeout_s=2)
        config["applications"][0]["name"] = "visual-memory-multinode"
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
        server = subprocess.Popen([str(BIN / "vmem"), "serve", "--config", str(tmp_path / "serve.yaml"),
                                   "--ray-address", f"127.0.0.1:{gcs}"],
                                  env={**env, "VMEM_TEST_TOKEN": TOKEN}, stdout=(tmp_path / "serve.log").open("w"),
                                  stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200, 240,
                   "vmem serve", server, tmp_path / "serve.log")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        dim = 16

        def add(key: str, seed: int) -> None:
            for _ in range(60):  # the writer may be restarting after the fault
                response = requests.post(f"{url}/v1/memory/items", headers=headers, timeout=60, json={
                    "items": [{"key": key, "label": "multi", "embedding": unit(seed, dim)}]})
                if response.status_code == 200:
                    return
                time.sleep(1)
            pytest.fail(f"add {key}: {response.status_code} {response.text}")

        for i in range(3):
            add(f"before/{i}", 1000 + i)
        doomed = requests.delete(f"{url}/v1/memory/items", headers=headers, json={"keys": ["before/2"]})
        assert doomed.status_code == 200, doomed.text

        outcomes: list[tuple[float, int, bool]] = []  # (time, status, deleted item returned)
        stop_load = threading.Event()

        def load() -> None:
            i = 0
            while not stop_load.is_set():
                i += 1
                try:
                    response = requests.post(f"{url}/v1/neighbors", timeout=15,
                                             json={"embedding": unit(1000 + i % 3, dim), "k": 5})
                    status = response.status_code
                    returned = status == 200 and any(n["key"] == "before/2" for n in response.json()["neighbours"])
                except requests.RequestException:
                    status, returned = 0, False
                outcomes.append((time.monotonic(), status, returned))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(5)
        on_worker = [pid for pid in process_tree(worker.pid) if "ServeReplica" in cmdline(pid)]
        assert on_worker, "no Serve replica ran on the second node: the fault would test nothing"
        killed_at = time.monotonic()
        kill_tree(worker.pid)  # the second node: `ray start`, its raylet and all its workers
        worker.wait(30)
        time.sleep(25)
        stop_load.set()
        for thread in threads:
            thread.join(30)
        during = [status for at, status, _ in outcomes if at >= killed_at]
        assert during and sum(s == 200 for s in during) / len(during) >= 0.95, (
            f"{sum(s == 200 for s in during)}/{len(during)} succeeded during the fault")
        assert not any(returned for _, _, returned in outcomes)

        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200, 120,
                   "recovery", server, tmp_path / "serve.log")
        for i in range(3):
            add(f"after/{i}", 2000 + i)
        after = [requests.post(f"{url}/v1/neighbors", timeout=15,
                               json={"embedding": unit(seed, dim), "k": 1}) for seed in
                 [1000, 1001, 2000, 2001, 2002] * 8]
        assert all(r.status_code == 200 for r in after)
        assert [r.json()["neighbours"][0]["key"] for r in after] == \
            ["before/0", "before/1", "after/0", "after/1", "after/2"] * 8  # no item lost
        memory = requests.get(f"{url}/v1/memory").json()
        assert memory["classes"]["multi"] == 5
    finally:
        if server is not None:
            stop(server)
        for node in (worker, head):
            if node is not None and node.poll() is None:
                stop(node)
            if node is not None:
                kill_tree(node.pid)
        shutil.rmtree(temp, ignore_errors=True)
