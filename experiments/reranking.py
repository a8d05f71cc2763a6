"""Beyond the paper: a re-ranker between retrieval and voting (serving/rerank.py).

The paper re-ranks the top-50 neighbours with Gemini (88.5% vs 83.6% on ImageNet). Here the
offline ``prototype`` re-ranker reorders the same top-k candidates, then every aggregator votes
on the new order. Measured against the same neighbours without re-ranking.
"""
from __future__ import annotations

import time

import numpy as np

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import Neighbours, search
from pipelines import storage
from serving.aggregation import AGGREGATORS
from serving.evaluate import accuracy_curves
from serving.rerank import make_reranker, rerank_answer

NAME = "reranking"
CLAIM = ("A re-ranking stage over the retrieved neighbours can add accuracy on top of voting "
         "(Gemini over the top-50: 83.6 -> 88.5 on ImageNet, method.md section 2). Here: an offline "
         "class-prototype re-ranker, no network.")


def run(context: Context, name: str = "prototype", top: int = 50, weight: float = 1.0,
        tolerance: float = 0.01) -> Result:
    started = time.monotonic()
    scored = labelled(context.queries)
    queries, truth = context.queries.vectors[scored], context.queries.labels[scored]
    root = context.full_memory()
    depth = context.depth(len(context.memory))
    reranker = make_reranker(name, top, weight)
    merged = search(root, queries, depth, with_vectors=reranker.needs_vectors)
    tick = time.perf_counter()
    after = Neighbours.from_answer(rerank_answer(reranker, queries, merged))  # the serving code's stage
    rerank_ms = 1000 * (time.perf_counter() - tick) / max(len(queries), 1)
    neighbours = Neighbours.from_answer(merged)
    curves = {"retrieval order": accuracy_curves(neighbours.labels, neighbours.distances,
                                                 neighbours.item_weights, truth)}
    curves[f"{name} re-ranked"] = accuracy_curves(after.labels, after.distances, after.item_weights, truth)
    base, new = (c["rank"]["best_accuracy"] for c in curves.values())
    rows = [[variant, *(pct(c[m]["best_accuracy"]) for m in AGGREGATORS), pct(c["rank"]["accuracy_at_k"][0]),
             pct(c["rank"]["accuracy_at_max_k"])] for variant, c in curves.items()]
    checks = [Check("re-ranking keeps or improves rank voting", new >= base - tolerance,
                    f"rank, best k: {pct(base)}% -> {pct(new)}% (tolerance {100 * tolerance:.0f} point)"),
              Check("re-ranking only reorders the retrieved candidates",
                    bool(np.array_equal(np.sort(after.ids, axis=1), np.sort(neighbours.ids, axis=1))),
                    "the same ids per query, in a new order")]
    plot = plots.accuracy_vs_k(storage.join(context.out, f"{NAME}.png"),
                               {f"{variant}: {m}": c[m]["accuracy_at_k"] for variant, c in curves.items()
                                for m in ("plurality", "rank")}, f"Re-ranking the top-{top} ({name})")
    setup = (f"{name} re-ranker over the top-{top} of {depth} neighbours (weight {weight}); "
             f"{rerank_ms:.2f} ms per query on this machine (vectors come with the search); "
             f"{int(scored.sum())} queries")
    return Result(NAME, "Re-ranking (beyond the paper)", CLAIM, setup,
                  ["neighbours", *(f"{m} (best k)" for m in AGGREGATORS), "k=1", f"rank k={depth}"], rows,
                  checks, plot, {"curves": curves, "rerank_ms_per_query": round(rerank_ms, 3),
                                 "top": top, "weight": weight}, seconds=time.monotonic() - started)
