"""The scheduled step for real (issue 15): the CronJob's command (infra/schedule/cronjob-update.yaml,
only its addresses changed and Beam's DirectRunner instead of Dataflow) runs `vmem update
--incoming` three times against a memory that `vmem serve` serves with the KubeRay RayService's
Serve config (infra/kuberay/rayservice.yaml, only its addresses changed) on a real two-node Ray
cluster on loopback (shared/notes/ray-cluster-on-loopback.md). New shards arrive before each
round; the second round is killed midway. Checked: serving never fails a query (no error, no
partial answer) across all rounds; every round's items are searchable once it has reloaded
serving; the killed round leaves the previous version serving and the next round completes it.

The loopback nodes declare the pods' logical resources (the head: no CPUs, as the RayService's
head; the second node: the worker groups' CPUs, GPU and memory together), so the Serve config's
replicas and ray_actor_options stay as deployed. The declared GPU is logical: the encoder
replica finds no CUDA device and runs on the CPU."""
from __future__ import annotations

import json
import os
import re
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

from tests.test_infra import INFRA, cronjob_command
from tests.test_multinode import kill_tree, ray_node
from tests.test_security import distinct_ports, stop, wait_until

BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"
TOKEN = "schedule-token-not-a-secret"
GIB = 1 << 30
pytestmark = pytest.mark.slow


class Cluster:
    """`ray start --head` (0 CPUs) + one `ray start --address` node, both on 127.0.0.1."""

    NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                  "metrics-export-port", "node-manager-port", "object-manager-port")
    PORTS = 2 + 2 * len(NODE_PORTS)  # GCS, Ray client, and each node's own

    def __init__(self, logs: Path, env: dict[str, str], ports: list[int]) -> None:
        """``ports``: PORTS distinct free ports (``distinct_ports``, drawn with the test's others)."""
        self.temp = tempfile.mkdtemp(prefix="vs", dir="/tmp")
        names = self.NODE_PORTS
        self.gcs, client, *numbers = ports
        head_ports, worker_ports = numbers[:len(names)], numbers[len(names):]
        self.head = ray_node(["--head", f"--port={self.gcs}", "--num-cpus=0", "--include-dashboard=false",
                              f"--temp-dir={self.temp}", "--min-worker-port=22000", "--max-worker-port=22200",
                              f"--ray-client-server-port={client}",
                              *[f"--{n}={port}" for n, port in zip(names, head_ports)]], env, logs / "head.log")
        self.worker = None
        try:
            self._start_worker(logs, env, self.gcs, worker_ports)
        except BaseException:
            self.close()  # the nodes started so far
            raise

    def _start_worker(self, logs: Path, env: dict[str, str], gcs: int, worker_ports: list[int]) -> None:
        names = self.NODE_PORTS
        wait_until(lambda: "Ray runtime started" in (logs / "head.log").read_text(), 90,
                   "ray start --head", self.head, logs / "head.log")
        # The RayService's worker groups in one node: 2 Routers x 1 CPU, the Writer's 0.5, the
        # encoder's 2 CPUs + 1 GPU, 4 Searcher replicas x (4 CPUs, 32 GiB): logical resources.
        self.worker = ray_node([f"--address=127.0.0.1:{gcs}", "--num-cpus=24", "--num-gpus=1",
                                f"--memory={160 * GIB}", "--min-worker-port=22300",
                                "--max-worker-port=22500", *[f"--{n}={port}" for n, port in zip(names, worker_ports)]],
                               env, logs / "worker.log")
        wait_until(lambda: "Ray runtime started" in (logs / "worker.log").read_text(), 90,
                   "ray start (second node)", self.worker, logs / "worker.log")

    def close(self) -> None:
        for node in (self.worker, self.head):
            if node is not None:
                if node.poll() is None:
                    stop(node)
                kill_tree(node.pid)
        shutil.rmtree(self.temp, ignore_errors=True)


def arrive(incoming: Path, day: str, shard: Path) -> None:
    """A day's new shard lands in its batch folder; the upload writes _SUCCESS last (a folder
    without it is an upload in progress, which `vmem update` leaves for a later round)."""
    (incoming / day).mkdir(parents=True)
    shutil.copy(shard, incoming / day)
    (incoming / day / "_SUCCESS").write_bytes(b"")


def new_items(memory: str, batch: str) -> tuple[list[int], np.ndarray]:
    from pipelines.manifest import read_embeddings

    table = read_embeddings(memory, batch, ["id", "embedding"])
    return table.column("id").to_pylist(), np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def every_proxy_routes(serve_log: Path, nodes: int) -> bool:
    """Every node's Serve proxy has started and holds the application's routes. The loopback
    nodes share one IP, so their proxies share the HTTP port (SO_REUSEPORT) and the kernel
    hands each connection to either: a proxy still waiting for its routes answers 404."""
    text = serve_log.read_text(errors="replace")
    started = set(re.findall(r"ProxyActor pid=(\d+)\).*Proxy starting on node", text))
    routed = set(re.findall(r"ProxyActor pid=(\d+)\).*Got updated endpoints: .*'/v1/neighbors'",
                            text))
    return len(started) == nodes and started <= routed


class QueryLoad:
    """Threads querying serving, each waiting ``think_s`` between its queries (clients with a
    little think time rather than a closed loop saturating the 2 cores that the scheduled rounds
    also need: ~10 queries/s, so every reload still falls among queries); every outcome kept
    (time, status, partial)."""

    def __init__(self, url: str, vectors: np.ndarray, threads: int = 2, think_s: float = 0.05) -> None:
        self.url, self.vectors, self.think_s = url, vectors, think_s
        self.outcomes: list[tuple[float, int, bool, str]] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(seed,)) for seed in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.done.is_set():
            vector = self.vectors[rng.integers(len(self.vectors))]
            try:
                response = requests.post(f"{self.url}/v1/neighbors", timeout=30,
                                         json={"embedding": vector.tolist(), "k": 5})
                body = response.json() if response.status_code == 200 else {}
                self.outcomes.append((time.monotonic(), response.status_code, bool(body.get("partial")),
                                      "" if response.status_code == 200 else response.text[:200]))
            except requests.RequestException as error:
                self.outcomes.append((time.monotonic(), 0, False, str(error)[:200]))
            self.done.wait(self.think_s)

    def stop(self) -> list[tuple[float, int, bool, str]]:
        self.done.set()
        for thread in self.threads:
            thread.join(60)
        return self.outcomes


def scheduled_round(command: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(["/bin/sh", "-c", command], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def summary_of(log: Path) -> dict:
    return json.loads(log.read_text().strip().splitlines()[-1])


def test_three_scheduled_rounds_one_killed_while_serving_on_two_nodes(fmnist_shards, tmp_path):
    from indexer.layout import read_latest

    memory, incoming = str(tmp_path / "memory"), tmp_path / "incoming"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VMEM_", "RAY_ADDRESS"))}
    # RAY_DEDUP_LOGS=0: every proxy's own lines reach serve.log when logged (every_proxy_routes)
    base.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token",
                RAY_DEDUP_LOGS="0", RAY_AUTH_TOKEN=secrets.token_hex(32),
                PATH=f"{BIN}:{os.environ['PATH']}")
    http_port, *cluster_ports = distinct_ports(1 + Cluster.PORTS)
    url = f"http://127.0.0.1:{http_port}"
    command, cron_env = cronjob_command({"INCOMING": str(incoming), "MEMORY": memory,
                                         "SERVING_URL": url, "BEAM_ARGS": ""})
    update_env = {**base, **cron_env, "VMEM_TOKEN": TOKEN}

    # The memory's first day, published before serving starts (serving needs a version), while
    # the cluster starts.
    arrive(incoming, "2026-11-01", fmnist_shards / "fashion-mnist-train-000000.tar")
    seed = scheduled_round(command, {**update_env, "SERVING_URL": ""}, tmp_path / "round-0.log")
    cluster = server = load = None
    try:
        cluster = Cluster(tmp_path, base, cluster_ports)
        assert seed.wait(600) == 0, (tmp_path / "round-0.log").read_text()[-3000:]
        server = subprocess.Popen([str(BIN / "vmem"), "serve", "--config", str(INFRA / "kuberay" / "rayservice.yaml"),
                                   "--memory", memory, "--port", str(http_port),
                                   "--ray-address", f"127.0.0.1:{cluster.gcs}"],
                                  env={**base, "VMEM_TOKEN": TOKEN}, stdout=(tmp_path / "serve.log").open("w"),
                                  stderr=subprocess.STDOUT)
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200, 420,
                   "vmem serve (the RayService's Serve config)", server, tmp_path / "serve.log")
        wait_until(lambda: every_proxy_routes(tmp_path / "serve.log", nodes=2), 120,
                   "the Serve proxies of both nodes", server, tmp_path / "serve.log")
        served = requests.get(f"{url}/v1/memory", timeout=30).json()
        assert served["version"] == read_latest(memory) and served["size"] == 40
        _, day_one = new_items(memory, "2026-11-01")
        load = QueryLoad(url, day_one)

        def searchable(batch: str) -> None:
            ids, vectors = new_items(memory, batch)
            for item, vector in zip(ids, vectors):
                found = requests.post(f"{url}/v1/neighbors", timeout=30,
                                      json={"embedding": vector.tolist(), "k": 1}).json()
                assert found["neighbours"][0]["id"] == item, (batch, item, found)

        # Round 1: a new shard arrives; the round publishes it and reloads serving.
        arrive(incoming, "2026-11-02", fmnist_shards / "fashion-mnist-train-000001.tar")
        first = scheduled_round(command, update_env, tmp_path / "round-1.log")
        assert first.wait(600) == 0, (tmp_path / "round-1.log").read_text()[-3000:]
        summary = summary_of(tmp_path / "round-1.log")
        assert [b["batch"] for b in summary["batches"]] == ["2026-11-02"]
        assert summary["serving"]["version"] == summary["version"] == read_latest(memory)
        searchable("2026-11-02")
        before_kill = read_latest(memory)

        # Round 2: killed midway, while its ingest runs.
        arrive(incoming, "2026-11-03", fmnist_shards / "fashion-mnist-train-000002.tar")
        killed = scheduled_round(command, update_env, tmp_path / "round-2.log")
        wait_until(lambda: "read tasks from" in (tmp_path / "round-2.log").read_text(), 300,
                   "round 2's ingest", killed, tmp_path / "round-2.log")
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(30)
        # Killed inside its ingest (the line above is logged before the pipeline runs): the
        # batch was never committed, and no version was published.
        assert not (Path(memory) / "embeddings" / "2026-11-03" / "_manifest.json").exists()
        assert read_latest(memory) == before_kill, "the killed round published a version"
        time.sleep(3)  # past the replicas' max staleness: they would have moved by now
        memory_view = requests.get(f"{url}/v1/memory", timeout=30).json()
        assert (memory_view["version"], memory_view["size"]) == (before_kill, 80)

        # Round 3: another shard arrives; the round completes the killed round's batch too.
        arrive(incoming, "2026-11-04", fmnist_shards / "fashion-mnist-test-000000.tar")
        third = scheduled_round(command, update_env, tmp_path / "round-3.log")
        assert third.wait(600) == 0, (tmp_path / "round-3.log").read_text()[-3000:]
        summary = summary_of(tmp_path / "round-3.log")
        assert [b["batch"] for b in summary["batches"]] == ["2026-11-03", "2026-11-04"]
        assert summary["serving"]["version"] == summary["version"] == read_latest(memory)
        outcomes = load.stop()  # the load spanned every round and its reload
        load = None
        failed = [o for o in outcomes if o[1] != 200 or o[2]]
        assert len(outcomes) > 50 and not failed, f"{len(failed)}/{len(outcomes)} failed: {failed[:5]}"
        for batch in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"):
            searchable(batch)
        memory_view = requests.get(f"{url}/v1/memory", timeout=30).json()
        assert memory_view["size"] == 40 + 40 + 20 + 40
    finally:
        if seed.poll() is None:
            os.killpg(seed.pid, signal.SIGKILL)
        if load is not None:
            load.stop()
        if server is not None:
            stop(server)
        if cluster is not None:
            cluster.close()
