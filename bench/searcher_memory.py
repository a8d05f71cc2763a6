"""Heap vs page cache of one searcher: anonymous and file-backed RSS of a fresh process that
loads shard 0 of a memory and answers 150 queries (k = 100), per vector.

    python bench/searcher_memory.py     # builds /tmp/anon/mem (200k x 384, IVF1024,PQ64x8, fp16) once
"""
import json
import os
import sys
from pathlib import Path

PROJECT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, PROJECT)
import numpy as np
from bench.synthetic import mixture, write_batch
from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
root = "/tmp/anon/mem"; n = 200_000
vectors = mixture(n + 150, 384, 200, 1)
if not os.path.exists(root + "/index/LATEST"):
    write_batch(root, "s", vectors[:n], parts=2)
    run_build(BuildConfig(root, factory="IVF1024,PQ64x8", keep_vectors="fp16"), LocalExecutor())
# measure in a fresh process
import subprocess
code = f'''
import sys, json; sys.path.insert(0, {PROJECT!r})
import numpy as np
def status():
    out = {{}}
    for line in open("/proc/self/status"):
        k, *v = line.split()
        if k in ("RssAnon:", "RssFile:"): out[k[:-1]] = int(v[0]) * 1024
    return out
from indexer.store import resolve_version
from indexer.search import ShardSearcher
from serving.answers import answer
import faiss, pyarrow
before = status()
m = resolve_version("{root}")
s = ShardSearcher.load("{root}", m, 0)
loaded = status()
q = np.load("/tmp/anon/q.npy")
for i in range(150): answer(s, q[i:i+1], 100)
after = status()
print(json.dumps({{"before": before, "loaded": loaded, "after_150_queries": after}}))
'''
np.save("/tmp/anon/q.npy", vectors[n:])
r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
d = json.loads(r.stdout.strip().splitlines()[-1])
files = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(root + "/index") for f in fs if f.endswith(".faiss"))
d["codes_ids_bytes"] = files; d["n"] = n
d["anon_per_vector_after_load"] = (d["loaded"]["RssAnon"] - d["before"]["RssAnon"]) / n
d["anon_per_vector_after_queries"] = (d["after_150_queries"]["RssAnon"] - d["before"]["RssAnon"]) / n
d["file_per_vector_after_queries"] = (d["after_150_queries"]["RssFile"] - d["before"]["RssFile"]) / n
print(json.dumps(d, indent=1))
