"""Edits on every replica: the shipped serving config with 2 routers and 2 replicas per searcher
group, real Ray Serve on 127.0.0.1 (issue 11). Each query opens a fresh connection, so the proxy
spreads them over both routers."""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import time

import numpy as np
import pytest
import requests

from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from indexer.layout import read_latest, set_latest
from indexer.manifest import IndexManifest
from indexer.store import resolve_version
from pipelines import storage
from tests.test_serving import free_port

TOKEN = "consistency-token-not-a-secret"
pytestmark = pytest.mark.slow


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def deploy(embedded_memory, folder, options: dict, deployments: dict[str, dict]) -> tuple[str, str]:
    """The shipped serving config on 127.0.0.1 over a copy of the embedded memory rebuilt as
    2 shards (IVF8,Flat) in ``folder``, 2 searcher groups, embeddings only, with ``options``
    on top and each named deployment's settings updated; returns (url, memory root) once
    /healthz answers."""
    from serving.serve import DEFAULT_CONFIG, load_config, start

    root = str(folder / "memory")
    shutil.copytree(embedded_memory / "memory", root)
    run_build(BuildConfig(root, num_shards=2, factory="IVF8,Flat"), LocalExecutor())
    port = free_port()
    config = load_config(DEFAULT_CONFIG, root, "127.0.0.1", port,
                         {"searcher_groups": 2, "embeddings_only": True, **options})
    for deployment in config["applications"][0]["deployments"]:
        deployment.update(deployments.get(deployment["name"], {}))
    start(config)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return url, root


@pytest.fixture(scope="module")
def cluster(embedded_memory, tmp_path_factory, ray_executor):
    from ray import serve

    replicated = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.2},
                  "health_check_period_s": 2, "health_check_timeout_s": 2}
    yield deploy(embedded_memory, tmp_path_factory.mktemp("consistent"),
                 {"token": TOKEN, "max_inflight_requests": 6, "shard_timeout_s": 1.0,
                  "request_deadline_s": 3.0, "data_plane_port": free_port()},
                 {name: replicated for name in ("Router", "Searcher0", "Searcher1")})  # as the RayService ships it
    serve.shutdown()


def wait_ready(url: str, timeout: float = 120) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the application did not start")


def unit(seed: int, dim: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(dim)
    return (vector / np.linalg.norm(vector)).tolist()


def neighbour_keys(url: str, embedding: list[float], k: int = 5, **extra) -> tuple[list[str], dict]:
    response = requests.post(f"{url}/v1/neighbors", json={"embedding": embedding, "k": k, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    return [n["key"] for n in body["neighbours"]], body


def _answers_until(url: str, dim: int, done, timeout: float = 90.0, run: int = 20) -> list[dict]:
    """Query until ``run`` answers in a row satisfy ``done``; returns them. Raises
    AssertionError with the last answer when that does not happen within ``timeout`` s."""
    deadline, streak, body = time.monotonic() + timeout, [], None
    while time.monotonic() < deadline:
        response = requests.post(f"{url}/v1/neighbors", json={"embedding": unit(len(streak), dim), "k": 10})
        body = response.json() if response.status_code == 200 else {"status": response.status_code}
        streak = streak + [body] if response.status_code == 200 and done(body) else []
        if len(streak) == run:
            return streak
        time.sleep(0.05)
    raise AssertionError(f"no run of {run} answers as expected in {timeout} s; last: {body}")


def _health_until(url: str, done, timeout: float = 60.0, query_dim: int = 0) -> dict:
    """/healthz until ``done`` holds (a router asks one replica of each searcher group, so
    this tries again; with ``query_dim`` a query first, which makes a degraded replica try its
    files again). Raises AssertionError with the last /healthz."""
    deadline, health = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if query_dim:
            requests.post(f"{url}/v1/neighbors", json={"embedding": unit(0, query_dim), "k": 1})
        health = requests.get(f"{url}/healthz").json()
        if done(health):
            return health
        time.sleep(0.2)
    raise AssertionError(f"/healthz never as expected in {timeout} s; last: {health}")


def test_a_restarted_searcher_meets_a_corrupt_live_file(cluster):
    """Case I5 (first in the module: no edit yet, so no compaction moves LATEST meanwhile). A
    file of the version being served is corrupted on storage, then every replica of searcher
    group 1 is killed (an OOM, a lost node). The new replicas refuse the file (its checksum),
    serve that shard from the version before the add (nothing was deleted since), and queries
    answer from every shard, naming the stale one; once the file is repaired the shard serves
    the live version again, without a restart."""
    url, root = cluster
    dim = resolve_version(root).dim
    items = [{"key": f"i5/{i}", "label": "I5", "embedding": unit(500 + i, dim)} for i in range(8)]
    added = requests.post(f"{url}/v1/memory/items", headers=auth(), json={"items": items})
    assert added.status_code == 200, added.text
    live = resolve_version(root)
    parent = IndexManifest.read(root, live.parent)
    assert live.operation == "add" and len(live.shards[1].segments) == len(parent.shards[1].segments) + 1
    path = storage.join(root, "index", live.shards[1].segments[-1].index_path)
    original = open(path, "rb").read()
    open(path, "wb").write(original[:-8] + b"corrupt!")
    try:
        victims = _searcher_replicas("Searcher1")
        assert len(victims) == 2
        for pid in victims.values():
            os.kill(pid, signal.SIGKILL)
        stale = [{"shard": 1, "version": parent.version}]
        answers = _answers_until(url, dim, lambda a: a["shards_stale"] == stale and not a["partial"])
        assert {a["version"] for a in answers} == {live.version}
        assert all(a["shards_answered"] == [0, 1] for a in answers)
        health = _health_until(url, lambda h: "1" in h["degraded_shards"])
        assert health["status"] == "degraded"
        assert health["degraded_shards"]["1"]["serving"] == parent.version
        assert "ChecksumMismatch" in health["degraded_shards"]["1"]["reason"]
        memory = requests.get(f"{url}/v1/memory").json()  # its counts say where they come from
        assert memory["degraded_shards"]["1"]["serving"] == parent.version
        assert requests.post(f"{url}/v1/memory/reload", headers=auth(), timeout=90).status_code == 200
    finally:
        open(path, "wb").write(original)
    # repaired: each replica loads its files again when a query comes 10 s after its last try
    # (20 s or more if a retry came while the file was still corrupt: backoff)
    _answers_until(url, dim, lambda a: a["shards_stale"] == [] and not a["partial"], run=40)
    found = [neighbour_keys(url, item["embedding"], 1)[0] for item in items]
    assert found == [[item["key"]] for item in items]  # the add is served whole again
    assert _health_until(url, lambda h: h["degraded_shards"] == {}, query_dim=dim)["status"] == "ok"


def test_adds_and_deletes_are_seen_by_every_replica_at_once(cluster):
    url, root = cluster
    dim = resolve_version(root).dim
    probe = unit(1, dim)
    added = requests.post(f"{url}/v1/memory/items", headers=auth(), json={"items": [
        {"key": "probe/one", "label": "Probe", "embedding": probe}]})
    assert added.status_code == 200, added.text
    assert added.json()["replicas"]["lagging"] == [] and added.json()["replicas"]["replicas"] >= 2
    seen = [neighbour_keys(url, probe, 1)[0][0] == "probe/one" for _ in range(100)]
    assert sum(seen) == 100  # fresh connections: both routers

    deleted = requests.delete(f"{url}/v1/memory/items", headers=auth(), json={"keys": ["probe/one"]})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["stopped_returning"]["version"] == deleted.json()["version"]
    returned = ["probe/one" in neighbour_keys(url, probe, 20)[0] for _ in range(100)]
    assert sum(returned) == 0
    versions = {neighbour_keys(url, probe, 1)[1]["version"] for _ in range(20)}
    assert versions == {read_latest(root)}  # one version, whichever replica answers


def test_concurrent_adds_from_two_clients_lose_nothing(cluster):
    url, root = cluster
    dim = resolve_version(root).dim
    before = requests.get(f"{url}/v1/memory").json()["size"]

    def add(client: int) -> list[int]:
        codes = []
        for i in range(6):
            item = {"key": f"client{client}/{i}", "label": f"C{client}",
                    "embedding": unit(100 * client + i, dim)}
            codes.append(requests.post(f"{url}/v1/memory/items", headers=auth(),
                                       json={"items": [item]}).status_code)
        return codes

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        codes = [c for result in pool.map(add, [1, 2]) for c in result]
    assert codes == [200] * 12
    memory = requests.get(f"{url}/v1/memory").json()
    assert memory["size"] == before + 12 and memory["classes"]["C1"] == memory["classes"]["C2"] == 6
    for client in (1, 2):
        for i in range(6):
            keys, _ = neighbour_keys(url, unit(100 * client + i, dim), 1)
            assert keys == [f"client{client}/{i}"]


def test_a_failed_add_leaves_no_trace(cluster):
    url, root = cluster
    manifest = resolve_version(root)
    trained = storage.join(root, "index", manifest.trained_path)
    original = open(trained, "rb").read()
    batches = set(storage.list_names(storage.join(root, "embeddings")))
    try:
        open(trained, "wb").write(original[:-8] + b"corrupt!")
        response = requests.post(f"{url}/v1/memory/items", headers=auth(), json={"items": [
            {"key": "never/added", "label": "Never", "embedding": unit(7, manifest.dim)}]})
    finally:
        open(trained, "wb").write(original)
    assert response.status_code == 500 and response.json()["field"] == "items"
    assert "nothing committed" in response.json()["error"]
    assert read_latest(root) == manifest.version
    assert set(storage.list_names(storage.join(root, "embeddings"))) == batches


def test_min_version_not_yet_served_is_503_with_retry_after(cluster):
    url, root = cluster
    response = requests.post(f"{url}/v1/neighbors", json={
        "embedding": unit(3, resolve_version(root).dim), "k": 3, "min_version": "99991231T000000000-ffffff"})
    assert response.status_code == 503 and response.json()["field"] == "min_version"
    assert response.headers["retry-after"] == "1"
    keys, body = neighbour_keys(url, unit(3, resolve_version(root).dim), 3, min_version=read_latest(root))
    assert body["version"] == read_latest(root)


def test_a_corrupt_new_version_is_refused_and_the_old_one_keeps_serving(cluster):
    url, root = cluster
    good = resolve_version(root)
    bad = IndexManifest.from_fields({**storage.read_json(IndexManifest.url_for(root, good.version)),
                                     "version": good.version + "-bad", "parent": good.version,
                                     "operation": "add"})  # a broken add: the old version stands in
    bad.shards[1].segments[0].index_sha256 = "0" * 64  # its bytes no longer match: refused
    bad.write(root)
    set_latest(root, bad.version)
    try:
        time.sleep(1.0)
        answers = [neighbour_keys(url, unit(i, good.dim), 10)[1] for i in range(30)]
        assert {a["version"] for a in answers} == {good.version}
        assert not any(a["partial"] for a in answers)
        health = requests.get(f"{url}/healthz").json()
        assert health["status"] == "degraded" and bad.version in health["refused_versions"]
        assert "ChecksumMismatch" in health["refused_versions"][bad.version]
        assert "\x1b" not in health["refused_versions"][bad.version]  # the cause, not a coloured traceback
        # a reload waits for the replicas, which refuse it: 503 naming the version and why
        reload = requests.post(f"{url}/v1/memory/reload", headers=auth(), timeout=90)
        assert reload.status_code == 503 and reload.json()["field"] == "version", reload.text
        assert f"it refused {bad.version}: VersionRefused" in reload.json()["error"], reload.text
        assert "ChecksumMismatch" in reload.json()["error"], reload.text
    finally:  # a forward version with the good files (versions only move forward)
        fixed = IndexManifest.from_fields({**storage.read_json(IndexManifest.url_for(root, good.version)),
                                           "version": bad.version + "-fixed", "parent": bad.version})
        fixed.write(root)
        set_latest(root, fixed.version)
    time.sleep(1.0)
    assert {neighbour_keys(url, unit(1, good.dim), 3)[1]["version"] for _ in range(10)} == {fixed.version}


def test_a_corrupt_rebuild_is_refused_and_a_restarted_router_serves_as_its_sibling(cluster):
    """A build over every batch whose shard 1 file is corrupt: the running routers refuse it
    (indexer.history ``stands_in``) and answer whole from the version before it; a router
    replica killed and restarted meanwhile starts on that version too (serving/router.py
    ``_start_version``), not on the build with shard 1 left out."""
    import ray

    url, root = cluster
    good = resolve_version(root)
    rebuilt = run_build(BuildConfig(root, num_shards=good.num_shards), LocalExecutor())
    assert rebuilt.parent == good.version and set(good.batches) <= set(rebuilt.batches)
    with open(f"{root}/index/{rebuilt.shards[1].segments[0].index_path}", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"corrupt!")
    try:
        time.sleep(1.0)
        before = [neighbour_keys(url, unit(i, good.dim), 5)[1] for i in range(10)]
        assert {(a["version"], a["partial"]) for a in before} == {(good.version, False)}
        refusing: set[str] = set()  # both router replicas refused it (two-phase switch_groups)

        def both_refused(health: dict) -> bool:
            if "ChecksumMismatch" in health["refused_versions"].get(rebuilt.version, ""):
                refusing.add(health["replica"])
            return len(refusing) == 2

        _health_until(url, both_refused)
        names = _searcher_names("Router")
        victim = sorted(names)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # Serve replaces the replica (health check 2 s)
            new = _searcher_names("Router") - names
            if new:
                break
            time.sleep(1.0)
        else:
            raise AssertionError("the killed router replica was not replaced")
        replica = new.pop().rsplit("#", 1)[1]  # SERVE_REPLICA::<app>#<deployment>#<replica id>
        health = _health_until(url, lambda h: h["replica"] == replica, timeout=90)
        assert health["version"] == good.version and health["degraded_shards"] == {}, health
        assert "ChecksumMismatch" in health["refused_versions"][rebuilt.version], health
        after = [neighbour_keys(url, unit(i, good.dim), 5)[1] for i in range(40)]
        assert {(a["version"], a["partial"]) for a in after} == {(good.version, False)}
    finally:  # a forward version with the good files (versions only move forward)
        fixed = IndexManifest.from_fields({**storage.read_json(IndexManifest.url_for(root, good.version)),
                                           "version": rebuilt.version + "-fixed", "parent": rebuilt.version})
        fixed.write(root)
        set_latest(root, fixed.version)
    _answers_until(url, good.dim, lambda body: body["version"] == fixed.version and not body["partial"])


def _searcher_replicas(deployment: str = "Searcher0") -> dict[str, int]:
    """A searcher deployment's replica actor names -> their process ids (Serve names replica
    actors ``SERVE_REPLICA::<app>#<deployment>#<id>`` in the "serve" namespace)."""
    import ray

    out = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"#{deployment}#" in actor["name"]:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            out[actor["name"]] = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    return out


def _searcher_names(deployment: str = "Searcher0") -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if f"#{deployment}#" in a["name"]}


def test_overload_is_shed_fast_and_a_hung_searcher_costs_one_deadline(cluster):
    url, root = cluster
    dim = resolve_version(root).dim
    name, victim = sorted(_searcher_replicas().items())[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        def query(i: int) -> tuple[int, float, dict, str]:
            started = time.monotonic()
            response = requests.post(f"{url}/v1/neighbors", json={"embedding": unit(i, dim), "k": 10})
            return (response.status_code, time.monotonic() - started, response.json(),
                    response.headers.get("retry-after", ""))

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            results = list(pool.map(query, range(48)))
        answered = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 503]
        assert answered and len(answered) + len(shed) == len(results)
        assert shed and all(r[2]["field"] == "request" and r[3] for r in shed)
        # a hung searcher replica costs at most one request deadline (3 s), plus scheduling slack
        assert max(r[1] for r in answered) < 3.0 + 5.0
        assert max(r[1] for r in shed) < max(r[1] for r in answered)
        # Serve's health check (a real search) fails on the stopped replica: it is replaced
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and name in _searcher_names():
            time.sleep(2)
        assert name not in _searcher_names()
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_ready(url)
    codes = [requests.post(f"{url}/v1/neighbors", json={"embedding": unit(i, dim), "k": 10}).status_code
             for i in range(20)]
    assert codes == [200] * 20


def test_the_data_plane_answers_as_the_proxy_does_from_every_replica(cluster):
    """Both Router replicas serve the API on one shared data-plane port (no proxy, no actor
    hop): fresh connections reach both, answers equal the proxy's, bad requests get the same
    4xx, edits made there are seen everywhere and a deleted key never comes back."""
    url, root = cluster
    direct = "http://" + requests.get(f"{url}/healthz").json()["data_plane"]
    replicas = {requests.get(f"{direct}/healthz").json()["replica"] for _ in range(40)}
    assert len(replicas) == 2
    dim = resolve_version(root).dim
    probe = unit(77, dim)
    assert neighbour_keys(direct, probe, 10)[0] == neighbour_keys(url, probe, 10)[0]
    refused = requests.post(f"{direct}/v1/neighbors", json={"embedding": probe, "nprobe": -1})
    assert refused.status_code == 422 and refused.json()["field"] == "nprobe"
    item = {"items": [{"key": "direct/one", "label": "Direct", "embedding": probe}]}
    assert requests.post(f"{direct}/v1/memory/items", json=item).status_code == 401
    added = requests.post(f"{direct}/v1/memory/items", headers=auth(), json=item)
    assert added.status_code == 200, added.text
    for base in (direct, url):
        assert all(neighbour_keys(base, probe, 1)[0] == ["direct/one"] for _ in range(20))
    deleted = requests.delete(f"{direct}/v1/memory/items", headers=auth(), json={"keys": ["direct/one"]})
    assert deleted.status_code == 200, deleted.text
    for base in (direct, url):
        assert not any("direct/one" in neighbour_keys(base, probe, 20)[0] for _ in range(20))
