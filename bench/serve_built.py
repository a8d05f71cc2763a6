"""Serve a memory built by ``bench/index.py --keep-work`` with ``vmem serve`` and query it over
HTTP: seconds until /healthz answers, latency per query (p50 / p95, one client, sequential),
recall@10 of the held-out queries against the benchmark's exact ground truth, and the RSS of
the serving process tree. Prints one JSON object (and ``--out FILE``).

    python bench/index.py --vectors 10000000 --dim 128 --shards 4 --skip-single \\
        --skip-autofaiss --keep-work --work /scratch
    python bench/serve_built.py --work /scratch/index-10000000x128-XXXX

The memory has synthetic vectors and no encoder, so it is served ``embeddings_only`` (clients
send embeddings) on 127.0.0.1, with the packaged serve config otherwise.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit_report  # noqa: E402
from bench.proctree import _psutil  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "serving" / "serve_config.yaml"


def wait_ready(url: str, started: float, timeout_s: float) -> float:
    """Seconds from ``started`` until ``url``/healthz answers 200; TimeoutError past timeout_s."""
    while time.time() - started < timeout_s:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.time() - started
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz did not answer within {timeout_s:g} s")


def tree_rss(pid: int) -> int:
    psutil = _psutil()
    parent = psutil.Process(pid)
    total = 0
    for process in [parent, *parent.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True,
                        help="A kept bench/index.py work folder (memory/, queries.npy, truth.npy).")
    parser.add_argument("--queries", type=int, default=200, help="Held-out queries sent (200).")
    parser.add_argument("--port", type=int, default=8350, help="Serve's HTTP port (8350).")
    parser.add_argument("--data-plane-port", type=int, default=8351,
                        help="The direct data plane's port, which the queries use (8351).")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--out", help="Also write the JSON object to this file.")
    args = parser.parse_args()

    work = Path(args.work)
    config = yaml.safe_load(CONFIG.read_text())
    app = config["applications"][0]["args"]
    app.update(memory=str(work / "memory"), embeddings_only=True, default_k=10)
    queries = np.load(work / "queries.npy")[:args.queries]
    truth = np.load(work / "truth.npy")[:args.queries, :10]
    with tempfile.TemporaryDirectory() as scratch:
        config_path = os.path.join(scratch, "serve.yaml")
        Path(config_path).write_text(yaml.safe_dump(config))
        started = time.time()
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "vmem"), "serve", "--config", config_path,
             "--port", str(args.port), "--data-plane-port", str(args.data_plane_port)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(scratch, "serve.log"), "w"),
            start_new_session=True)
        try:
            url = f"http://127.0.0.1:{args.data_plane_port}"
            ready = wait_ready(url, started, args.ready_timeout)
            latencies, recalls = [], []
            for query, exact in zip(queries, truth):
                sent = time.perf_counter()
                response = requests.post(f"{url}/v1/neighbors", timeout=60,
                                         json={"embedding": query.tolist(), "k": 10})
                latencies.append(time.perf_counter() - sent)
                response.raise_for_status()
                found = [n["id"] for n in response.json()["neighbours"]]
                recalls.append(len(set(found) & set(exact.tolist())) / 10)
            rss = tree_rss(server.pid)
        finally:
            # SIGTERM, as a supervisor stops it (vmem serve takes Serve and its Ray down); not
            # SIGINT, which a shell ignores in the commands it starts in the background
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                raise
    result = {"benchmark": "serve_built", "work": str(work), "ready_seconds": round(ready, 1),
              "queries": len(latencies), "latency_ms_p50": round(1e3 * float(np.median(latencies)), 1),
              "latency_ms_p95": round(1e3 * float(np.percentile(latencies, 95)), 1),
              "recall_at_10": round(float(np.mean(recalls)), 4), "serve_tree_rss_mib": round(rss / 2**20)}
    emit_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
