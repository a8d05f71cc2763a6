"""Experiment 2: new classes without training (method.md section 6, NINCO, Table 1).

Hold classes out of the memory, measure, add their images (an ``add`` version: the path the
API's ``POST /v1/memory/items`` persists through), measure again. Claim: the new classes are
recognised at once and the old classes' accuracy does not change (no catastrophic forgetting).
"""
from __future__ import annotations

import time

import numpy as np

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import retrieve
from pipelines import storage
from serving.aggregation import AGGREGATORS
from serving.evaluate import accuracy_curves

NAME = "new-classes"
CLAIM = ("Adding images of classes the memory has never seen makes them recognisable with no "
         "training, and accuracy on the old classes stays the same (IN-val 83.6 -> 83.6 with "
         "NINCO added, method.md section 6).")


def held_out_classes(classes: list[str], names: list[str] | None, count: int, seed: int) -> list[str]:
    if names:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise ValueError(f"--hold-out names classes the memory does not have: {unknown}")
        return sorted(names)
    return sorted(np.random.default_rng(seed).choice(classes, size=count, replace=False).tolist())


def _scores(root: str, context: Context, rows: np.ndarray) -> dict:
    neighbours = retrieve(root, context.queries.vectors[rows], context.k)
    return accuracy_curves(neighbours.labels, neighbours.distances, neighbours.item_weights,
                           context.queries.labels[rows])


def run(context: Context, hold_out: list[str] | None = None, count: int = 2,
        tolerance: float = 0.02) -> Result:
    started = time.monotonic()
    held = held_out_classes(context.memory.classes, hold_out, count, context.seed)
    is_new = np.isin(context.memory.labels, held)
    scored = labelled(context.queries)
    new_queries = scored & np.isin(context.queries.labels, held)
    old_queries = scored & ~new_queries
    root, _ = context.memories.build(NAME, context.memory.subset(~is_new), batch="old-classes")
    before = {"old": _scores(root, context, old_queries), "new": _scores(root, context, new_queries)}
    add_started = time.monotonic()
    manifest = context.memories.add(root, "new-classes", context.memory.subset(is_new))
    add_seconds = time.monotonic() - add_started
    after = {"old": _scores(root, context, old_queries), "new": _scores(root, context, new_queries)}

    def row(name: str, curves: dict) -> list:
        return [name, pct(curves["rank"]["accuracy_at_k"][0]),
                *(pct(curves[m]["best_accuracy"]) for m in AGGREGATORS),
                pct(curves["rank"]["accuracy_at_max_k"])]

    rows = [row("memory without them -> old-class queries", before["old"]),
            row("memory without them -> new-class queries", before["new"]),
            row("after adding -> old-class queries", after["old"]),
            row("after adding -> new-class queries", after["new"])]
    change = after["old"]["rank"]["best_accuracy"] - before["old"]["rank"]["best_accuracy"]
    checks = [Check("old classes unchanged", abs(change) <= tolerance,
                    f"rank, best k: {pct(before['old']['rank']['best_accuracy'])}% -> "
                    f"{pct(after['old']['rank']['best_accuracy'])}% ({100 * change:+.1f} points; "
                    f"tolerance {100 * tolerance:.0f})"),
              Check("new classes unknown before", before["new"]["rank"]["best_accuracy"] == 0.0,
                    "no query of a held-out class can be right before its images are added"),
              Check("new classes recognised after adding, no training",
                    after["new"]["rank"]["accuracy_at_max_k"] >= 0.5,
                    f"rank at k={context.k}: {pct(after['new']['rank']['accuracy_at_max_k'])}% "
                    f"(chance {pct(1 / len(context.memory.classes))}%)")]
    plot = plots.accuracy_vs_k(storage.join(context.out, f"{NAME}.png"),
                               {f"{part} classes, {when}": c["rank"]["accuracy_at_k"]
                                for when, scores in (("before", before), ("after", after))
                                for part, c in scores.items()},
                               f"Adding {', '.join(held)} to memory", "top-1 accuracy (rank voting)")
    setup = (f"held out {held}: {int(is_new.sum())} of {len(context.memory)} memory images; "
             f"{int(old_queries.sum())} old-class and {int(new_queries.sum())} new-class queries; "
             f"added as version {manifest.version} in {add_seconds:.2f} s (no retraining)")
    return Result(NAME, "New classes without training", CLAIM, setup,
                  ["memory -> queries", "k=1", *(f"{m} (best k)" for m in AGGREGATORS), f"rank k={context.k}"],
                  rows, checks, plot,
                  {"held_out": held, "added": int(is_new.sum()), "add_seconds": round(add_seconds, 3),
                   "old_class_change": round(change, 6), "before": before, "after": after},
                  seconds=time.monotonic() - started)
