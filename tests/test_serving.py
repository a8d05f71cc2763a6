"""Ray Serve on 127.0.0.1 with the packaged Serve config, over a real memory of real images."""
from __future__ import annotations

import base64
import concurrent.futures
import json
import shutil
import socket
import time

import pytest
import requests

from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, run_delete
from indexer.executor import LocalExecutor
from indexer.search import ShardedIndex
from indexer.store import resolve_version
from serving.aggregation import Aggregator
from serving.answers import answer, merge_answers
from serving.decision import decide
from tests.conftest import encode, photo
from tests.indexer_helpers import brute_force, load_embeddings

TOKEN = "test-token-not-a-secret"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(embedded_memory, tmp_path_factory, ray_executor):
    from ray import serve

    from serving.serve import DEFAULT_CONFIG, load_config, start

    root = str(tmp_path_factory.mktemp("served") / "memory")
    shutil.copytree(embedded_memory / "memory", root)
    run_build(BuildConfig(root, num_shards=2), LocalExecutor())
    port = free_port()
    config = load_config(DEFAULT_CONFIG, root, "127.0.0.1", port, {"token": TOKEN, "searcher_groups": 2})
    start(config)
    url = f"http://127.0.0.1:{port}"
    yield url, root
    serve.shutdown()


def test_binds_loopback_by_default():
    from serving.serve import DEFAULT_CONFIG, load_config

    assert load_config(DEFAULT_CONFIG)["http_options"]["host"] == "127.0.0.1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fmnist_png(embedded_memory, index: int = 0) -> tuple[bytes, str]:
    """A held-out test image (PNG bytes) and its label."""
    from pipelines.data.fashion_mnist import CLASSES, load_split, png

    images, labels = load_split("test")
    return png(images[index]), CLASSES[labels[index]]


def test_classify_an_image_returns_the_evidence(server, embedded_memory):
    url, _ = server
    data, _ = fmnist_png(embedded_memory)
    body = requests.post(f"{url}/v1/classify", json={"image_base64": b64(data), "k": 15}).json()
    assert body["shards_answered"] == [0, 1] and body["partial"] is False and body["k"] == 15
    assert body["aggregator"] == "rank" and body["parameter"] == 2.0
    neighbours = body["neighbours"]
    assert len(neighbours) == 15 and [n["rank"] for n in neighbours] == list(range(15))
    assert all(n["key"].startswith("train-") and n["source"].endswith(".png") for n in neighbours)
    assert neighbours[0]["vote"] == pytest.approx(0.5) and neighbours[1]["vote"] == pytest.approx(1 / 3)
    assert body["label"] in body["scores"] and 0 < body["confidence"] <= 1
    distances = [n["distance"] for n in neighbours]
    assert distances == sorted(distances)
    raw = requests.post(f"{url}/v1/classify/image?k=15", data=data,
                        headers={"Content-Type": "image/png"}).json()
    assert [n["id"] for n in raw["neighbours"]] == [n["id"] for n in neighbours]


def test_query_by_an_item_of_the_memory(server):
    """``item_id`` (a number, or a decimal string as a browser sends a 64-bit id) or
    ``item_key``: the item's stored embedding is the query, so the item comes back first and
    the neighbours equal brute force with its vector."""
    from pipelines.manifest import list_batches, read_embeddings

    url, root = server
    ids, vectors, _ = load_embeddings(root)
    keys = [k for b in list_batches(root) for k in read_embeddings(root, b).column("key").to_pylist()]
    row = 17
    expected = brute_force(ids, vectors, vectors[row:row + 1], 6)[1][0].tolist()
    for query in ({"item_id": int(ids[row])}, {"item_id": str(ids[row])}, {"item_key": keys[row]}):
        body = requests.post(f"{url}/v1/neighbors", json={**query, "k": 6}).json()
        assert [n["id"] for n in body["neighbours"]] == expected and expected[0] == ids[row], query
    missing = requests.post(f"{url}/v1/classify", json={"item_id": 12345})
    assert missing.status_code == 404 and missing.json()["field"] == "item_id"
    both = requests.post(f"{url}/v1/classify", json={"item_key": keys[row], "embedding": [0.1] * 4})
    assert both.status_code == 422 and both.json()["field"] == "item_key"


def test_fan_out_equals_one_index_and_the_in_process_decision(server, embedded_memory):
    url, root = server
    ids, vectors, _ = load_embeddings(root)
    queries = load_embeddings(str(embedded_memory / "queries"))[1][:8]
    batch = {"queries": [{"embedding": q.tolist(), "k": 25, "aggregator": "softmax"} for q in queries]}
    results = requests.post(f"{url}/v1/classify/batch", json=batch).json()["results"]
    _, exact_ids = brute_force(ids, vectors, queries, 25)
    manifest = resolve_version(root)
    index = ShardedIndex(root, manifest)
    merged = merge_answers([answer(s, queries, 25) for s in index.shards], 25)
    expected = decide(merged.ids, merged.scores, merged.meta, Aggregator("softmax"))
    for result, exact, reference in zip(results, exact_ids, expected):
        assert [n["id"] for n in result["neighbours"]] == exact.tolist()
        assert result["label"] == reference.label
        assert result["scores"] == pytest.approx(reference.scores, rel=1e-4)


def test_rerank_reorders_the_same_neighbours_as_the_in_process_reranker(server, embedded_memory):
    from serving.rerank import make_reranker, rerank_answer

    url, root = server
    queries = load_embeddings(str(embedded_memory / "queries"))[1][:4]
    batch = {"queries": [{"embedding": q.tolist(), "k": 30, "rerank": "prototype"} for q in queries]}
    results = requests.post(f"{url}/v1/classify/batch", json=batch).json()["results"]
    index = ShardedIndex(root, resolve_version(root))
    merged = merge_answers([answer(s, queries, 30, with_vectors=True) for s in index.shards], 30)
    expected = rerank_answer(make_reranker("prototype"), queries, merged)
    for i, result in enumerate(results):
        assert result["reranked_by"] == "prototype"
        assert [n["id"] for n in result["neighbours"]] == expected.ids[i].tolist()
        assert sorted(expected.ids[i]) == sorted(merged.ids[i])  # re-ordered, not re-retrieved


def test_neighbors_endpoint_has_no_votes(server):
    url, root = server
    vector = load_embeddings(root)[1][0]
    body = requests.post(f"{url}/v1/neighbors", json={"embedding": vector.tolist(), "k": 3}).json()
    assert "label" not in body and len(body["neighbours"]) == 3
    assert "vote" not in body["neighbours"][0] and body["neighbours"][0]["distance"] == pytest.approx(0, abs=1e-5)
    batch = requests.post(f"{url}/v1/neighbors/batch",
                          json={"queries": [{"embedding": vector.tolist(), "k": 2}] * 2}).json()
    assert len(batch["results"]) == 2


def test_unknown_below_the_evidence_threshold(server, embedded_memory):
    url, _ = server
    data, _ = fmnist_png(embedded_memory, 3)
    body = requests.post(f"{url}/v1/classify", json={"image_base64": b64(data), "unknown_below": 1.01}).json()
    assert body["label"] == "unknown" and body["scores"]


@pytest.mark.parametrize("payload, status, field", [
    ({"embedding": [0.1] * 5}, 422, "embedding"),
    ({"embedding": [float("nan")] * 1280}, 422, "embedding"),
    ({"embedding": [float("inf")] + [1.0] * 1279}, 422, "embedding"),
    ({"embedding": [0.1] * 1280, "nprobe": -1}, 422, "nprobe"),
    ({"embedding": [0.1] * 1280, "nprobe": 0}, 422, "nprobe"),
    ({"embedding": [0.0] * 1280}, 422, "embedding"),
    ({"image_base64": "***"}, 422, "image_base64"),
    ({"image_base64": b64(b"not an image at all" * 10)}, 422, "image_base64"),
    ({}, 422, "image_base64"),
    ({"embedding": [0.1] * 1280, "k": 0}, 422, "k"),
    ({"embedding": [0.1] * 1280, "k": 5000}, 422, "k"),
    ({"embedding": [0.1] * 1280, "aggregator": "median"}, 422, "aggregator"),
    ({"embedding": [0.1] * 1280, "aggregator": "rank", "parameter": 0}, 422, "aggregator"),
    ({"embedding": "abc"}, 422, "embedding"),
    ({"embedding": [0.1] * 1280, "rerank": "gemini"}, 422, "rerank"),
    ({"embedding": [0.1] * 1280, "kk": 5}, 422, "kk"),  # a mistyped option is not ignored
    ({"embedding": [0.1] * 1280, "min_version": "nope"}, 422, "min_version"),  # not a version name
])
def test_bad_requests_get_a_4xx_naming_the_field(server, payload, status, field):
    url, _ = server
    response = requests.post(f"{url}/v1/classify", data=json.dumps(payload),  # NaN as clients send it
                             headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


def test_requests_that_are_not_json_or_not_routes_get_json_errors(server):
    url, _ = server
    broken = requests.post(f"{url}/v1/classify", data='{"k": 10,', headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["field"] == "body", broken.text
    assert "not valid JSON" in broken.json()["error"]
    missing = requests.get(f"{url}/v1/nothing-here")
    assert missing.status_code == 404 and set(missing.json()) == {"error", "field"}
    wrong_method = requests.get(f"{url}/v1/classify")
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error", "field"}
    image = requests.post(f"{url}/v1/classify/image?k=5&kk=3", data=b"\x89PNG")
    assert image.status_code == 422 and image.json()["field"] == "kk", image.text
    for to in ("../../etc", "nope"):  # a version name from outside never becomes a path
        refused = requests.post(f"{url}/v1/memory/rollback", json={"to": to}, headers=auth())
        assert refused.status_code == 422 and refused.json()["field"] == "to", refused.text
    unknown = requests.post(f"{url}/v1/memory/rollback", json={"to": "20000101T000000000-abcdef"}, headers=auth())
    assert unknown.status_code == 404 and unknown.json()["field"] == "to", unknown.text


def test_embeddings_are_directions_whatever_their_scale(server):
    """1e20s, 1e-23s and 1e39s are the direction of ones (scaled before the norm, float64);
    a single huge component is that axis. Never a zero query."""
    url, _ = server
    ones = requests.post(f"{url}/v1/neighbors", json={"embedding": [1.0] * 1280, "k": 5}).json()
    for scale in (1e20, 1e-23, 1e39):
        got = requests.post(f"{url}/v1/neighbors", json={"embedding": [scale] * 1280, "k": 5})
        assert got.status_code == 200, got.text
        assert [n["id"] for n in got.json()["neighbours"]] == [n["id"] for n in ones["neighbours"]]
    axis = requests.post(f"{url}/v1/neighbors", json={"embedding": [1.0] + [0.0] * 1279, "k": 5}).json()
    huge = requests.post(f"{url}/v1/neighbors", json={"embedding": [3e38] + [0.0] * 1279, "k": 5}).json()
    assert [n["id"] for n in huge["neighbours"]] == [n["id"] for n in axis["neighbours"]]
    assert min(n["distance"] for n in axis["neighbours"]) < 1.0  # a real direction, not zero


def test_chunked_bodies_over_the_limit_get_413(server):
    """The size limit holds without Content-Length: a chunked body is counted as it arrives."""
    url, _ = server

    def chunks():
        for _ in range(22):
            yield b" " * (1024 * 1024)

    response = requests.post(f"{url}/v1/classify", data=chunks(),
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"
    small = requests.post(f"{url}/v1/classify", data=iter([b'{"embedding": ', b"[1.0]}"]),
                          headers={"Content-Type": "application/json"})
    assert small.status_code == 422 and small.json()["field"] == "embedding"  # parsed, not refused


def test_limits_on_body_size_pixels_and_batch(server):
    url, _ = server
    huge = requests.post(f"{url}/v1/classify", data=b"x" * (21 * 1024 * 1024),
                         headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["field"] == "body"
    from PIL import Image

    big = encode(Image.new("L", (8000, 6000)), "PNG")  # 48 MP > 40 MP limit, a small file
    response = requests.post(f"{url}/v1/classify", json={"image_base64": b64(big)})
    assert response.status_code == 422 and "exceeds the limit" in response.json()["error"]
    too_many = requests.post(f"{url}/v1/classify/batch", json={"queries": [{"embedding": [1.0] * 1280}] * 257})
    assert too_many.status_code == 422 and too_many.json()["field"] == "queries"


def test_mutating_endpoints_need_the_token(server):
    url, _ = server
    item = {"items": [{"key": "x", "label": "y", "image_base64": b64(encode(photo("coffee.png"), "PNG"))}]}
    assert requests.post(f"{url}/v1/memory/items", json=item).status_code == 401
    wrong = requests.post(f"{url}/v1/memory/items", json=item, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["field"] == "Authorization"
    assert requests.delete(f"{url}/v1/memory/items", json={"keys": ["x"]}).status_code == 401
    assert requests.post(f"{url}/v1/memory/reload").status_code == 401
    # the token is checked before the body: without it, a bad body learns nothing either
    assert requests.delete(f"{url}/v1/memory/items", json={"kk": ["x"]}).status_code == 401
    assert requests.post(f"{url}/v1/memory/rollback", json={"to": "../x"}).status_code == 401


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_ids_outside_int64_get_a_422_naming_the_field(server):
    """Ids are 63-bit and never negative: one outside (a JSON number or a decimal string) is
    refused naming the field, not a 500 from numpy's int64 ("Python int too large")."""
    url, _ = server
    for value in (99999999999999999999999, 2**63, str(2**63), -1):
        forget = requests.delete(f"{url}/v1/memory/items", headers=auth(), json={"ids": [value]})
        assert forget.status_code == 422 and forget.json()["field"] == "ids.0", forget.text
        query = requests.post(f"{url}/v1/classify", json={"item_id": value})
        assert query.status_code == 422 and query.json()["field"] == "item_id", query.text
    batch = requests.post(f"{url}/v1/neighbors/batch", json={"queries": [{"item_id": 2**63}]})
    assert batch.status_code == 422 and batch.json()["field"] == "queries.0.item_id", batch.text
    largest = requests.post(f"{url}/v1/classify", json={"item_id": str(2**63 - 1)})
    assert largest.status_code == 404 and largest.json()["field"] == "item_id"  # valid, not held


def test_online_add_then_delete_is_read_your_writes(server):
    url, _ = server
    cup = encode(photo("coffee.png"), "PNG")
    before = requests.get(f"{url}/v1/memory").json()
    added = requests.post(f"{url}/v1/memory/items", headers=auth(), json={"items": [
        {"key": "online/coffee", "label": "Coffee cup", "image_base64": b64(cup)}]}).json()
    assert added["added"] == 1 and added["size"] == before["size"] + 1
    found = requests.post(f"{url}/v1/classify", json={"image_base64": b64(cup), "k": 5}).json()
    assert found["version"] == added["version"]
    assert found["neighbours"][0]["key"] == "online/coffee" and found["neighbours"][0]["distance"] < 1e-4
    memory = requests.get(f"{url}/v1/memory").json()
    assert memory["classes"]["Coffee cup"] == 1 and memory["version"] == added["version"]

    forgotten = requests.delete(f"{url}/v1/memory/items", headers=auth(),
                                json={"keys": ["online/coffee"]}).json()
    assert forgotten["removed"] == 1 and forgotten["size"] == before["size"]
    for _ in range(20):
        body = requests.post(f"{url}/v1/classify", json={"image_base64": b64(cup), "k": 50}).json()
        assert "online/coffee" not in [n["key"] for n in body["neighbours"]]
    missing = requests.delete(f"{url}/v1/memory/items", headers=auth(), json={"keys": ["online/coffee"]})
    assert missing.status_code == 404


def test_reload_under_concurrent_queries_fails_nothing(server):
    url, root = server
    vectors = load_embeddings(root)[1][:20]

    def query(i: int) -> tuple[int, str]:
        response = requests.post(f"{url}/v1/classify", json={"embedding": vectors[i % 20].tolist(), "k": 10})
        return response.status_code, response.json().get("version", "")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(query, i) for i in range(120)]
        run_delete(root, ForgetRequest(labels=["Sandal"]), LocalExecutor())  # a new LATEST
        reloaded = requests.post(f"{url}/v1/memory/reload", headers=auth()).json()
        futures += [pool.submit(query, i) for i in range(60)]
        results = [f.result() for f in futures]
    assert {status for status, _ in results} == {200}
    assert reloaded["version"] == resolve_version(root).version
    assert results[-1][1] == reloaded["version"]


def test_a_killed_shard_replica_recovers_and_answers_stay_honest(server):
    import ray

    url, root = server
    vector = load_embeddings(root)[1][0].tolist()
    replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                   if "Searcher1" in a["name"] and "REPLICA" in a["name"].upper())
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    seen_partial, deadline, complete_again = False, time.monotonic() + 90, False
    while time.monotonic() < deadline:
        response = requests.post(f"{url}/v1/classify", json={"embedding": vector, "k": 10})
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:
            body = response.json()
            assert body["partial"] == (body["shards_answered"] != [0, 1])
            seen_partial |= body["partial"]
            if not body["partial"]:
                complete_again = True
                break
        time.sleep(0.5)
    assert complete_again  # Serve replaced the replica; answers are complete again


def test_health_metrics_and_openapi(server):
    url, _ = server
    assert requests.get(f"{url}/healthz").json()["status"] == "ok"
    metrics = requests.get(f"{url}/metrics").text
    assert "vmem_queries_total" in metrics and "vmem_query_latency_seconds_bucket" in metrics
    assert "vmem_shards_answered_bucket" in metrics
    assert all(f'vmem_stage_seconds_count{{stage="{s}"}}' in metrics for s in ("embed", "search", "decide"))
    spec = requests.get(f"{url}/openapi.json").json()
    assert "/v1/classify" in spec["paths"] and "/v1/memory/items" in spec["paths"]


# ---- the Python client (vmem/client.py) against the same server ------------------------------
def test_client_answers_equal_the_http_api_typed(server, embedded_memory, tmp_path):
    from vmem.client import Answer, MemoryClient

    url, _ = server
    data, _ = fmnist_png(embedded_memory, 3)
    path = tmp_path / "query.png"
    path.write_bytes(data)
    raw = requests.post(f"{url}/v1/classify", json={"image_base64": b64(data), "k": 9}).json()
    with MemoryClient(url) as client:
        answer = client.classify(path, k=9)  # a path, read by the client
        assert isinstance(answer, Answer) and answer.label == raw["label"] and answer.k == 9
        assert [n.id for n in answer.neighbours] == [n["id"] for n in raw["neighbours"]]
        assert answer.neighbours[0].vote == pytest.approx(raw["neighbours"][0]["vote"])
        assert answer.shards_answered == [0, 1] and not answer.partial
        near = client.neighbors(data, k=4)  # bytes; no vote
        assert [n.id for n in near.neighbours] == [n["id"] for n in raw["neighbours"][:4]]
        assert near.label is None and near.neighbours[0].vote is None
        many = client.classify_many([data, path, data], k=9)  # batched
        assert [a.label for a in many] == [raw["label"]] * 3
        assert client.memory()["shards"] == 2


def test_client_errors_carry_the_field(server, embedded_memory):
    from vmem.client import ApiError, MemoryClient

    url, _ = server
    data, _ = fmnist_png(embedded_memory)
    client = MemoryClient(url, retries=0)
    with pytest.raises(ApiError) as bad_k:
        client.classify(data, k=0)
    assert bad_k.value.status == 422 and bad_k.value.field == "k"
    with pytest.raises(ApiError) as no_token:
        client.forget(keys=["whatever"])
    assert no_token.value.status == 401
    with pytest.raises(ValueError, match="keys are required"):
        client.add([data], ["Coat"])


def test_client_edits_versions_and_a_rollback_that_keeps_unlearned_items_forgotten(server):
    from vmem.client import MemoryClient

    url, _ = server
    cup = encode(photo("coffee.png"), "PNG")
    client = MemoryClient(url, token=TOKEN)
    [added] = client.add([cup], ["Coffee cup"], keys=["client/coffee"])
    answer = client.classify(cup, k=3, min_version=added.version)
    assert answer.version == added.version and answer.neighbours[0].key == "client/coffee"
    forgotten = client.forget(keys=["client/coffee"])
    assert forgotten.details["removed"] == 1 and forgotten.size == added.size - 1
    memory = client.memory()
    assert memory["tombstoned"] >= 1 and memory["segments"] >= memory["shards"]
    history = client.versions()
    names = [v.version for v in history]  # the Writer's background compaction may come after
    assert names.index(added.version) < names.index(forgotten.version) and history[-1].latest
    deleted = history[names.index(forgotten.version)]
    assert deleted.operation == "delete" and deleted.parent == added.version
    back = client.rollback(to=added.version)  # the add's files, but the cup stays forgotten
    assert back.version > forgotten.version and back.details["rolled_back_to"] == added.version
    assert back.size == forgotten.size and back.details["forgotten_tombstoned"] == 1
    again = client.classify(cup, k=50, min_version=back.version)
    assert again.version == back.version and "client/coffee" not in [n.key for n in again.neighbours]
    from vmem.client import ApiError

    with pytest.raises(ApiError) as refused:  # deletions are permanent: not under the same key
        client.add([cup], ["Coffee cup"], keys=["client/coffee"])
    assert (refused.value.status, refused.value.field) == (409, "items")
    assert "unlearned" in refused.value.message and client.memory()["size"] == back.size


def test_client_retries_503_honouring_retry_after():
    """A loopback server that sheds the first two requests (503, Retry-After: 0)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from vmem.client import ApiError, MemoryClient

    calls = []

    class Shedding(BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append(self.path)
            status, body = (503, b'{"error": "busy", "field": "memory"}') if len(calls) <= 2 else (
                200, b'{"version": "v1", "size": 3}')
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Shedding)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert MemoryClient(url, retries=3, backoff_s=0).memory() == {"version": "v1", "size": 3}
        assert len(calls) == 3
        calls.clear()
        with pytest.raises(ApiError) as shed:
            MemoryClient(url, retries=1, backoff_s=0).memory()
        assert shed.value.status == 503 and shed.value.field == "memory" and len(calls) == 2
    finally:
        httpd.shutdown()
