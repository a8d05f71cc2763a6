"""``vmem eval``: accuracy of every aggregator at every k = 1..K, in one pass over the stored
neighbours of a ``vmem classify`` run (method.md section 2: fixed-k and best-over-k)."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from serving.aggregation import AGGREGATORS, Aggregator, encode_labels, predict_every_k
from serving.batch import read_predictions


def _matrix(rows: list[list], width: int, fill) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=object if fill is None else float)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row[:width]
    return out


def accuracy_by_k(out: str, max_k: int = 100, use_item_weights: bool = True) -> dict:
    table = read_predictions(out)
    truth = table.column("label").to_pylist()
    keep = [i for i, label in enumerate(truth) if label]
    neighbour_labels = _matrix([table.column("neighbour_labels")[i].as_py() for i in keep], max_k, None)
    distances = _matrix([table.column("neighbour_distances")[i].as_py() for i in keep], max_k, 1.0)
    weights = _matrix([table.column("neighbour_weights")[i].as_py() for i in keep], max_k, 0.0)
    codes, vocabulary = encode_labels(neighbour_labels)
    truth_codes, _ = encode_labels(np.asarray([truth[i] for i in keep], dtype=object), vocabulary)
    report = {"queries": len(keep), "max_k": max_k, "aggregators": {}}
    for method in AGGREGATORS:
        aggregator = Aggregator(method)
        votes = aggregator.weights(distances, weights if use_item_weights else None)
        predictions = predict_every_k(codes, votes, len(vocabulary))
        accuracy = (predictions == truth_codes[:, None]).mean(axis=0)
        best = int(np.argmax(accuracy))
        report["aggregators"][method] = {
            "parameter": aggregator.value, "accuracy_at_k": np.round(accuracy, 6).tolist(),
            "best_k": best + 1, "best_accuracy": round(float(accuracy[best]), 6),
            "accuracy_at_max_k": round(float(accuracy[-1]), 6)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmem eval", description=__doc__)
    parser.add_argument("--predictions", "-p", required=True, help="OUT of a `vmem classify` run.")
    parser.add_argument("--max-k", type=int, default=100)
    parser.add_argument("--ignore-item-weights", action="store_true",
                        help="Vote without soft-pruning weights.")
    parser.add_argument("--json", default="", help="Write the full report here.")
    args = parser.parse_args(argv)
    report = accuracy_by_k(args.predictions, args.max_k, not args.ignore_item_weights)
    if args.json:
        from pipelines import storage

        storage.write_json_atomic(args.json, report)
    print(f"{report['queries']} queries, k = 1..{report['max_k']}")
    for method, row in report["aggregators"].items():
        print(f"  {method:<10} k=1 {row['accuracy_at_k'][0]:.4f}  best {row['best_accuracy']:.4f} "
              f"at k={row['best_k']:<3}  k={report['max_k']} {row['accuracy_at_max_k']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
