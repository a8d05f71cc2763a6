"""`vmem import` throughput and memory: N x D embeddings in clip-retrieval's layout
(img_emb/img_emb_K.npy + metadata/metadata_K.parquet), imported into a fresh memory, against the
baseline of a plain ``np.load`` + ``np.concatenate`` of the same .npy files, in the same run.
Each phase runs in a fresh process, so each peak RSS is its own. Prints one JSON object:
rows/s and peak RSS (MiB) of both, ``ratio`` = import rows/s / baseline rows/s and
``rss_ratio`` = import peak RSS / baseline peak RSS (the import streams: its RSS stays flat as
N grows; the baseline holds every row).

    python bench/import_embeddings.py [--rows 1000000] [--dim 768] [--dtype float16]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit_phase, emit_report, run_phase  # noqa: E402


def generate(folder: str, rows: int, dim: int, dtype: str, rows_per_file: int, seed: int) -> dict:
    """Write the layout chunk by chunk (``open_memmap``: never the whole array in memory):
    unit-norm vectors and a metadata file per part (url, caption, label)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    base = Path(folder)
    (base / "img_emb").mkdir(parents=True)
    (base / "metadata").mkdir()
    chunk = 65536
    for part, start in enumerate(range(0, rows, rows_per_file)):
        count = min(rows_per_file, rows - start)
        array = np.lib.format.open_memmap(base / "img_emb" / f"img_emb_{part}.npy", mode="w+",
                                          dtype=np.dtype(dtype), shape=(count, dim))
        for offset in range(0, count, chunk):
            block = rng.standard_normal((min(chunk, count - offset), dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            array[offset:offset + len(block)] = block
        array.flush()
        del array
        numbers = np.arange(start, start + count)
        pq.write_table(pa.table({
            "url": pa.array([f"https://example.invalid/{i}.jpg" for i in numbers.tolist()]),
            "caption": pa.array([f"caption {i}" for i in numbers.tolist()]),
            "label": pa.array((numbers % 1000).astype(str)),
        }), base / "metadata" / f"metadata_{part}.parquet")
    return {"rows": rows, "dim": dim, "dtype": dtype, "files": -(-rows // rows_per_file)}


def import_phase(folder: str, chunk_rows: int) -> dict:
    from pipelines.import_embeddings import ImportConfig, run_import

    with tempfile.TemporaryDirectory() as memory:
        started = time.perf_counter()
        result = run_import(ImportConfig(embeddings=folder, memory=memory, encoder="bench",
                                         batch="bench", label_from="column:label",
                                         chunk_rows=chunk_rows))
        seconds = time.perf_counter() - started
    rows = result.manifest.counts["embedded"]
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1)}


def baseline_phase(folder: str) -> dict:
    """Every .npy loaded and concatenated into one float32 matrix (what a script would do)."""
    import numpy as np

    started = time.perf_counter()
    files = sorted(Path(folder, "img_emb").glob("img_emb_*.npy"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    matrix = np.concatenate([np.load(f) for f in files]).astype(np.float32)
    seconds = time.perf_counter() - started
    return {"rows": len(matrix), "seconds": round(seconds, 3),
            "rows_per_s": round(len(matrix) / seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="Stored dtype (clip-retrieval writes float16).")
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=4096, help="vmem import --chunk-rows.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="Also write the JSON here.")
    parser.add_argument("--phase", choices=("generate", "import", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "generate":
        emit_phase(generate(args.folder, args.rows, args.dim, args.dtype, args.rows_per_file,
                            args.seed))
        return 0
    if args.phase == "import":
        emit_phase(import_phase(args.folder, args.chunk_rows))
        return 0
    if args.phase == "baseline":
        emit_phase(baseline_phase(args.folder))
        return 0

    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as work:
        folder = str(Path(work) / "laion")
        data = run_phase(script, "generate", ["--folder", folder, "--rows", str(args.rows),
                                              "--dim", str(args.dim), "--dtype", args.dtype,
                                              "--rows-per-file", str(args.rows_per_file),
                                              "--seed", str(args.seed)])
        imported = run_phase(script, "import", ["--folder", folder,
                                                "--chunk-rows", str(args.chunk_rows)])
        baseline = run_phase(script, "baseline", ["--folder", folder])
    result = {"benchmark": "import_embeddings", "layout": "clip-retrieval", **{
        k: data[k] for k in ("rows", "dim", "dtype", "files")},
        "import": imported, "baseline_np_load_concatenate": baseline,
        "ratio": round(imported["rows_per_s"] / baseline["rows_per_s"], 3),
        "rss_ratio": round(imported["peak_rss_mib"] / baseline["peak_rss_mib"], 3)}
    emit_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
