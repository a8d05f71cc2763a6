"""Experiment 1: accuracy vs k for the four aggregators (method.md sections 2-3).

Claim: RankVoting rises with k and plateaus, while plurality (and distance / softmax) voting
decay with k, being "overconfident in distant neighbours"; so k = 100 is safe for RankVoting.
"""
from __future__ import annotations

import time

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import retrieve
from pipelines import storage
from serving.evaluate import accuracy_by_k, accuracy_curves

NAME = "aggregation"
CLAIM = ("RankVoting does not decay with k the way plurality voting does; its accuracy at k = 100 "
         "stays near its best (method.md section 3, Fig. 2).")


def decay(row: dict) -> float:
    """How much accuracy is lost by using the largest k instead of the best k."""
    return row["best_accuracy"] - row["accuracy_at_max_k"]


def result_from_curves(curves: dict, queries: int, setup: str, out: str, seconds: float) -> Result:
    depth = len(next(iter(curves.values()))["accuracy_at_k"])
    marks = [k for k in (1, 10, 50) if k < depth] + [depth]
    rows = [[method, row["parameter"], *(pct(row["accuracy_at_k"][k - 1]) for k in marks),
             f"{pct(row['best_accuracy'])} (k={row['best_k']})", pct(decay(row))]
            for method, row in curves.items()]
    plot = plots.accuracy_vs_k(storage.join(out, f"{NAME}.png"),
                               {method: row["accuracy_at_k"] for method, row in curves.items()},
                               "Accuracy vs k per aggregator")
    rank, plurality = curves["rank"], curves["plurality"]
    checks = [Check("rank decays less than plurality", decay(rank) <= decay(plurality),
                    f"best - accuracy at k={depth}: rank {pct(decay(rank))} points, "
                    f"plurality {pct(decay(plurality))} points"),
              Check("rank at the largest k beats plurality there",
                    rank["accuracy_at_max_k"] >= plurality["accuracy_at_max_k"],
                    f"k={depth}: rank {pct(rank['accuracy_at_max_k'])}%, "
                    f"plurality {pct(plurality['accuracy_at_max_k'])}%")]
    return Result(NAME, "Aggregation vs k", CLAIM, setup,
                  ["aggregator", "parameter", *(f"k={k}" for k in marks), "best", "decay (points)"],
                  rows, checks, plot, {"queries": queries, "curves": curves}, seconds=seconds)


def run(context: Context) -> Result:
    started = time.monotonic()
    root = context.full_memory()
    scored = labelled(context.queries)
    neighbours = retrieve(root, context.queries.vectors[scored], context.depth(len(context.memory)))
    curves = accuracy_curves(neighbours.labels, neighbours.distances, neighbours.item_weights,
                             context.queries.labels[scored])
    setup = (f"memory {len(context.memory)} images ({len(context.memory.classes)} classes, "
             f"{context.memory.encoder}), {int(scored.sum())} labelled queries, k = 1..{context.k}")
    return result_from_curves(curves, int(scored.sum()), setup, context.out, time.monotonic() - started)


def run_from_predictions(predictions: str, out: str, max_k: int = 100) -> Result:
    """The same experiment over a ``vmem classify`` run (scales with Ray Data)."""
    started = time.monotonic()
    report = accuracy_by_k(predictions, max_k)
    setup = f"neighbours stored by `vmem classify` in {predictions}: {report['queries']} labelled queries"
    return result_from_curves(report["aggregators"], report["queries"], setup, out,
                              time.monotonic() - started)

