"""What every experiment shares: embedded sets as numpy, derived memories built by the indexer,
and retrieval through the serving code (search each shard, merge, attach metadata).

A derived memory (a subset, a relabelled copy) is a real ROOT under the work folder: an
embedding batch written like any other, then an index version built by ``indexer.build``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from indexer.build import BuildConfig, run_build
from indexer.edit import run_add
from indexer.forgotten import forgotten_ids
from indexer.manifest import IndexManifest
from indexer.search import ShardedIndex
from indexer.store import resolve_version
from pipelines import storage
from pipelines.manifest import BatchManifest, list_batches, read_embeddings, write_embedding_batch
from pipelines.schema import embedding_batch, embeddings_matrix
from serving.answers import ShardAnswer, answer, concatenate, merge_answers

COLUMNS = ["id", "key", "label", "source", "content_hash", "embedding"]


@dataclass(frozen=True)
class EmbeddedSet:
    """Rows of embedding batches, column-wise: the unit experiments split, sample and relabel."""

    ids: np.ndarray
    keys: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    hashes: np.ndarray
    vectors: np.ndarray
    encoder: str
    inputs: tuple[str, ...] = ()  # the image shards the batches were ingested from

    @classmethod
    def load(cls, root: str, batches: list[str] | None = None) -> "EmbeddedSet":
        names = batches or list_batches(root)
        if not names:
            raise FileNotFoundError(f"no embedding batches under {root} (run `vmem ingest` first)")
        manifests = [BatchManifest.read(root, name) for name in names]
        encoders = {m.encoder for m in manifests}
        if len(encoders) != 1:
            raise ValueError(f"batches under {root} come from several encoders: {sorted(encoders)}")
        table = pa.concat_tables([read_embeddings(root, name, COLUMNS) for name in names])
        forgotten = forgotten_ids(root)  # unlearned items are not part of the memory any more
        if len(forgotten):
            table = table.filter(pa.array(~np.isin(table.column("id").to_numpy(), forgotten)))
        table = table.sort_by("id")  # a canonical order: results do not depend on file order
        text = {c: np.asarray(table.column(c).to_pylist(), dtype=object)
                for c in ("key", "label", "source", "content_hash")}
        return cls(table.column("id").to_numpy(), text["key"], text["label"], text["source"],
                   text["content_hash"], embeddings_matrix(table), encoders.pop(),
                   tuple(i for m in manifests for i in m.inputs))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))

    def subset(self, mask: np.ndarray) -> "EmbeddedSet":
        return replace(self, ids=self.ids[mask], keys=self.keys[mask], labels=self.labels[mask],
                       sources=self.sources[mask], hashes=self.hashes[mask], vectors=self.vectors[mask])

    def relabelled(self, labels: np.ndarray) -> "EmbeddedSet":
        return replace(self, labels=np.asarray(labels, dtype=object))

    def table(self) -> pa.Table:
        return pa.Table.from_batches([embedding_batch(
            self.ids, self.keys.tolist(), self.labels.tolist(), self.sources.tolist(),
            self.hashes.tolist(), self.vectors, self.encoder)])


def per_class_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A boolean mask keeping ``count`` seeded-random rows of each class (0: all rows)."""
    keep = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        keep[rows if count <= 0 else rng.permutation(rows)[:count]] = True
    return keep


@dataclass
class Neighbours:
    """A query set's merged top-k as the voting code needs it."""

    ids: np.ndarray  # (n, k), -1 where missing
    distances: np.ndarray  # (n, k) 1 - cosine, 1.0 where missing
    labels: np.ndarray  # (n, k) objects, None where missing
    item_weights: np.ndarray  # (n, k) soft-pruning weights, 0 where missing

    @classmethod
    def from_answer(cls, merged: ShardAnswer) -> "Neighbours":
        valid = merged.ids >= 0
        return cls(merged.ids, np.where(valid, 1.0 - merged.scores, 1.0),
                   np.where(valid, merged.meta["label"], None),
                   np.where(valid, np.nan_to_num(merged.meta["weight"].astype(float), nan=1.0), 0.0))

    def relabelled(self, ids: np.ndarray, labels: np.ndarray) -> "Neighbours":
        """The same neighbours with other labels: ``labels[i]`` for item ``ids[i]`` (ids sorted)."""
        rows = np.clip(np.searchsorted(ids, self.ids), 0, len(ids) - 1)
        found = (self.ids >= 0) & (ids[rows] == self.ids)
        return replace(self, labels=np.where(found, np.asarray(labels, dtype=object)[rows], None))


class Memories:
    """Derived memories under ``work``: each a ROOT with one embedding batch and its index."""

    def __init__(self, work: str, executor, num_shards: int = 1, factory: str = "auto") -> None:
        self.work, self.executor = work, executor
        self.num_shards, self.factory = num_shards, factory

    def root(self, name: str) -> str:
        return storage.join(self.work, name)

    def build(self, name: str, items: EmbeddedSet, batch: str = "items") -> tuple[str, IndexManifest]:
        root = self.root(name)
        storage.remove(root)  # a derived memory is rebuilt from scratch on every run
        write_embedding_batch(root, batch, items.table(), items.encoder, "experiment", list(items.inputs))
        shards = max(1, min(self.num_shards, len(items)))
        manifest = run_build(BuildConfig(root, num_shards=shards, factory=self.factory), self.executor)
        return root, manifest

    def add(self, root: str, batch: str, items: EmbeddedSet) -> IndexManifest:
        write_embedding_batch(root, batch, items.table(), items.encoder, "experiment", list(items.inputs))
        return run_add(root, [batch], self.executor)


def search(root: str, queries: np.ndarray, k: int, version: str | None = None, with_vectors: bool = False,
           chunk: int = 1024) -> ShardAnswer:
    """Top-k of every query over every shard of a version, merged as the router merges."""
    index = ShardedIndex(root, resolve_version(root, version))
    return concatenate([merge_answers([answer(shard, queries[start:start + chunk], k, with_vectors=with_vectors)
                                       for shard in index.shards], k)
                        for start in range(0, len(queries), chunk)])


def retrieve(root: str, queries: np.ndarray, k: int, version: str | None = None) -> Neighbours:
    return Neighbours.from_answer(search(root, queries, k, version))
