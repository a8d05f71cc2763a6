"""Exact duplicate content across embedding batches (issue 12, kind 1), found by content hash.

Ids say *where* an item came from (batch, shard, key: ``records.item_id``), so the same image
ingested from two places is two items. The content hash (SHA-256 of the image bytes) says
*what* it is. Two policies (``vmem ingest --dedupe``):

- ``none`` (default): keep every copy; after the run, list each embedded row whose content
  hash is already in another committed batch, or earlier in this run (smallest source first),
  in ``ROOT/rejected/<batch>/duplicates-<run>.parquet`` (``DUPLICATES_SCHEMA``), counted as
  ``duplicate_content`` in the manifest and the summary. Nothing is rejected.
- ``content``: skip them before decoding: every copy but the first (smallest source) of a
  content hash in this run, and every item whose hash another committed batch holds, goes to
  ``rejected/`` (stage ``dedupe``, ``DuplicateContent``, naming the copy it repeats). Like
  duplicate keys, these never count against ``--max-reject-ratio``.

Re-ingesting a batch compares it with the *other* batches only, so a re-run is not a duplicate
of itself. Cost: the ``content_hash`` column of every other committed batch is read once per run, file
by file (``key`` and ``source`` only from files holding a match): O(memory) I/O per ingest.
``content`` mode also holds those hashes in memory on each worker (64 hex characters per
remembered row), so it suits memories up to some hundred million rows.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipelines import storage
from pipelines.manifest import (
    DUPLICATES_PREFIX,
    BatchManifest,
    list_batches,
    read_parquet_files,
    rejected_dir,
)
from pipelines.records import ImageRecord, Rejected, content_hash
from pipelines.rules import DEDUPE_POLICIES  # noqa: F401  (re-exported)
from pipelines.schema import USE_COMPLIANT_NESTED_TYPE
from pipelines.transforms import NAMESPACE, REJECTED

_COLUMNS = ["key", "source", "content_hash"]
DUPLICATES_SCHEMA = pa.schema([
    ("key", pa.string()),  # the kept duplicate (this batch)
    ("source", pa.string()),
    ("content_hash", pa.string()),
    ("same_as_batch", pa.string()),  # the first copy: its batch, key and source
    ("same_as_key", pa.string()),
    ("same_as_source", pa.string()),
])


def committed_files(memory: str, exclude_batch: str) -> Iterator[tuple[str, str]]:
    """(batch, embedding file URL) of every committed batch but ``exclude_batch``."""
    for batch in list_batches(memory):
        if batch != exclude_batch:
            for url in BatchManifest.read(memory, batch).embedding_urls(memory):
                yield batch, url


def first_copies(memory: str, exclude_batch: str, wanted: pa.Array | None = None) -> dict[str, tuple]:
    """content hash -> (batch, key, source) of one copy in the other committed batches (the
    first met, batches in name order), read one file at a time; null hashes are ignored.
    With ``wanted`` (a string array) only those hashes are kept, so memory is O(wanted), not
    O(memory), and a file's ``key`` and ``source`` are read only when it holds one of them.
    A file without a ``content_hash`` column raises (pyarrow's error), never skipped."""
    found: dict[str, tuple] = {}
    for batch, url in committed_files(memory, exclude_batch):
        hashes = read_parquet_files([url], columns=["content_hash"]).column("content_hash")
        keep = pc.is_valid(hashes)
        if wanted is not None:
            keep = pc.and_(keep, pc.is_in(hashes, value_set=wanted))
        if not pc.any(keep).as_py():
            continue
        table = read_parquet_files([url], columns=_COLUMNS).filter(keep)
        for key, source, digest in zip(*(table.column(c).to_pylist() for c in _COLUMNS)):
            found.setdefault(digest, (batch, key, source))
    return found


def find_duplicates(memory: str, batch: str, urls: list[str]) -> pa.Table:
    """The rows of this run's embedding files ``urls`` (of ``batch``) that repeat content:
    their hash is in another committed batch, or on a row earlier in this run (order: source,
    then key). Returns a ``DUPLICATES_SCHEMA`` table (empty when none)."""
    if not urls:
        return DUPLICATES_SCHEMA.empty_table()
    run = read_parquet_files(urls, columns=_COLUMNS)
    run = run.filter(pc.is_valid(run.column("content_hash"))).sort_by([("source", "ascending"),
                                                                       ("key", "ascending")])
    hashes = run.column("content_hash").combine_chunks()
    elsewhere = first_copies(memory, batch, pc.unique(hashes))
    digests = hashes.to_pylist()
    _, first_index = np.unique(np.asarray(digests, dtype=object), return_index=True)
    first_of = {digests[i]: i for i in first_index.tolist()}
    keys, sources = run.column("key").to_pylist(), run.column("source").to_pylist()
    rows = []
    for i, digest in enumerate(digests):
        if digest in elsewhere:
            rows.append((keys[i], sources[i], digest, *elsewhere[digest]))
        elif first_of[digest] != i:
            j = first_of[digest]
            rows.append((keys[i], sources[i], digest, batch, keys[j], sources[j]))
    columns = list(zip(*rows)) if rows else [[] for _ in DUPLICATES_SCHEMA]
    return pa.table([pa.array(c, pa.string()) for c in columns], schema=DUPLICATES_SCHEMA)


def write_duplicates(memory: str, batch: str, run_id: str, table: pa.Table) -> list[dict]:
    """Write the listing to ``ROOT/rejected/<batch>/duplicates-<run_id>.parquet`` (atomically)
    and return the manifest's ``duplicate_files`` entry ([] and nothing written when empty)."""
    if not table.num_rows:
        return []
    name = f"{DUPLICATES_PREFIX}{run_id}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, use_compliant_nested_type=USE_COMPLIANT_NESTED_TYPE)
    storage.write_bytes_atomic(storage.join(rejected_dir(memory, batch), name),
                               sink.getvalue().to_pybytes())
    return [{"path": name, "rows": table.num_rows}]


def key_by_content(record: ImageRecord) -> tuple[str, ImageRecord]:
    return content_hash(record.data), record


class DropDuplicateContent(beam.DoFn):
    """``--dedupe content``: records grouped by content hash -> the first (smallest source) as
    main output, unless another committed batch holds that hash; every other copy as a tagged
    ``Rejected`` (stage ``dedupe``, ``DuplicateContent``) naming the copy it repeats.

    The other batches' hashes are read in ``setup`` on each worker (``first_copies``)."""

    def __init__(self, memory: str, batch: str) -> None:
        self.memory, self.batch = memory, batch
        self.skipped = Metrics.counter(NAMESPACE, "duplicate_content_skipped")

    def setup(self) -> None:
        self.elsewhere = first_copies(self.memory, self.batch)

    def process(self, element: tuple[str, Iterable[ImageRecord]]) -> Iterator:
        digest, records = element
        ordered = sorted(records, key=lambda record: (record.source, record.key))
        if digest in self.elsewhere:
            other_batch, other_key, other_source = self.elsewhere[digest]
            first, copies = None, ordered
            where = f"batch {other_batch!r} key {other_key!r} ({other_source})"
        else:
            first, copies = ordered[0], ordered[1:]
            where = f"key {first.key!r} ({first.source}) of this batch"
        if first is not None:
            yield first
        for copy in copies:
            self.skipped.inc()
            yield pvalue.TaggedOutput(REJECTED, Rejected(
                copy.key, copy.source, "dedupe", "DuplicateContent",
                f"same content (sha256 {digest[:16]}…) as {where}; --dedupe content skips it"))
