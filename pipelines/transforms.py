"""The ingest job's Beam transforms; each routes what it cannot process to a `rejected` output."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipelines.decode import DecodePolicy, ImageRejected, decode_image
from pipelines.timeouts import DEFAULT_ITEM_TIMEOUT_S, call_with_timeout
from pipelines.encoders import Preprocessing
from pipelines.records import ImageRecord, PreparedImage, Rejected, Skipped, content_hash
from pipelines.schema import embedding_batch, rejected_batch, skipped_batch
from pipelines.sources import ReadTask, Source

NAMESPACE = "vmem.ingest"
REJECTED = "rejected"
SKIPPED = "skipped"  # members read past (records.Skipped): listed, not counted as read
log = logging.getLogger(__name__)


class ReadShard(beam.DoFn):
    """A read task -> ImageRecords (main), Rejected (tagged ``rejected``) and Skipped members
    (tagged ``skipped``, not counted as read): a broken shard is data, not a crash.

    Each record is stamped with the embedding batch and the task's URL, from which its id is
    made (``records.item_id``)."""

    def __init__(self, source: Source, unlabelled: str = "keep", batch: str = "") -> None:
        """``unlabelled``: ``keep`` (label None, counted as ``unlabelled``) or ``reject`` (to
        ``rejected/`` as ``Unlabelled``). Raises ValueError for another value. ``batch``: the
        embedding batch the records go to (part of their ids)."""
        if unlabelled not in ("keep", "reject"):
            raise ValueError(f"unlabelled={unlabelled!r}: expected keep or reject")
        self.source = source
        self.unlabelled = unlabelled
        self.batch = batch
        self.read = Metrics.counter(NAMESPACE, "read")
        self.bytes = Metrics.counter(NAMESPACE, "bytes")
        self.unlabelled_count = Metrics.counter(NAMESPACE, "unlabelled")
        self.skipped = Metrics.counter(NAMESPACE, "skipped_members")

    def process(self, task: ReadTask) -> Iterator:
        for item in self.source.read(task):
            if isinstance(item, Skipped):
                self.skipped.inc()
                yield pvalue.TaggedOutput(SKIPPED, item)
                continue
            self.read.inc()
            if isinstance(item, Rejected):
                yield pvalue.TaggedOutput(REJECTED, item)
            elif item.label is None and self.unlabelled == "reject":
                yield pvalue.TaggedOutput(REJECTED, Rejected(
                    item.key, item.source, "read", "Unlabelled",
                    "no label from --label-from (--unlabelled reject)"))
            else:
                if item.label is None:
                    self.unlabelled_count.inc()
                self.bytes.inc(len(item.data))
                yield dataclasses.replace(item, batch=self.batch, shard=task.url)


class KeepFirstOfKey(beam.DoFn):
    """Grouped by id (one batch, shard and key): keep one record (the smallest source), reject
    the other copies (the same shard listed twice, or a key repeated inside one shard)."""

    def process(self, element: tuple[int, Iterable[ImageRecord]]) -> Iterator:
        _, records = element
        first, *others = sorted(records, key=lambda record: record.source)
        yield first
        for other in others:
            yield pvalue.TaggedOutput(REJECTED, Rejected(
                other.key, other.source, "dedupe", "DuplicateKey",
                f"key {other.key!r} already read from {first.source}"))


class DecodeAndPrepare(beam.DoFn):
    """Decode, validate and preprocess one image, before batching, so one bad image fails alone."""

    def __init__(self, preprocessing: Preprocessing, policy: DecodePolicy,
                 timeout_s: float = DEFAULT_ITEM_TIMEOUT_S) -> None:
        """``timeout_s``: seconds one image may take to decode and preprocess (<= 0: no
        limit); past it the image is rejected (stage decode, TimeoutError)."""
        self.preprocessing = preprocessing
        self.policy = policy
        self.timeout_s = timeout_s
        self.decoded = Metrics.counter(NAMESPACE, "decoded")

    def process(self, record: ImageRecord) -> Iterator:
        try:
            pixels = call_with_timeout(
                lambda: self.preprocessing.pixels(decode_image(record.data, self.policy)),
                self.timeout_s, f"decoding {record.key!r}")
        except (ImageRejected, OSError, ValueError) as error:
            yield pvalue.TaggedOutput(REJECTED, Rejected.from_exception(
                record.key, record.source, "decode", error))
            return
        self.decoded.inc()
        yield PreparedImage(record.id, record.key, record.source, record.label,
                            content_hash(record.data), pixels)


def failed_batch_to_rejected(failure: tuple) -> Iterator[Rejected]:
    """RunInference's dead letters are (batch, exception): one Rejected row per image."""
    batch, error = failure
    for item in batch:
        item = item[1] if isinstance(item, tuple) else item
        yield Rejected.from_exception(item.key, item.source, "embed", error)


class ProgressLogger(beam.DoFn):
    """Counts embedded images and logs throughput every few seconds (local runs' progress)."""

    def __init__(self, every_seconds: float = 5.0) -> None:
        self.every_seconds = every_seconds
        self.embedded = Metrics.counter(NAMESPACE, "embedded")

    def setup(self) -> None:
        self.count, self.started, self.last = 0, time.monotonic(), time.monotonic()

    def process(self, result) -> Iterator:
        self.count += 1
        self.embedded.inc()
        now = time.monotonic()
        if now - self.last >= self.every_seconds:
            self.last = now
            log.info("embedded %d images on this worker (%.1f images/s)",
                     self.count, self.count / (now - self.started))
        yield result


def results_to_table(results: list, encoder: str) -> pa.Table:
    items = [result.example for result in results]
    batch = embedding_batch(
        [i.id for i in items], [i.key for i in items], [i.label for i in items],
        [i.source for i in items], [i.content_hash for i in items],
        _stack([result.inference for result in results]), encoder)
    return pa.Table.from_batches([batch])


def skipped_to_table(rows: list[Skipped]) -> pa.Table:
    return pa.Table.from_batches([skipped_batch(rows)])


def rejected_to_table(rows: list[Rejected]) -> pa.Table:
    beam_metrics = Metrics.counter(NAMESPACE, "rejected")
    beam_metrics.inc(len(rows))
    return pa.Table.from_batches([rejected_batch(rows)])


def _stack(vectors) -> np.ndarray:
    return np.stack(vectors).astype(np.float32, copy=False)
