"""Experiment 4: unlearning by deletion (method.md section 5).

Delete a seeded set of images from a built memory (the indexer's verified delete, as
``DELETE /v1/memory/items`` does) and compare every query's neighbours and predictions with a
memory built from scratch without them. Claim: forgetting is complete and exact (the deleted
items never come back; predictions equal the retrained-from-scratch memory's) and cheap.
"""
from __future__ import annotations

import time

import numpy as np

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import Neighbours, retrieve
from indexer.edit import ForgetRequest, run_delete
from pipelines import storage
from serving.aggregation import AGGREGATORS, Aggregator
from serving.evaluate import accuracy_curves, predictions_every_k

NAME = "unlearning"
CLAIM = ("Deleting an image from memory removes its influence completely and at once: predictions "
         "afterwards equal those of a memory that never held it, with no retraining; the paper "
         "reports < 20 ms per deletion (method.md section 5).")


def every_prediction(neighbours: Neighbours, vocabulary: list[str]) -> dict[str, np.ndarray]:
    return {m: predictions_every_k(neighbours.labels, neighbours.distances, neighbours.item_weights,
                                   Aggregator(m), vocabulary) for m in AGGREGATORS}


def run(context: Context, fraction: float = 0.05, single: int = 5) -> Result:
    started = time.monotonic()
    memory, scored = context.memory, labelled(context.queries)
    queries = context.queries.vectors[scored]
    rng = np.random.default_rng(context.seed)
    forget = np.sort(rng.choice(memory.ids, size=max(1, int(fraction * len(memory))), replace=False))
    root, _ = context.memories.build(NAME, memory)
    depth = context.depth(len(memory))
    before = retrieve(root, queries, depth)
    _, report = run_delete(root, ForgetRequest(ids=forget.tolist()), context.memories.executor)
    after = retrieve(root, queries, depth)
    kept = ~np.isin(memory.ids, forget)
    rebuilt_root, _ = context.memories.build(f"{NAME}-rebuilt", memory.subset(kept))
    rebuilt = retrieve(rebuilt_root, queries, depth)

    vocabulary = memory.classes
    after_predictions, rebuilt_predictions = every_prediction(after, vocabulary), every_prediction(rebuilt, vocabulary)
    identical = all(np.array_equal(after_predictions[m], rebuilt_predictions[m]) for m in AGGREGATORS)
    same_neighbours = np.array_equal(after.ids, rebuilt.ids)
    # The deleted images themselves, used as queries, must not find themselves any more.
    self_queries = retrieve(root, memory.vectors[~kept], depth)
    resurfaced = int(np.isin(after.ids, forget).sum() + np.isin(self_queries.ids, forget).sum())
    influenced = np.isin(before.ids, forget).any(axis=1)
    rank_before = every_prediction(before, vocabulary)["rank"][:, -1]
    changed = int((rank_before != after_predictions["rank"][:, -1]).sum())

    timings = []  # one-item deletions, each a new verified version
    for item in rng.choice(memory.ids[kept], size=min(single, int(kept.sum()) - 1), replace=False):
        tick = time.perf_counter()
        run_delete(root, ForgetRequest(ids=[int(item)]), context.memories.executor)
        timings.append(1000 * (time.perf_counter() - tick))

    curves = {name: accuracy_curves(n.labels, n.distances, n.item_weights, context.queries.labels[scored])
              for name, n in (("before", before), ("after delete", after), ("rebuilt without them", rebuilt))}
    rows = [[name, pct(c["rank"]["accuracy_at_k"][0]), pct(c["rank"]["best_accuracy"]),
             pct(c["rank"]["accuracy_at_max_k"])] for name, c in curves.items()]
    checks = [Check("predictions identical to the memory rebuilt without them", identical,
                    f"all four aggregators at every k = 1..{depth}, {int(scored.sum())} queries"),
              Check("neighbour lists identical to the rebuilt memory", same_neighbours,
                    "ids and order of every query's top-k"),
              Check("deleted items never come back", resurfaced == 0,
                    f"{len(forget)} deleted ids: {resurfaced} appearances in the answers after the delete "
                    "(test queries and the deleted images themselves as queries)")]
    plot = plots.accuracy_vs_k(storage.join(context.out, f"{NAME}.png"),
                               {name: c["rank"]["accuracy_at_k"] for name, c in curves.items()},
                               "Before / after deleting / rebuilt without", "top-1 accuracy (rank voting)")
    setup = (f"deleted {len(forget)} of {len(memory)} memory images (seeded, {100 * fraction:.0f}%) in one "
             f"request: {report['seconds']:.3f} s, {1000 * report['seconds_per_item']:.1f} ms per item; "
             f"{single} single-image deletions: median {np.median(timings):.0f} ms each (each writes and "
             f"verifies a new immutable version); {int(influenced.sum())} queries had a deleted image "
             f"among their top-{depth}, {changed} changed their rank-voting decision")
    return Result(NAME, "Unlearning", CLAIM, setup, ["memory", "k=1", "rank (best k)", f"rank k={depth}"],
                  rows, checks, plot,
                  {"deleted": len(forget), "forget_report": {k: v for k, v in report.items() if k != "ids"},
                   "single_delete_ms": [round(t, 2) for t in timings],
                   "queries_influenced": int(influenced.sum()), "decisions_changed": changed,
                   "curves": curves}, seconds=time.monotonic() - started)
