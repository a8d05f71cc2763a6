"""Security of the HTTP API and of evidence read-back (issue 11): admin and read tokens that reach
every replica however `vmem serve` starts, and item sources that cannot point the server at
internal hosts or local files (pipelines/sources/policy.py, serving/auth.py, serving/serve.py)."""
from __future__ import annotations

import http.server
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
import requests
import yaml

from pipelines.sources.policy import SourcePolicy, SourceRefused, input_roots, non_public_reason
from serving.auth import ADMIN, READ, Refused, check_sources, check_token

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ADMIN_TOKEN, READ_TOKEN = "admin-token-not-a-secret", "read-token-not-a-secret"
ALLOWED_ROOT = "https://images.example.com/public/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distinct_ports(count: int) -> list[int]:
    """``count`` free loopback ports, all different: the sockets are held open together (one
    bind-and-release at a time can hand out the same port twice, which Ray refuses)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ---- the source policy (pure) -------------------------------------------------------------

def no_dns(host: str) -> list[str]:
    """A resolver for the tests: two names, the rest unresolvable (no network)."""
    names = {"cdn.example.org": ["93.184.216.34"], "metadata.internal.example": ["169.254.169.254"]}
    if host not in names:
        raise OSError(f"{host}: unknown")
    return names[host]


DEFAULT = SourcePolicy([])
CONFIGURED = SourcePolicy(["gs://bucket/images/", "/data/imgs", "http://10.0.0.5:9000/pub/",
                           "https://images.example.com/public/", "https://"], resolver=no_dns)


@pytest.mark.parametrize("policy, source, reason", [
    # default: nothing but "no source" and the API's synthetic form
    (DEFAULT, "", None),
    (DEFAULT, "api:some/key", None),
    (DEFAULT, "http://127.0.0.1:18095/secret.txt", "loopback"),
    (DEFAULT, "file:///etc/hostname", "local files are refused"),
    (DEFAULT, "/etc/hostname", "local files are refused"),
    (DEFAULT, "gs://bucket/images/a.tar#k.png", "none configured"),
    (DEFAULT, "https://images.example.com/public/a.png", "none configured"),
    (DEFAULT, "images/a.png", "relative path"),
    (DEFAULT, "data:image/png;base64,AAAA", "without '//'"),
    (DEFAULT, "javascript:alert(1)", "without '//'"),
    # configured roots: compared by scheme, host, port and whole path segments
    (CONFIGURED, "gs://bucket/images/shard-0.tar#k.png", None),
    (CONFIGURED, "gs://bucket/images-private/a.png", "not under an allowed source root"),
    (CONFIGURED, "gs://other/images/a.png", "not under an allowed source root"),
    (CONFIGURED, "/data/imgs/cat/1.png", None),
    (CONFIGURED, "file:///data/imgs/cat/1.png", None),
    (CONFIGURED, "/data/imgsX/1.png", "local files are refused"),
    (CONFIGURED, "/data/imgs/../../etc/passwd", "'..'"),
    (CONFIGURED, "/data/imgs/a?/../../../etc/passwd", "'..'"),
    (CONFIGURED, "file://otherhost/data/imgs/a.png", "remote host"),
    (CONFIGURED, "https://images.example.com/public/a.png", None),
    (CONFIGURED, "https://images.example.com:443/public/a.png", None),
    (CONFIGURED, "https://images.example.com/public/%2e%2e/admin", "'..'"),
    (CONFIGURED, "https://images.example.com@127.0.0.1/public/a.png", "user info"),
    (CONFIGURED, "https://user:pw@images.example.com/public/a.png", "user info"),
    (CONFIGURED, "simplecache::https://images.example.com/public/a.png", "chained"),
    (CONFIGURED, "http://10.0.0.5:9000/pub/a.png", None),  # a private host a root names: allowed
    (CONFIGURED, "http://10.0.0.5:9001/pub/a.png", "private"),
    # a scheme-wide root ("https://") still refuses every non-public host, in any spelling
    (CONFIGURED, "https://cdn.example.org/a.png", None),
    (CONFIGURED, "https://localhost/a.png", "loopback"),
    (CONFIGURED, "https://app.localhost/a.png", "loopback"),
    (CONFIGURED, "https://127.0.0.1/a.png", "loopback"),
    (CONFIGURED, "https://127.1/a.png", "loopback"),
    (CONFIGURED, "https://2130706433/a.png", "loopback"),
    (CONFIGURED, "https://0x7f.0.0.1/a.png", "loopback"),
    (CONFIGURED, "https://[::1]/a.png", "loopback"),
    (CONFIGURED, "https://[::ffff:127.0.0.1]/a.png", "loopback"),
    (CONFIGURED, "https://169.254.169.254/latest/meta-data/", "link-local"),
    (CONFIGURED, "https://[fe80::1]/a.png", "link-local"),
    (CONFIGURED, "https://10.1.2.3/a.png", "private"),
    (CONFIGURED, "https://192.168.0.1/a.png", "private"),
    (CONFIGURED, "https://[fd00::1]/a.png", "private"),
    (CONFIGURED, "https://0.0.0.0/a.png", "unspecified"),
    (CONFIGURED, "https://224.0.0.1/a.png", "multicast"),
    (CONFIGURED, "https://100.64.0.1/a.png", "not globally routable"),
    (CONFIGURED, "https://metadata.internal.example/x", "link-local (resolves to 169.254.169.254)"),
    (CONFIGURED, "https://unresolvable.example/x", "unresolvable"),
    (CONFIGURED, "http://cdn.example.org/a.png", "not under an allowed source root"),  # http is not https
    (CONFIGURED, "ftp://cdn.example.org/a.png", "not under an allowed source root"),
])
def test_source_policy(policy, source, reason):
    if reason is None:
        policy.check(source)
        assert policy.allows(source)
    else:
        with pytest.raises(SourceRefused, match=None) as refused:
            policy.check(source)
        assert reason in refused.value.reason and refused.value.source == source
        assert not policy.allows(source)


@pytest.mark.parametrize("root, message", [
    ("images/", "relative path"), ("", "non-empty"), ("https://a.example/x#y", "'#'"),
    ("https://u@a.example/", "user info"), ("/data/../etc", "'..'"),
])
def test_bad_roots_fail_when_configured(root, message):
    from serving.options import ServingOptions

    with pytest.raises(ValueError, match=message):
        SourcePolicy([root])
    with pytest.raises(ValueError, match=message):
        ServingOptions.from_args({"memory": "/m", "allowed_source_roots": [root]})


def test_literal_hosts_are_judged_without_dns():
    def fail(host):
        raise AssertionError(f"resolved {host}")

    assert non_public_reason("LOCALHOST.", fail) == "loopback"
    assert non_public_reason("10.0.0.1", fail) == "private"
    assert non_public_reason("8.8.8.8", fail) is None
    assert non_public_reason("example.com") is None  # no resolver: names are not judged


def test_ingest_inputs_become_roots(tmp_path):
    assert input_roots(["/d/shards/train-{000..001}.tar", "gs://b/x/*.parquet", "/data/tree",
                        "s3://b/{a,b}/part-*.parquet"]) == [
        "/d/shards/train-000.tar", "/d/shards/train-001.tar", "gs://b/x", "/data/tree", "s3://b/a", "s3://b/b"]
    os.chdir(tmp_path)
    try:
        assert input_roots(["rel/*.tar"]) == [str(tmp_path / "rel")]
    finally:
        os.chdir(ROOT)


# ---- evidence read-back --------------------------------------------------------------------

class Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_HEAD(self):
        self.answer(with_body=False)

    def do_GET(self):
        self.answer(with_body=True)

    def answer(self, with_body: bool) -> None:
        Recorder.seen.append(f"{self.command} {self.path}")
        if self.path.startswith("/ok/redirect"):
            self.send_response(302)
            self.send_header("Location", "/secret.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"internal-secret\n" if self.path == "/secret.txt" else b"image-bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def internal_server():
    """An 'internal' HTTP server on 127.0.0.1 that records every request it gets."""
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_read_sources_refuses_outside_its_roots_before_opening_anything(internal_server, tmp_path):
    from pipelines.sources.fetch import read_sources

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"local-secret\n")
    for sources in ([f"{internal_server}/secret.txt"], [f"file://{secret}"], [str(secret)],
                    [f"{tmp_path}/images/ok.png", f"{internal_server}/secret.txt"]):
        with pytest.raises(SourceRefused):
            read_sources(sources, [f"{tmp_path}/images"])
    assert Recorder.seen == []  # not even a HEAD request
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    found = read_sources([f"{tmp_path}/images/a.png", "api:k", ""], [f"{tmp_path}/images"])
    assert found == {f"{tmp_path}/images/a.png": b"png"}  # synthetic sources: nothing to read


def test_read_back_follows_no_redirect_out_of_an_allowed_root(internal_server):
    """Even where a root names an internal host explicitly, a redirect from inside it to a path
    outside it is not followed."""
    from pipelines.sources.fetch import read_sources

    allowed = f"{internal_server}/ok/"
    assert read_sources([f"{internal_server}/ok/a.png"], [allowed]) == {
        f"{internal_server}/ok/a.png": b"image-bytes"}
    found = read_sources([f"{internal_server}/ok/redirect.png"], [allowed])
    assert b"internal-secret" not in found.get(f"{internal_server}/ok/redirect.png", b"")
    assert not any(line.endswith("/secret.txt") for line in Recorder.seen), Recorder.seen


# ---- tokens and roles (pure) -----------------------------------------------------------------

@pytest.mark.parametrize("header, role, admin, read, status", [
    (None, ADMIN, "A", "", 401),
    ("Basic QQ==", ADMIN, "A", "", 401),
    ("Bearer ", ADMIN, "A", "", 401),
    ("Bearer A", ADMIN, "A", "", None),
    ("bearer A", ADMIN, "A", "", None),  # the scheme is case-insensitive (RFC 7235)
    ("Bearer B", ADMIN, "A", "", 403),
    ("Bearer A", ADMIN, "", "", 403),  # no admin token configured: changes disabled
    (None, ADMIN, "", "", 403),  # ... whatever the request carries (no token could work)
    ("Bearer R", ADMIN, "A", "R", 403),  # a read token on a mutation
    ("Bearer R", ADMIN, "", "R", 403),
    ("Bearer tökén", ADMIN, "A", "R", 403),  # non-ASCII: refused, not a 500
    (None, READ, "A", "", None),  # no read token configured: queries are open
    ("Bearer wrong", READ, "A", "", None),
    (None, READ, "A", "R", 401),
    ("Bearer R", READ, "A", "R", None),
    ("Bearer A", READ, "A", "R", None),
    ("Bearer X", READ, "A", "R", 403),
    ("Bearer ", READ, "", "R", 401),
])
def test_token_roles(header, role, admin, read, status):
    if status is None:
        check_token(header, role, admin, read)
    else:
        with pytest.raises(Refused) as refused:
            check_token(header, role, admin, read)
        assert (refused.value.status, refused.value.field) == (status, "Authorization")


def test_sources_are_checked_item_by_item():
    check_sources(["", "api:x", "gs://bucket/images/a.png"], CONFIGURED)
    with pytest.raises(Refused) as refused:
        check_sources(["", "file:///etc/hostname"], CONFIGURED)
    assert (refused.value.status, refused.value.field) == (422, "items.1.source")


def test_vmem_serve_moves_tokens_out_of_the_args_into_the_routers_runtime_env():
    from serving.serve import DEFAULT_CONFIG, deployment_overrides, load_config, token_env_vars

    application = load_config(DEFAULT_CONFIG, "/m", extra_args={"token": "admin-77"})["applications"][0]
    args, env_vars = token_env_vars(application["args"], {"VMEM_READ_TOKEN": "read-88", "PATH": "/bin"})
    assert env_vars == {"VMEM_TOKEN": "admin-77", "VMEM_READ_TOKEN": "read-88"}
    assert "token" not in args and not {"admin-77", "read-88"} & set(yaml.safe_dump(args).split())
    assert application["args"]["token"] == "admin-77"  # the caller's dict is not modified
    overrides = deployment_overrides(application, env_vars, {"working_dir": "gcs://job"})
    router = overrides["Router"]["ray_actor_options"]
    assert router["num_cpus"] == 0.25  # the config's own options are kept
    assert router["runtime_env"] == {"working_dir": "gcs://job", "env_vars": env_vars}
    assert "runtime_env" not in overrides["EncoderDeployment"]["ray_actor_options"]  # only the Router
    application["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    overrides = deployment_overrides(application, {}, {})
    assert overrides["Searcher0"]["ray_actor_options"]["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "1"}}
    assert token_env_vars({"token_env": "MY_TOKEN"}, {"MY_TOKEN": "x", "VMEM_TOKEN": "y"})[1] == {"MY_TOKEN": "x"}


# ---- the real thing: Ray Serve on 127.0.0.1 --------------------------------------------------

@pytest.fixture(scope="module")
def small_memory(tmp_path_factory) -> str:
    """300 synthetic 16-d unit vectors, one exact shard (no encoder needed)."""
    from bench.synthetic import mixture, write_batch
    from indexer.build import BuildConfig, run_build
    from indexer.executor import LocalExecutor

    root = str(tmp_path_factory.mktemp("secured") / "memory")
    write_batch(root, "synthetic", mixture(300, 16, clusters=5, seed=3), parts=1)
    run_build(BuildConfig(root), LocalExecutor())
    return root


def security_config(root: str, port: int, name: str) -> dict:
    from serving.serve import DEFAULT_CONFIG, load_config

    config = load_config(DEFAULT_CONFIG, root, "127.0.0.1", port, {
        "embeddings_only": True, "searcher_groups": 0, "token_env": "VMEM_TEST_ADMIN_TOKEN",
        "read_token_env": "VMEM_TEST_READ_TOKEN", "allowed_source_roots": [ALLOWED_ROOT]},
        data_plane_port=free_port())  # its own: another application may still hold 8001
    config["applications"][0]["name"] = name
    return config


@pytest.fixture(scope="module")
def secured(small_memory, ray_executor):
    """The application with an admin and a read token, served from this process's Ray. The
    tokens are in this (driver) process's environment only while `start` runs, after Ray
    started: a replica can only have them from the runtime_env `start` gives it."""
    from ray import serve

    from serving.serve import start

    port = free_port()
    os.environ.update(VMEM_TEST_ADMIN_TOKEN=ADMIN_TOKEN, VMEM_TEST_READ_TOKEN=READ_TOKEN)
    try:
        start(security_config(small_memory, port, "visual-memory-security"))
    finally:
        del os.environ["VMEM_TEST_ADMIN_TOKEN"], os.environ["VMEM_TEST_READ_TOKEN"]
    yield f"http://127.0.0.1:{port}", small_memory
    serve.shutdown()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def query(root: str) -> dict:
    from tests.indexer_helpers import load_embeddings

    return {"embedding": load_embeddings(root)[1][0].tolist(), "k": 3}


@pytest.mark.slow
def test_read_and_admin_roles_over_http(secured):
    url, root = secured
    assert requests.get(f"{url}/healthz").status_code == 200  # open
    assert requests.get(f"{url}/metrics").status_code == 200
    body = query(root)
    batch = {"queries": [body]}
    for method, path, payload in [("POST", "/v1/neighbors", body), ("POST", "/v1/classify", body),
                                  ("POST", "/v1/classify/batch", batch),
                                  ("POST", "/v1/neighbors/batch", batch), ("GET", "/v1/memory", None)]:
        none = requests.request(method, url + path, json=payload)
        wrong = requests.request(method, url + path, json=payload, headers=bearer("nope"))
        assert (none.status_code, none.json()["field"]) == (401, "Authorization"), (path, none.text)
        assert (wrong.status_code, wrong.json()["field"]) == (403, "Authorization"), path
        assert set(wrong.json()) == {"error", "field"}
        for token in (READ_TOKEN, ADMIN_TOKEN):
            assert requests.request(method, url + path, json=payload, headers=bearer(token)).status_code == 200, path
    assert requests.post(f"{url}/v1/classify/image", data=b"x").status_code == 401

    for token, status in [(None, 401), ("nope", 403), (READ_TOKEN, 403), (ADMIN_TOKEN, 200)]:
        headers = bearer(token) if token else {}
        reload = requests.post(f"{url}/v1/memory/reload", headers=headers)
        assert reload.status_code == status, (token, reload.text)
        forget = requests.delete(f"{url}/v1/memory/items", json={"keys": ["no-such-key"]}, headers=headers)
        assert (forget.status_code not in (401, 403)) if status == 200 else forget.status_code == status, \
            (token, forget.text)
        add = requests.post(f"{url}/v1/memory/items", headers=headers,
                            json={"items": [{"key": "k", "label": "l", "image_base64": "AAAA"}]})
        # the admin gets past the token to the next check: this memory takes no images
        assert (add.status_code, add.json()["field"]) == ((422, "items.0.image_base64") if status == 200
                                                          else (status, "Authorization"))
    assert requests.post(f"{url}/v1/memory/reload", headers=bearer(READ_TOKEN)).json()["error"].startswith(
        "a read-only token")

    # A body that is not JSON (or not valid for its route) is checked for its token first, as
    # any other request: only a caller the route admits learns what is wrong with its body.
    json_header = {"Content-Type": "application/json"}
    for path, role_token in [("/v1/classify", READ_TOKEN), ("/v1/memory/items", ADMIN_TOKEN)]:
        for token, status in [(None, 401), ("nope", 403), (role_token, 400)]:
            headers = {**json_header, **(bearer(token) if token else {})}
            broken = requests.post(url + path, data='{"k": 3,', headers=headers)
            assert (broken.status_code, broken.json()["field"]) == (
                status, "body" if status == 400 else "Authorization"), (path, token, broken.text)
    unfit = requests.post(f"{url}/v1/memory/items", json={"items": "none"}, headers=bearer(READ_TOKEN))
    assert (unfit.status_code, unfit.json()["field"]) == (403, "Authorization"), unfit.text


@pytest.mark.slow
def test_an_ssrf_source_is_refused_with_422_naming_the_field(secured):
    url, _ = secured

    def add(*sources: str) -> requests.Response:
        items = [{"key": f"k{i}", "label": "l", "image_base64": "AAAA", "source": s} for i, s in enumerate(sources)]
        return requests.post(f"{url}/v1/memory/items", json={"items": items}, headers=bearer(ADMIN_TOKEN))

    for sources, field in [(["", "http://127.0.0.1:18095/secret.txt"], "items.1.source"),
                           (["file:///etc/hostname"], "items.0.source"),
                           (["https://169.254.169.254/latest/meta-data/"], "items.0.source"),
                           ([f"{ALLOWED_ROOT}a.png", "https://images.example.com/private/a.png"], "items.1.source")]:
        response = add(*sources)
        assert (response.status_code, response.json()["field"]) == (422, field), response.text
        assert "refused" in response.json()["error"]
    allowed = add("", "api:k1", f"{ALLOWED_ROOT}cats/a.png")  # past the source check
    assert (allowed.status_code, allowed.json()["field"]) == (422, "items.0.image_base64")


# ---- a cluster started separately (the X4 case) -----------------------------------------------

def wait_until(check, seconds: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} not ready after {seconds:.0f} s\n{tail}")


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_the_token_reaches_a_replica_on_a_cluster_started_separately(small_memory, tmp_path):
    """`ray start --head` with an environment that has no token, then `vmem serve --ray-address`
    with the tokens in its own environment only: the right tokens are accepted (issue 11, X4)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VMEM_", "RAY_ADDRESS"))}
    # the test cluster's own Ray token (Ray >= 2.5x enables token auth for `ray start`), so that
    # ~/.ray/auth_token is neither read nor written
    clean.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token",
                 RAY_AUTH_TOKEN=secrets.token_hex(32))
    names = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")
    gcs, http_port, *numbers = distinct_ports(2 + len(names))
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short (socket paths) and private to this test
    ports = {f"--{name}": port for name, port in zip(names, numbers)}
    head_log, serve_log = tmp_path / "head.log", tmp_path / "serve.log"
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={gcs}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}",
                             *[f"{flag}={port}" for flag, port in ports.items()]],
                            env=clean, cwd=tmp_path, stdout=head_log.open("w"), stderr=subprocess.STDOUT)
    server = None
    try:
        config = tmp_path / "serve.yaml"
        config.write_text(yaml.safe_dump(security_config(small_memory, http_port, "visual-memory-x4")))
        wait_until(lambda: "Ray runtime started" in head_log.read_text(), 60, "ray start --head", head, head_log)
        server = subprocess.Popen([str(BIN / "vmem"), "serve", "--config", str(config),
                                   "--ray-address", f"127.0.0.1:{gcs}"],
                                  env={**clean, "VMEM_TEST_ADMIN_TOKEN": ADMIN_TOKEN,
                                       "VMEM_TEST_READ_TOKEN": READ_TOKEN},
                                  cwd=tmp_path, stdout=serve_log.open("w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200, 150,
                   "vmem serve", server, serve_log)
        assert requests.post(f"{url}/v1/memory/reload", headers=bearer(ADMIN_TOKEN)).status_code == 200
        assert requests.post(f"{url}/v1/memory/reload", headers=bearer(READ_TOKEN)).status_code == 403
        assert requests.get(f"{url}/v1/memory").status_code == 401  # the read token is there too
        assert requests.get(f"{url}/v1/memory", headers=bearer(READ_TOKEN)).status_code == 200
    finally:
        if server is not None:
            stop(server)
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)
