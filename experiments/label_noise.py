"""Experiment 6: robustness to label noise in memory (method.md section 6, App. D).

A fraction of the memory's labels is replaced by another class (seeded). Labels do not take part
in search, so a corrupted memory returns the same neighbours with other labels: one retrieval
serves every noise level, and the largest level is also built as a real relabelled memory to
check that. Claim: RankVoting is almost unchanged up to ~60% corrupted labels.
"""
from __future__ import annotations

import time

import numpy as np

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import EmbeddedSet, retrieve
from pipelines import storage
from serving.aggregation import AGGREGATORS
from serving.evaluate import accuracy_curves

NAME = "label-noise"
CLAIM = ("Under RankVoting, accuracy is almost unchanged up to ~60% randomly corrupted memory "
         "labels (method.md section 6, App. D).")


def corrupt(memory: EmbeddedSet, fraction: float, seed: int) -> np.ndarray:
    """Labels with ``fraction`` of the rows moved to a different, uniformly chosen class."""
    rng = np.random.default_rng(seed)
    classes = np.asarray(memory.classes, dtype=object)
    codes = np.searchsorted(classes, memory.labels)
    rows = rng.choice(len(codes), size=int(round(fraction * len(codes))), replace=False)
    codes[rows] = (codes[rows] + rng.integers(1, len(classes), size=len(rows))) % len(classes)
    return classes[codes]


def run(context: Context, fractions: list[float], tolerance: float = 0.05) -> Result:
    started = time.monotonic()
    scored = labelled(context.queries)
    truth = context.queries.labels[scored]
    depth = context.depth(len(context.memory))
    neighbours = retrieve(context.full_memory(), context.queries.vectors[scored], depth)
    curves = {}
    for fraction in fractions:
        labels = corrupt(context.memory, fraction, context.seed)
        noisy = neighbours.relabelled(context.memory.ids, labels)
        curves[fraction] = accuracy_curves(noisy.labels, noisy.distances, noisy.item_weights, truth)
    worst = max(fractions)
    root, _ = context.memories.build(f"{NAME}-{worst}", context.memory.relabelled(
        corrupt(context.memory, worst, context.seed)))
    built = retrieve(root, context.queries.vectors[scored], depth)
    rebuilt = accuracy_curves(built.labels, built.distances, built.item_weights, truth)
    rows = [[f"{100 * f:.0f}%", *(pct(c[m]["best_accuracy"]) for m in AGGREGATORS),
             pct(c["rank"]["accuracy_at_max_k"]), pct(c["plurality"]["accuracy_at_k"][0])]
            for f, c in curves.items()]
    clean, noisy = curves[min(fractions)]["rank"]["best_accuracy"], curves[worst]["rank"]["best_accuracy"]
    checks = [Check(f"rank voting nearly unchanged at {100 * worst:.0f}% noise", clean - noisy <= tolerance,
                    f"rank, best k: {pct(clean)}% -> {pct(noisy)}% (tolerance {100 * tolerance:.0f} points)"),
              Check("aggregation beats the nearest neighbour under noise",
                    noisy > curves[worst]["rank"]["accuracy_at_k"][0],
                    f"{100 * worst:.0f}% noise: k=1 {pct(curves[worst]['rank']['accuracy_at_k'][0])}%, "
                    f"rank best {pct(noisy)}%"),
              Check("a real relabelled memory gives the same numbers",
                    rebuilt["rank"]["accuracy_at_k"] == curves[worst]["rank"]["accuracy_at_k"],
                    f"memory rebuilt with {100 * worst:.0f}% corrupted labels, rank voting at every k")]
    series = {m: ([100 * f for f in fractions], [curves[f][m]["best_accuracy"] for f in fractions])
              for m in AGGREGATORS}
    series["nearest neighbour (k=1)"] = ([100 * f for f in fractions],
                                         [curves[f]["rank"]["accuracy_at_k"][0] for f in fractions])
    plot = plots.line_plot(storage.join(context.out, f"{NAME}.png"), series, "memory labels corrupted (%)",
                           "top-1 accuracy (best k)", "Robustness to label noise", markers=True)
    classes = len(context.memory.classes)
    setup = (f"memory {len(context.memory)} images, {classes} classes; corrupted fractions {fractions} "
             f"(seed {context.seed}); {int(scored.sum())} queries. A corrupted label goes to one of the "
             f"{classes - 1} other classes: with {classes} classes each wrong class gains "
             f"{100 * worst / (classes - 1):.1f}% of the labels at {100 * worst:.0f}% noise, against "
             f"{100 * worst / 999:.2f}% on ImageNet's 1,000, so the paper's margin is larger")
    return Result(NAME, "Robustness to label noise", CLAIM, setup,
                  ["labels corrupted", *(f"{m} (best k)" for m in AGGREGATORS), f"rank k={depth}", "k=1"],
                  rows, checks, plot, {"curves": {str(f): c for f, c in curves.items()}},
                  seconds=time.monotonic() - started)
