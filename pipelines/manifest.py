"""The embedding batch manifest: the commit point of an ingest run.

Files under ``ROOT/embeddings/<batch>/`` count only when the batch's ``_manifest.json`` names
them. The manifest is written atomically, last, so a reader never sees a partial run, and a
re-run of the same input replaces the previous run's files instead of duplicating rows.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.records import ID_SCHEME_ITEM, ID_SCHEME_KEY
from pipelines.schema import USE_COMPLIANT_NESTED_TYPE, conform_embeddings

MANIFEST = "_manifest.json"
FORMAT_VERSION = 1


def embeddings_dir(root: str, batch: str) -> str:
    return storage.join(root, "embeddings", batch)


def rejected_dir(root: str, batch: str) -> str:
    return storage.join(root, "rejected", batch)


@dataclass
class BatchManifest(storage.JsonRecord):
    batch: str
    run_id: str
    created: str
    encoder: str
    dim: int
    files: list[dict] = field(default_factory=list)  # {"path": relative to the batch dir, "rows"}
    rejected_files: list[dict] = field(default_factory=list)  # relative to the rejected dir
    counts: dict = field(default_factory=dict)  # read, embedded, rejected (+ per stage)
    inputs: list[str] = field(default_factory=list)
    source_format: str = ""
    weights: str = ""
    runner: str = ""
    seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    # How the rows' ids were made (pipelines/records.py). A manifest written before the field
    # existed reads as ID_SCHEME_KEY (ids = stable_id(key)), which is what those batches used.
    id_scheme: str = ID_SCHEME_KEY
    # Kept rows whose content hash was already in another batch or earlier in this one
    # (pipelines/dedupe.py): Parquet listings relative to the rejected dir, never counted as
    # rejected (the rows were embedded).
    duplicate_files: list[dict] = field(default_factory=list)
    # Members read past (a WebDataset field not used as image or label, a Parquet column):
    # ``SKIPPED_SCHEMA`` listings relative to the rejected dir, never counted as read.
    skipped_files: list[dict] = field(default_factory=list)

    KEY, WHAT = "batch", "batch (never completed?)"

    @classmethod
    def url_for(cls, root: str, batch: str) -> str:
        return storage.join(embeddings_dir(root, batch), MANIFEST)

    def embedding_urls(self, root: str) -> list[str]:
        return [storage.join(embeddings_dir(root, self.batch), f["path"]) for f in self.files]

    def rejected_urls(self, root: str) -> list[str]:
        return [storage.join(rejected_dir(root, self.batch), f["path"]) for f in self.rejected_files]

    def duplicate_urls(self, root: str) -> list[str]:
        return [storage.join(rejected_dir(root, self.batch), f["path"]) for f in self.duplicate_files]


def list_batches(root: str) -> list[str]:
    """Names of the completed batches (those with a manifest) under ``ROOT/embeddings``."""
    base = storage.join(root, "embeddings")
    return [name for name in storage.list_names(base)
            if storage.exists(storage.join(base, name, MANIFEST))]


def read_parquet_files(urls: list[str], columns: list[str] | None = None) -> pa.Table:
    """The files' rows as one table, boundary-1 columns typed as ``embedding_schema`` types
    them (``schema.conform_embeddings``: files of any writer concatenate)."""
    tables = []
    for url in urls:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            tables.append(conform_embeddings(pq.read_table(handle, columns=columns)))
    return pa.concat_tables(tables) if tables else pa.table({})


def read_embeddings(root: str, batch: str, columns: list[str] | None = None) -> pa.Table:
    manifest = BatchManifest.read(root, batch)
    return read_parquet_files(manifest.embedding_urls(root), columns)


def read_rejected(root: str, batch: str) -> pa.Table:
    manifest = BatchManifest.read(root, batch)
    return read_parquet_files(manifest.rejected_urls(root))


def parquet_rows(url: str) -> int:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def run_files(directory: str, run_id: str, kind: str = "part") -> list[dict]:
    """The Parquet files ``<kind>-<run_id>-*.parquet`` one run wrote into a directory, with
    their row counts."""
    prefix = f"{kind}-{run_id}-"
    return [{"path": name, "rows": parquet_rows(posixpath.join(directory, name))}
            for name in storage.list_names(directory)
            if name.startswith(prefix) and name.endswith(".parquet")]


BEAM_TEMP_PREFIX = "beam-temp-"  # Beam file sinks' temporary folders (left by killed runs)
ONLINE_PREFIX = "online-"  # batches of online adds (serving/editing.py); gc removes unlisted ones
DUPLICATES_PREFIX = "duplicates-"  # content-duplicate listings (pipelines/dedupe.py)
SKIPPED_PREFIX = "skipped-"  # members read past (records.Skipped)


def remove_stale_files(directory: str, keep: list[dict]) -> list[str]:
    """After a manifest commit, delete part files of earlier runs that it no longer names, and
    the ``beam-temp-*`` folders killed runs left (the committing run's own are gone by then:
    Beam removes them when its write finalizes). Returns the removed names."""
    keep_names = {f["path"] for f in keep}
    stale = [name for name in storage.list_names(directory)
             if name.startswith(("part-", DUPLICATES_PREFIX, SKIPPED_PREFIX, BEAM_TEMP_PREFIX))
             and name not in keep_names]
    for name in stale:
        storage.remove(storage.join(directory, name))
    return stale


def write_embedding_batch(root: str, batch: str, table: pa.Table, encoder: str,
                          source_format: str, inputs: list[str] | None = None,
                          id_scheme: str = ID_SCHEME_ITEM) -> BatchManifest:
    """A complete embedding batch from an in-memory table (online adds, derived memories of the
    experiments): one Parquet part written atomically, then the manifest, the commit point.
    ``id_scheme`` says how the table's ids were made; any value but ``ID_SCHEME_KEY`` makes
    delete-by-key scan the key column instead of hashing keys (always correct)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, use_compliant_nested_type=USE_COMPLIANT_NESTED_TYPE)
    name = f"part-{batch}-00000.parquet"
    storage.write_bytes_atomic(storage.join(embeddings_dir(root, batch), name), sink.getvalue().to_pybytes())
    dim = table.schema.field("embedding").type.list_size
    manifest = BatchManifest(batch=batch, run_id=batch, created=datetime.now(timezone.utc).isoformat(),
                             encoder=encoder, dim=int(dim), files=[{"path": name, "rows": table.num_rows}],
                             counts={"read": table.num_rows, "embedded": table.num_rows, "rejected": 0},
                             inputs=list(inputs or []), source_format=source_format,
                             id_scheme=id_scheme)
    manifest.write(root)
    return manifest

