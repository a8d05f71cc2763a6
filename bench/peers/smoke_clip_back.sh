#!/usr/bin/env bash
# Smoke test of the clip back peer (not part of the test suite): build a 5,000 x 512 IVF index
# and a 2,000 x 384 Flat index with metadata, serve both with clip back on 127.0.0.1 (no CLIP
# model), send embedding queries to /knn-service, check ids and metadata, stop the server.
# Then once more with a random-weight open_clip ViT-S-32 (384-d), the index memory-mapped, and a
# text query. SMOKE_MODEL=0 skips that second part.
#
#   bash bench/peers/smoke_clip_back.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
bash "$HERE/setup_clip_back.sh"
PY="$HERE/../.venv-clip-back/bin/python"
WORK="$(mktemp -d /tmp/clip-back-smoke.XXXXXX)"
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1   # keep this light on a shared 2-core machine

echo "== building indices in $WORK"
(cd "$ROOT" && "$PY" - "$WORK" <<'EOF'
import sys, numpy as np, faiss, pyarrow as pa
from bench.peers.clip_back import prepare_index_folder
work = sys.argv[1]
rng = np.random.default_rng(0)

def unit(n, d):
    x = rng.standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)

def table(n, prefix):
    return pa.table({"url": [f"https://example.invalid/{prefix}/{i}.jpg" for i in range(n)],
                     "caption": [f"{prefix} item {i}" for i in range(n)],
                     "label": pa.array([i % 10 for i in range(n)], pa.int64())})

x512 = unit(5000, 512)
ivf = faiss.index_factory(512, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
ivf.train(x512); ivf.add(x512)
prepare_index_folder(f"{work}/ivf512", ivf, table(5000, "ivf512"), nprobe=8)
x384 = unit(2000, 384)
flat = faiss.IndexFlatIP(384); flat.add(x384)
faiss.write_index(flat, f"{work}/flat384.faiss")
prepare_index_folder(f"{work}/flat384", f"{work}/flat384.faiss", table(2000, "flat384"))
np.save(f"{work}/x512.npy", x512); np.save(f"{work}/x384.npy", x384)
print("ivf512: ntotal", ivf.ntotal, "nprobe saved", faiss.read_index(f"{work}/ivf512/image.index").nprobe,
      "| flat384: ntotal", flat.ntotal)
EOF
)
(cd "$WORK" && find ivf512 flat384 -type f -printf '%p %s bytes\n' | sort)

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_server() {  # extra args go to clip_back.py
    PORT="$(free_port)"
    echo "== starting: clip_back.py --index-folder WORK/ivf512 --port $PORT --extra-index flat384=WORK/flat384 $*"
    "$PY" "$HERE/clip_back.py" --index-folder "$WORK/ivf512" --name ivf512 --port "$PORT" \
        --extra-index "flat384=$WORK/flat384" --omp-threads 1 "$@" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local started=$SECONDS
    until curl -sf "http://127.0.0.1:$PORT/indices-list" >/dev/null 2>&1; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log"; echo "server died" >&2; exit 1; fi
        if (( SECONDS - started > 300 )); then cat "$WORK/server.log"; echo "server not up" >&2; exit 1; fi
        sleep 1
    done
    echo "up after $((SECONDS - started)) s; indices-list: $(curl -s "http://127.0.0.1:$PORT/indices-list")"
    echo "listening sockets of the server:"; ss -ltnp 2>/dev/null | grep "pid=$SERVER_PID," | awk '{print "  " $4}' || true
}

start_server
"$PY" - "$WORK" "$PORT" <<'EOF'
import json, sys, urllib.request, urllib.error, numpy as np
work, port = sys.argv[1], sys.argv[2]
url = f"http://127.0.0.1:{port}"
def post(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:200]

rng = np.random.default_rng(1)
x512, x384 = np.load(f"{work}/x512.npy"), np.load(f"{work}/x384.npy")
ok = True
for target in (0, 1234, 4999):
    q = x512[target] + 0.01 * rng.standard_normal(512).astype("float32")
    body = {"embedding_input": (q / np.linalg.norm(q)).tolist(), "modality": "image",
            "num_images": 3, "indice_name": "ivf512"}
    status, res = post("/knn-service", body)
    shown = dict(body, embedding_input=f"[{len(body['embedding_input'])} floats]")
    print("POST /knn-service", json.dumps(shown), "->", status)
    print("   ", json.dumps(res))
    good = status == 200 and res and res[0]["id"] == target and res[0]["caption"] == f"ivf512 item {target}" \
        and res[0]["label"] == target % 10 and res[0]["similarity"] > 0.9 and len(res) == 3
    ok &= bool(good)
    print("    top-1 is the perturbed vector:", good)

q = x384[42]
status, res = post("/knn-service", {"embedding_input": q.tolist(), "modality": "image",
                                    "num_images": 2, "indice_name": "flat384"})
print("384-d query to flat384 ->", status, json.dumps(res))
ok &= status == 200 and res[0]["id"] == 42
status, res = post("/knn-service", {"embedding_input": q.tolist(), "modality": "image",
                                    "num_images": 2, "indice_name": "ivf512"})
print("384-d query to ivf512 (d=512) ->", status, str(res)[:120].replace("\n", " "))
ok &= status == 500
status, res = post("/knn-service", {"text": "a cat", "modality": "image", "num_images": 2,
                                    "indice_name": "ivf512"})
print("text query without a model ->", status)
ok &= status == 500
status, res = post("/metadata", {"ids": [7, 4999], "indice_name": "ivf512"})
print("POST /metadata {'ids': [7, 4999], 'indice_name': 'ivf512'} ->", status, json.dumps(res))
ok &= status == 200 and res[1]["metadata"]["url"].endswith("/4999.jpg")
print("no-model checks:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
ps -o rss=,etimes= -p "$SERVER_PID" | awk '{printf "server RSS %.0f MiB\n", $1/1024}'
stop_server
echo "server stopped"

if [ "${SMOKE_MODEL:-1}" != "0" ]; then
    start_server --mmap --clip-model open_clip:ViT-S-32
    grep -iE "warming|random|open_clip|listening" "$WORK/server.log" | head -5 || true
    "$PY" - "$WORK" "$PORT" <<'EOF'
import json, sys, urllib.request, numpy as np
work, port = sys.argv[1], sys.argv[2]
def post(body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/knn-service", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())
status, res = post({"text": "a photo of a cat", "modality": "image", "num_images": 2,
                    "indice_name": "flat384"})
print("text query (random ViT-S-32, 384-d) to flat384 ->", status, json.dumps(res))
x512 = np.load(f"{work}/x512.npy")
status, res2 = post({"embedding_input": x512[77].tolist(), "modality": "image", "num_images": 1,
                     "indice_name": "ivf512", "deduplicate": True})
print("512-d embedding (mmapped IVF, deduplicate) ->", status, json.dumps(res2))
ok = status == 200 and len(res) == 2 and res2[0]["id"] == 77
print("model checks:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
    ps -o rss= -p "$SERVER_PID" | awk '{printf "server RSS %.0f MiB\n", $1/1024}'
    stop_server
    echo "server stopped"
fi
echo "SMOKE OK"
