"""Experiment 7: interpretability (method.md section 7): an attribution gallery, calibration,
hit rate and neighbour reliability.

Every decision is fully determined by its neighbours, so each is shown with the memory images
behind it, their labels, distances and vote weights: correct and wrong decisions alike.
"""
from __future__ import annotations

import io
import logging
import time

import numpy as np
from PIL import Image

from experiments import plots
from experiments.results import Check, Context, Result, labelled, pct
from experiments.workbench import EmbeddedSet, Neighbours, retrieve
from pipelines import storage
from pipelines.decode import DecodePolicy, ImageRejected, decode_image
from pipelines.sources.fetch import read_sources
from pipelines.sources.policy import SourcePolicy, input_roots
from serving.aggregation import Aggregator
from serving.evaluate import predictions_every_k

NAME = "interpretability"
CLAIM = ("Each decision is attributable to its nearest neighbours; accuracy tracks the plurality "
         "share among the top-100 (calibration close to the diagonal, Fig. 15); the true label is "
         "among the top-100 neighbours ~98% of the time (Fig. 11); single-neighbour accuracy falls "
         "with rank as a*ln(rank+1)+b (Fig. 1).")
THUMBNAIL = 96
log = logging.getLogger(__name__)


def calibration(neighbours: Neighbours, truth: np.ndarray, bins: int = 10) -> dict:
    """Accuracy of the plurality decision vs the plurality class's share of the neighbours."""
    shares, correct = [], []
    for labels, label in zip(neighbours.labels, truth):
        present = [l for l in labels.tolist() if l is not None]
        values, counts = np.unique(np.asarray(present, dtype=object), return_counts=True)
        shares.append(counts.max() / len(present))
        correct.append(values[int(np.argmax(counts))] == label)
    shares, correct = np.asarray(shares), np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(shares, edges) - 1, 0, bins - 1)
    table = [{"share": round(float(shares[which == b].mean()), 4), "accuracy": round(float(correct[which == b].mean()), 4),
              "queries": int((which == b).sum())} for b in range(bins) if (which == b).any()]
    ece = sum(row["queries"] * abs(row["accuracy"] - row["share"]) for row in table) / len(shares)
    return {"bins": table, "ece": round(float(ece), 4)}


def neighbour_reliability(neighbours: Neighbours, truth: np.ndarray) -> dict:
    agrees = (neighbours.labels == truth[:, None]) & (neighbours.ids >= 0)
    accuracy = agrees.mean(axis=0)
    slope, intercept = np.polyfit(np.log(np.arange(1, len(accuracy) + 1)), accuracy, 1)
    return {"accuracy_at_rank": np.round(accuracy, 4).tolist(), "a": round(float(slope), 5),
            "b": round(float(intercept), 5), "hit_rate": round(float(agrees.any(axis=1).mean()), 4)}


def thumbnail(data: bytes) -> bytes:
    image = decode_image(data, DecodePolicy())
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    if max(image.size) < THUMBNAIL:  # small images (28 px) are enlarged, pixels kept sharp
        scale = THUMBNAIL // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gallery(context: Context, queries: EmbeddedSet, neighbours: Neighbours, predicted: list[str],
            votes: np.ndarray, count: int, shown: int = 5) -> list[dict]:
    """``count`` seeded queries (half correct, half wrong) with their first ``shown`` neighbours."""
    rng = np.random.default_rng(context.seed)
    correct = np.asarray([p == t for p, t in zip(predicted, queries.labels)])
    picks = [rng.permutation(np.flatnonzero(correct == flag))[:count // 2] for flag in (True, False)]
    memory = context.memory
    rows = [int(r) for r in np.concatenate(picks)]
    wanted = [queries.sources[r] for r in rows]
    for r in rows:
        wanted += [memory.sources[np.searchsorted(memory.ids, i)] for i in neighbours.ids[r, :shown] if i >= 0]
    # read back only from where the memory's and the queries' batches were ingested: a source
    # stored through the API is data, never a reason to open an arbitrary URL or local file
    policy = SourcePolicy(input_roots([*memory.inputs, *queries.inputs]))
    readable = [source for source in wanted if policy.allows(source)]
    if len(readable) < len(wanted):
        log.warning("gallery: %d source(s) outside the ingest inputs %s not read",
                    len(wanted) - len(readable), list(policy.roots))
    images = read_sources(readable, policy)

    def picture(source: str, name: str) -> str:
        if source not in images:
            return ""
        try:
            storage.write_bytes_atomic(storage.join(context.out, "gallery", name), thumbnail(images[source]))
        except ImageRejected:
            return ""
        return f"gallery/{name}"

    entries = []
    for row in rows:
        items = []
        for rank, item in enumerate(neighbours.ids[row, :shown].tolist()):
            if item < 0:
                continue
            at = np.searchsorted(memory.ids, item)
            items.append({"key": memory.keys[at], "label": neighbours.labels[row, rank],
                          "distance": round(float(neighbours.distances[row, rank]), 4), "rank": rank,
                          "vote": round(float(votes[row, rank]), 4),
                          "agrees": neighbours.labels[row, rank] == queries.labels[row],
                          "image": picture(memory.sources[at], f"m{item}.png")})
        entries.append({"key": queries.keys[row], "label": queries.labels[row], "predicted": predicted[row],
                        "correct": bool(correct[row]),
                        "image": picture(queries.sources[row], f"q{queries.ids[row]}.png"), "neighbours": items})
    return entries


def run(context: Context, gallery_size: int = 8) -> Result:
    started = time.monotonic()
    queries = context.queries.subset(labelled(context.queries))
    depth = context.depth(len(context.memory))
    neighbours = retrieve(context.full_memory(), queries.vectors, depth)
    vocabulary = context.memory.classes
    rank = Aggregator("rank")
    codes = predictions_every_k(neighbours.labels, neighbours.distances, neighbours.item_weights, rank,
                                vocabulary)[:, -1]
    predicted = [vocabulary[c] if c >= 0 else "" for c in codes]
    votes = rank.weights(neighbours.distances, neighbours.item_weights)
    calibrated = calibration(neighbours, queries.labels)
    reliability = neighbour_reliability(neighbours, queries.labels)
    shown = gallery(context, queries, neighbours, predicted, votes, gallery_size)
    accuracy = float(np.mean([p == t for p, t in zip(predicted, queries.labels)]))

    figure, (left, right) = plots.plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    left.plot([b["share"] for b in calibrated["bins"]], [b["accuracy"] for b in calibrated["bins"]],
              marker="o", label="plurality decision")
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    left.set(xlabel=f"plurality share among the top-{depth}", ylabel="accuracy",
             title=f"Calibration (ECE {calibrated['ece']:.3f})")
    ranks = np.arange(1, depth + 1)
    right.plot(ranks, reliability["accuracy_at_rank"], label="neighbour label = query label")
    right.plot(ranks, reliability["a"] * np.log(ranks) + reliability["b"], linestyle="--",
               label=f"{reliability['a']:.3f} ln(rank) + {reliability['b']:.3f}")
    right.set(xlabel="neighbour rank (1 = nearest)", ylabel="accuracy", title="Neighbour reliability")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    plot = plots.save(figure, storage.join(context.out, f"{NAME}.png"))

    rows = [["rank voting accuracy", f"k={depth}", pct(accuracy)],
            ["hit rate: true label among the neighbours", f"top-{depth}", pct(reliability["hit_rate"])],
            ["expected calibration error (plurality share)", f"{len(calibrated['bins'])} bins",
             f"{calibrated['ece']:.3f}"],
            ["single-neighbour accuracy", "rank 1 -> last",
             f"{pct(reliability['accuracy_at_rank'][0])} -> {pct(reliability['accuracy_at_rank'][-1])}"],
            ["fit a ln(rank) + b", "a, b", f"{reliability['a']:.4f}, {reliability['b']:.4f}"]]
    bins = calibrated["bins"]
    rising = float(np.corrcoef([b["share"] for b in bins], [b["accuracy"] for b in bins])[0, 1]) if len(bins) > 2 else 0.0
    checks = [Check("accuracy rises with the plurality share", rising > 0.8,
                    f"correlation {rising:.2f} over {len(bins)} bins (ECE {calibrated['ece']:.3f}: with few "
                    "images per class, the top-100 must hold other classes, so shares run low)"),
              Check("nearer neighbours are more reliable", reliability["a"] < 0,
                    f"a = {reliability['a']:.4f} in a*ln(rank)+b"),
              Check("gallery shows correct and wrong decisions",
                    {e["correct"] for e in shown} == {True, False} and all(e["image"] for e in shown),
                    f"{len(shown)} queries with their nearest {5} neighbours, images read back from their sources")]
    setup = (f"memory {len(context.memory)} images, {len(queries)} labelled queries, top-{depth}, "
             f"rank voting (alpha 2); gallery of {len(shown)} seeded queries")
    return Result(NAME, "Interpretability and calibration", CLAIM, setup, ["measure", "at", "value"], rows,
                  checks, plot, {"calibration": calibrated, "reliability": reliability}, gallery=shown,
                  seconds=time.monotonic() - started)
