"""An overloaded searcher group: Serve's back-pressure (``max_queued_requests``) on the router's
call to a group is a failed shard (a partial answer, or the API's JSON 503 naming ``shards``
when every group shed it), not a whole request lost to a bare 503. Real Ray Serve on
127.0.0.1, the shipped config with each searcher group allowed one request at a time and one
queued."""
from __future__ import annotations

import concurrent.futures
import re

import pytest
import requests

from indexer.store import resolve_version
from tests.test_consistency import deploy, unit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def narrow(embedded_memory, tmp_path_factory, ray_executor):
    from ray import serve

    one_at_a_time = {"max_ongoing_requests": 1, "max_queued_requests": 1,
                     "ray_actor_options": {"num_cpus": 0.2}}
    yield deploy(embedded_memory, tmp_path_factory.mktemp("overload"),
                 {"max_inflight_requests": 64, "shard_timeout_s": 5.0, "request_deadline_s": 10.0},
                 {"Searcher0": one_at_a_time, "Searcher1": one_at_a_time})
    serve.shutdown()


def _shard_failures(url: str) -> float:
    text = requests.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(r'^vmem_shard_failures_total\{[^}]*\} (\S+)$', text, re.M))


def test_back_pressure_from_a_searcher_group_is_a_failed_shard_not_a_bare_503(narrow):
    url, root = narrow
    dim = resolve_version(root).dim

    def ask(seed: int) -> requests.Response:
        return requests.post(f"{url}/v1/neighbors", json={"embedding": unit(seed, dim), "k": 100},
                             timeout=30)

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(ask, range(96)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)][:3]
    for response in responses:  # Serve's own shedding is a plain-text 503: a JSON body is ours
        assert response.headers["content-type"] == "application/json", (response.status_code, response.text)
        body = response.json()
        if response.status_code == 503:  # every group shed it: the JSON error names the shards
            assert body["field"] == "shards", body
        else:  # a group that shed it is left out, and the answer says so
            assert body["partial"] == (body["shards_answered"] != [0, 1]), body
    shed = sum(r.status_code == 503 or r.json()["partial"] for r in responses)
    assert shed > 0 and _shard_failures(url) > 0  # back-pressure happened (else nothing was tested)
    assert ask(0).json()["shards_answered"] == [0, 1]  # and the groups answer once it is over
