"""Experiment 5: hard and soft pruning of the memory (method.md section 4, Table 3).

Both are the indexer's real operations on a built memory, each from the same unpruned version:
hard pruning deletes items with v_wrong >= threshold (leave-one-out counts over the top-100),
soft pruning keeps every item but weights its votes by gamma = 1.75 / (1 + v_wrong) (top-10).
Claim: pruning removes unreliable memories and does not hurt accuracy (soft: +0.3..0.5 points).
"""
from __future__ import annotations

import time

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import retrieve
from indexer.layout import set_latest
from indexer.prune import run_hard_prune, run_soft_prune
from indexer.reliability import HARD_K, SOFT_K
from pipelines import storage
from serving.aggregation import AGGREGATORS
from serving.evaluate import accuracy_curves

NAME = "pruning"
CLAIM = ("Removing (hard) or down-weighting (soft) memory items that often disagree with their "
         "neighbours' labels keeps or improves accuracy: DINOv2-L14 rank voting 83.6 -> 83.7 (hard, "
         "v_wrong >= 128) and 84.1 (soft), method.md section 4.")


def run(context: Context, thresholds: list[int], tolerance: float = 0.01) -> Result:
    started = time.monotonic()
    scored = labelled(context.queries)
    queries, truth = context.queries.vectors[scored], context.queries.labels[scored]
    root, base = context.memories.build(NAME, context.memory)
    depth = context.depth(len(context.memory))
    executor = context.memories.executor

    def evaluate() -> dict:
        neighbours = retrieve(root, queries, depth)
        return accuracy_curves(neighbours.labels, neighbours.distances, neighbours.item_weights, truth)

    variants = {"no pruning": (evaluate(), {"items": len(context.memory)})}
    for threshold in thresholds:
        set_latest(root, base.version)  # every variant prunes the same unpruned memory
        try:
            manifest, report = run_hard_prune(root, executor, HARD_K, threshold)
        except ValueError:  # nothing reaches the threshold: the memory stays as it is
            variants[f"hard, v_wrong >= {threshold}"] = (variants["no pruning"][0],
                                                         {"removed": 0, "items": len(context.memory)})
            continue
        variants[f"hard, v_wrong >= {threshold}"] = (evaluate(), {"removed": report["removed"],
                                                                  "items": manifest.count})
    set_latest(root, base.version)
    soft = run_soft_prune(root, executor, SOFT_K)
    variants["soft, gamma = 1.75/(1+v)"] = (evaluate(), {"down_weighted": soft.details["prune"]["down_weighted"],
                                                         "items": soft.count})
    rows = [[name, info.get("removed", info.get("down_weighted", 0)), info["items"],
             *(pct(curves[m]["best_accuracy"]) for m in AGGREGATORS)]
            for name, (curves, info) in variants.items()]
    baseline = variants["no pruning"][0]["rank"]["best_accuracy"]
    soft_rank = variants["soft, gamma = 1.75/(1+v)"][0]["rank"]["best_accuracy"]
    checks = [Check("soft pruning does not hurt rank voting", soft_rank >= baseline - tolerance,
                    f"rank, best k: {pct(baseline)}% -> {pct(soft_rank)}% (tolerance {100 * tolerance:.0f} point)"),
              Check("soft pruning down-weights only unreliable items",
                    0 < variants["soft, gamma = 1.75/(1+v)"][1]["down_weighted"] < len(context.memory),
                    f"{variants['soft, gamma = 1.75/(1+v)'][1]['down_weighted']} of {len(context.memory)} "
                    "items have v_wrong > 0 among the top-10")]
    plot = plots.bar_plot(storage.join(context.out, f"{NAME}.png"), list(AGGREGATORS),
                          {name: [c[m]["best_accuracy"] for m in AGGREGATORS] for name, (c, _) in variants.items()},
                          "top-1 accuracy (best k)", "Pruning: accuracy per aggregator",
                          ylim=(max(0.0, min(c[m]["best_accuracy"] for c, _ in variants.values()
                                             for m in AGGREGATORS) - 0.05), 1.0))
    setup = (f"memory {len(context.memory)} images; hard thresholds {thresholds} on v_wrong over the "
             f"top-{HARD_K} (leave-one-out); soft weights from the top-{SOFT_K}; each variant is a "
             "published index version pruned from the same parent")
    return Result(NAME, "Pruning", CLAIM, setup,
                  ["memory", "removed / down-weighted", "items", *(f"{m} (best k)" for m in AGGREGATORS)],
                  rows, checks, plot,
                  {"variants": {name: {"curves": c, **info} for name, (c, info) in variants.items()}},
                  seconds=time.monotonic() - started)
