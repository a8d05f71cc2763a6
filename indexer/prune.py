"""Hard and soft pruning of a published memory (method.md section 4), as new versions."""
from __future__ import annotations

import numpy as np

from indexer.edit import ForgetRequest, run_delete, run_set_weights
from indexer.manifest import IndexManifest
from indexer.reliability import (HARD_K, HARD_THRESHOLD, SOFT_C, SOFT_D, SOFT_K, Reliability,
                                 measure)
from indexer.store import resolve_version


def _summary(reliability: Reliability) -> dict:
    return {"k": reliability.k, "items": int(len(reliability.ids)),
            "v_wrong_max": int(reliability.v_wrong.max(initial=0)),
            "v_wrong_mean": round(float(reliability.v_wrong.mean()) if len(reliability.ids) else 0.0, 4),
            "never_wrong": int((reliability.v_wrong == 0).sum()),
            "reliability_seconds": round(reliability.seconds, 3)}


def run_hard_prune(root: str, executor, k: int = HARD_K,
                   threshold: int = HARD_THRESHOLD) -> tuple[IndexManifest, dict]:
    """Delete every item with v_wrong >= threshold (through the same path as unlearning)."""
    reliability = measure(root, resolve_version(root), k, executor)
    doomed = reliability.ids[reliability.v_wrong >= threshold]
    details = {"prune": {**_summary(reliability), "threshold": threshold, "removed": int(len(doomed))}}
    if not len(doomed):
        raise ValueError(f"no item reaches v_wrong >= {threshold} (max is "
                         f"{details['prune']['v_wrong_max']}); nothing to prune")
    return run_delete(root, ForgetRequest(ids=doomed.tolist()), executor, "prune-hard", details)


def run_soft_prune(root: str, executor, k: int = SOFT_K, c: float = SOFT_C,
                   d: float = SOFT_D) -> IndexManifest:
    """Weight every item by gamma = d / (c + v_wrong) (1 when v_wrong = 0); files shared."""
    reliability = measure(root, resolve_version(root), k, executor)
    weights = reliability.soft_weights(c, d)
    details = {"prune": {**_summary(reliability), "c": c, "d": d,
                         "down_weighted": int((weights < 1).sum()),
                         "weight_min": float(weights.min(initial=1.0))}}
    return run_set_weights(root, reliability.ids, weights, executor, "prune-soft", details)


def reliability_table(reliability: Reliability) -> dict[str, np.ndarray]:
    return {"id": reliability.ids, "v_wrong": reliability.v_wrong,
            "v_correct": reliability.v_correct, "weight": reliability.soft_weights()}
