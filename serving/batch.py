"""Batch classification: a whole query set through the same search / merge / vote code as the
HTTP router, on Ray Data (no HTTP). Queries are embedding batches (``vmem ingest`` into a
separate ROOT); each Ray Data task classifies one part and writes its own Parquet file
atomically; ``OUT/_manifest.json`` is written last.

    vmem classify --memory ROOT --queries QROOT --out OUT [--k 100] [--aggregator rank]
"""
from __future__ import annotations

import argparse
import io
import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.reader import Part, plan_inputs, read_part
from indexer.search import ShardedIndex
from indexer.store import resolve_version
from pipelines import storage
from serving.aggregation import AGGREGATORS, Aggregator
from serving.answers import answer, merge_answers
from serving.decision import decide
from serving.options import MAX_K
from serving.rerank import RERANKERS, make_reranker, rerank_answer
from vmem.helptext import HelpFormatter
from vmem.logs import configure_logging

MANIFEST = "_manifest.json"
CHUNK = 1024


def predictions_table(meta: pa.Table, merged, decisions) -> pa.Table:
    valid = merged.ids >= 0
    rows = [np.flatnonzero(v) for v in valid]
    return pa.table({
        "query_id": meta.column("id"), "key": meta.column("key"), "label": meta.column("label"),
        "predicted": [d.label for d in decisions],
        "confidence": pa.array([d.confidence for d in decisions], type=pa.float32()),
        "neighbour_ids": [merged.ids[i, r].tolist() for i, r in enumerate(rows)],
        "neighbour_keys": [merged.meta["key"][i, r].tolist() for i, r in enumerate(rows)],
        "neighbour_labels": [merged.meta["label"][i, r].tolist() for i, r in enumerate(rows)],
        "neighbour_distances": [(1.0 - merged.scores[i, r]).astype(np.float32).tolist() for i, r in enumerate(rows)],
        "neighbour_weights": [merged.meta["weight"][i, r].astype(np.float32).tolist() for i, r in enumerate(rows)],
    })


class PartClassifier:
    """Ray Data callable: loads the version once per worker, classifies parts, writes files."""

    def __init__(self, memory: str, version: str, out: str, k: int, aggregator: str,
                 parameter: float | None, rerank: str = "") -> None:
        self.manifest = resolve_version(memory, version)
        self.index = ShardedIndex(memory, self.manifest)
        self.out, self.k = out, k
        self.aggregator = Aggregator(aggregator, parameter)
        self.reranker = make_reranker(rerank) if rerank else None

    def classify(self, part: Part) -> dict:
        meta, vectors = read_part(part)
        tables = []
        for start in range(0, len(vectors), CHUNK):
            chunk = vectors[start:start + CHUNK]
            with_vectors = self.reranker is not None and self.reranker.needs_vectors
            merged = merge_answers([answer(s, chunk, self.k, version=self.manifest.version,
                                           with_vectors=with_vectors) for s in self.index.shards], self.k)
            if self.reranker is not None:
                merged = rerank_answer(self.reranker, chunk, merged)
            decisions = decide(merged.ids, merged.scores, merged.meta, self.aggregator)
            tables.append(predictions_table(meta.slice(start, len(chunk)), merged, decisions))
        table = pa.concat_tables(tables)
        name = f"part-{part.batch}-{storage.filesystem(part.url)[1].rsplit('/', 1)[-1]}"
        sink = io.BytesIO()
        pq.write_table(table, sink)
        storage.write_bytes_atomic(storage.join(self.out, name), sink.getvalue())
        correct = int(np.sum(np.asarray(table.column("predicted").to_pylist(), dtype=object)
                             == np.asarray(table.column("label").to_pylist(), dtype=object)))
        return {"path": name, "rows": table.num_rows, "correct": correct}

    def __call__(self, batch: dict) -> dict:
        results = [self.classify(Part(b, u, int(r))) for b, u, r in
                   zip(batch["batch"], batch["url"], batch["rows"])]
        return {key: [r[key] for r in results] for key in ("path", "rows", "correct")}


def run_classify(memory: str, queries: str, out: str, k: int = 100, aggregator: str = "rank",
                 parameter: float | None = None, version: str | None = None,
                 batches: list[str] | None = None, concurrency: int = 1, rerank: str = "") -> dict:
    import ray

    manifest = resolve_version(memory, version)
    parts = plan_inputs(queries, batches, manifest.encoder, manifest.dim).parts
    if not ray.is_initialized():
        from indexer.localray import init

        init(include_dashboard=False)
    items = [{"batch": p.batch, "url": p.url, "rows": p.rows} for p in parts]
    results = (ray.data.from_items(items)
               .map_batches(PartClassifier, batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=concurrency),
                            fn_constructor_args=(memory, manifest.version, out, k, aggregator, parameter,
                                                 rerank))
               .take_all())
    files = [{"path": r["path"], "rows": r["rows"]} for r in results]
    total, correct = sum(r["rows"] for r in results), sum(r["correct"] for r in results)
    summary = {"version": manifest.version, "encoder": manifest.encoder, "k": k,
               "aggregator": aggregator, "parameter": Aggregator(aggregator, parameter).value,
               "rerank": rerank,
               "queries": total, "accuracy": round(correct / total, 6) if total else None,
               "files": sorted(files, key=lambda f: f["path"]),
               "created": datetime.now(timezone.utc).isoformat()}
    storage.write_json_atomic(storage.join(out, MANIFEST), summary)
    return summary


def read_predictions(out: str) -> pa.Table:
    manifest = storage.read_json(storage.join(out, MANIFEST))
    tables = []
    for entry in manifest["files"]:
        fs, path = storage.filesystem(storage.join(out, entry["path"]))
        with fs.open(path, "rb") as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables)


def export_neighbour_json(out: str, path: str, featurizer: str) -> int:
    """The paper's neighbour JSON (method.md section 7): an object keyed by image_id with
    featurizer, image_id, image_class, neighbor_image_ids, neighbor_classes, neighbor_distances;
    classes are indices into the sorted label vocabulary."""
    table = read_predictions(out)
    labels = sorted({l for l in table.column("label").to_pylist() if l} |
                    {l for ls in table.column("neighbour_labels").to_pylist() for l in ls if l})
    index = {label: number for number, label in enumerate(labels)}
    document = {}
    for row in table.to_pylist():
        document[row["key"]] = {
            "featurizer": featurizer, "image_id": row["key"], "image_class": index.get(row["label"], -1),
            "neighbor_image_ids": row["neighbour_keys"],
            "neighbor_classes": [index[l] for l in row["neighbour_labels"]],
            "neighbor_distances": row["neighbour_distances"]}
    storage.write_bytes_atomic(path, json.dumps(document).encode())
    return len(document)


def neighbour_count(text: str) -> int:
    """``--k``: an integer in 1 ... MAX_K, the HTTP API's limit (argparse reports the error)."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"k must be an integer, not {text!r}") from None
    if not 1 <= k <= MAX_K:
        raise argparse.ArgumentTypeError(f"k must be between 1 and {MAX_K}, not {k}")
    return k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmem classify", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--memory", "-m", required=True, help="ROOT of the visual memory.")
    parser.add_argument("--queries", "-q", required=True, help="ROOT holding the query embedding batches.")
    parser.add_argument("--batch", action="append", help="Query batch (repeatable; default all).")
    parser.add_argument("--out", "-o", required=True, help="Output folder/URL for prediction Parquet.")
    parser.add_argument("--k", type=neighbour_count, default=100,
                        help=f"Neighbours retrieved and voted per query, 1 ... {MAX_K} (default 100).")
    parser.add_argument("--aggregator", choices=AGGREGATORS, default="rank",
                        help="How the neighbours' labels are voted (method.md section 2; default rank).")
    parameter_help = "xi (distance), tau (softmax) or alpha (rank); default: the paper's."
    parser.add_argument("--parameter", type=float, default=None, help=parameter_help)
    parser.add_argument("--version", default=None, help="Index version (default LATEST).")
    parser.add_argument("--concurrency", type=int, default=1, help="Ray Data workers.")
    parser.add_argument("--rerank", default="", choices=["", *RERANKERS],
                        help="Re-rank the neighbours before voting (serving/rerank.py).")
    parser.add_argument("--export-json", default="", help="Also write the paper's neighbour JSON here.")
    args = parser.parse_args(argv)
    try:
        Aggregator(args.aggregator, args.parameter)
    except ValueError as error:
        parser.error(f"--parameter {args.parameter}: {error}")
    configure_logging("WARNING")
    summary = run_classify(args.memory, args.queries, args.out, args.k, args.aggregator, args.parameter,
                           args.version, args.batch, args.concurrency, args.rerank)
    if args.export_json:
        export_neighbour_json(args.out, args.export_json, summary["encoder"])
    print(f"classified {summary['queries']} queries with version {summary['version']} "
          f"({args.aggregator}, k={args.k}): accuracy {summary['accuracy']} -> {args.out}")
    return 0


if __name__ == "__main__":
    from indexer import program

    program.run(main)
