"""Experiment 3: memory size vs encoder size (method.md section 3, "compute/memory trade-off").

For each encoder, the same memory and query images are embedded by the Beam ingest job (re-run
from the batches' recorded inputs when the given ROOTs hold another encoder), then memories of
1, 10, 100, ... images per class are sampled (seeded) and built. Claim: error falls
monotonically with memory size for every encoder; a larger memory can stand in for a larger model.
"""
from __future__ import annotations

import logging
import time

from dataclasses import replace

import numpy as np

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import EmbeddedSet, per_class_sample, retrieve
from pipelines import storage
from pipelines.manifest import list_batches
from serving.evaluate import accuracy_curves

NAME = "memory-size"
CLAIM = ("Error falls monotonically with the number of images in memory, for every encoder; "
         "a small encoder with a large memory can match a larger encoder with a smaller one "
         "(S/14 at 1.28M ~ B/14 at ~150K ~ L/14 at ~70K, method.md section 3).")
log = logging.getLogger("vmem.eval")


def embedded_with(context: Context, encoder: str, weights: str = "") -> tuple[EmbeddedSet, EmbeddedSet]:
    """Memory and query sets embedded by ``encoder`` (``weights``: a local or fsspec checkpoint,
    for open_clip / timm models with no hub in reach): the context's own, or a Beam ingest of the
    same input shards into the work folder (kept, so a re-run reuses it)."""
    if encoder == context.memory.encoder:
        return context.memory, context.queries
    from pipelines.ingest import IngestConfig, run_ingest

    sets = []
    for role, source in (("memory", context.memory), ("queries", context.queries)):
        if not source.inputs:
            raise ValueError(f"the {role} batches record no input shards to re-embed with {encoder}")
        root = storage.join(context.memories.work, "encoders", encoder, role)
        if role not in list_batches(root):
            log.info("embedding the %s images with %s (Beam)", role, encoder)
            run_ingest(IngestConfig(inputs=list(source.inputs), memory=root, batch=role,
                                    encoder=encoder, weights=weights, device=context.device))
        sets.append(same_images(EmbeddedSet.load(root, [role]), source))
    return sets[0], sets[1]


def same_images(embedded: EmbeddedSet, source: EmbeddedSet) -> EmbeddedSet:
    """The rows of ``embedded`` that are images of ``source`` (the same source and key),
    under ``source``'s ids, sorted by id. A re-embedding ingests the same shards into another
    batch, so its own ids (a hash of batch, shard and key) differ from the original's."""
    original = {(s, k): i for i, s, k in zip(source.ids.tolist(), source.sources.tolist(),
                                             source.keys.tolist())}
    mapped = np.asarray([original.get((s, k), -1) for s, k in zip(embedded.sources.tolist(),
                                                                   embedded.keys.tolist())],
                        dtype=np.int64)
    rows = np.flatnonzero(mapped >= 0)
    rows = rows[np.argsort(mapped[rows], kind="stable")]
    return replace(embedded.subset(rows), ids=mapped[rows])


def run(context: Context, encoders: list[str], per_class: list[int], tolerance: float = 0.01,
        weights: dict[str, str] | None = None) -> Result:
    started = time.monotonic()
    table, curves, series, checks = [], {}, {}, []
    embedded = {encoder: embedded_with(context, encoder, (weights or {}).get(encoder, "")) for encoder in encoders}
    # Every encoder sees the same images: those all of them could embed (items added through the
    # API have no input shards to re-embed), and the queries of classes that memory holds.
    common = np.asarray(sorted(set.intersection(*(set(m.ids.tolist()) for m, _ in embedded.values()))))
    for encoder in encoders:
        memory, queries = embedded[encoder]
        memory = memory.subset(np.isin(memory.ids, common))
        scored = labelled(queries) & np.isin(queries.labels, memory.classes)
        sizes, accuracies = [], []
        for count in per_class:
            sample = per_class_sample(memory.labels, count, context.seed)
            subset = memory.subset(sample)
            root, manifest = context.memories.build(f"{NAME}/{encoder}-{count or 'all'}", subset)
            neighbours = retrieve(root, queries.vectors[scored], context.depth(len(subset)))
            result = accuracy_curves(neighbours.labels, neighbours.distances, neighbours.item_weights,
                                     queries.labels[scored])
            curves[f"{encoder}/{count or 'all'}"] = result
            sizes.append(len(subset))
            accuracies.append(result["plurality"]["best_accuracy"])
            table.append([encoder, count or "all", len(subset), manifest.dim,
                          pct(result["plurality"]["best_accuracy"]), pct(result["rank"]["best_accuracy"]),
                          pct(1 - result["plurality"]["best_accuracy"])])
        series[encoder] = (sizes, accuracies)
        falls = all(b >= a - tolerance for a, b in zip(accuracies, accuracies[1:]))
        checks.append(Check(f"{encoder}: error falls with memory size", falls,
                            "plurality, best k: " + " -> ".join(f"{pct(1 - a)}%" for a in accuracies)
                            + f" error at {sizes} images (tolerance {100 * tolerance:.0f} point)"))
    plot = plots.line_plot(storage.join(context.out, f"{NAME}.png"), series, "images in memory",
                           "top-1 accuracy (plurality, best k)", "Memory size vs encoder",
                           logx=True, markers=True)
    setup = (f"encoders {encoders}; {per_class} images per class (0 = all; seeded sample, seed "
             f"{context.seed}); {int(labelled(context.queries).sum())} labelled queries; "
             "accuracy is the best over k of plurality voting, as in the paper")
    return Result(NAME, "Memory size vs encoder size", CLAIM, setup,
                  ["encoder", "per class", "images", "dim", "plurality (best k)", "rank (best k)",
                   "error"], table, checks, plot, {"series": series, "curves": curves},
                  seconds=time.monotonic() - started)
