"""What an experiment returns and where it lands: ``OUT/<name>.json`` (+ ``<name>.png``), read
back by the report. One shape for all: a claim, a setup, a table, checks, a plot, the data."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from experiments.workbench import EmbeddedSet, Memories
from pipelines import storage


@dataclass
class Check:
    """What the paper's claim implies, tested on this run's numbers."""

    name: str
    passed: bool
    detail: str


@dataclass
class Result:
    experiment: str
    title: str
    claim: str  # the paper's claim, with its method.md section
    setup: str  # what was run, with sizes
    columns: list[str]
    rows: list[list]
    checks: list[Check] = field(default_factory=list)
    plot: str = ""  # file name beside the JSON
    data: dict = field(default_factory=dict)
    gallery: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def write(self, out: str) -> str:
        url = storage.join(out, f"{self.experiment}.json")
        storage.write_json_atomic(url, asdict(self))
        return url

    @classmethod
    def read(cls, url: str) -> "Result":
        raw = storage.read_json(url)
        raw["checks"] = [Check(**c) for c in raw.get("checks", [])]
        return cls(**raw)


@dataclass
class Context:
    """The inputs of every experiment: a memory set, a query set, where to write, how to build."""

    memory: EmbeddedSet
    queries: EmbeddedSet
    out: str
    memories: Memories
    k: int = 100
    seed: int = 0
    device: str = "auto"
    full_root: str = field(default="", init=False, repr=False)

    def full_memory(self) -> str:
        """The whole memory set as one index (built once per context, shared by experiments)."""
        if not self.full_root:
            self.full_root = self.memories.build("full", self.memory)[0]
        return self.full_root

    def depth(self, memory_size: int) -> int:
        return max(1, min(self.k, memory_size))


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def labelled(queries: EmbeddedSet) -> np.ndarray:
    """Rows of a query set that carry a label (unlabelled queries cannot be scored)."""
    return np.asarray([bool(label) for label in queries.labels.tolist()])
