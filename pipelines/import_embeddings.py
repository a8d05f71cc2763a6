"""Import job: embeddings users already have -> an embedding batch of a visual memory, without
re-embedding.

    vmem import --embeddings laion/ --encoder open_clip:ViT-B-32 --memory ROOT --batch laion-0
    vmem import --embeddings 'embs/*.npy' --encoder timm:vit_large_patch14_dinov2.lvd142m --memory ROOT
    vmem import --embeddings 'embs/*.parquet' --embedding-column embedding --encoder E --memory ROOT

Inputs (pipelines/sources/embeddings.py): clip-retrieval's output (a folder holding
``img_emb/img_emb_N.npy`` and ``metadata/metadata_N.parquet``, row-aligned), a folder of
``.npy`` files with optional metadata Parquet paired by name, or Parquet files with an
embedding list column. Each row becomes one item of ``ROOT/embeddings/<batch>/`` in the format
ingest writes (boundary 1): id = hash of (batch, embeddings file URL, key); key = the
``--key-column`` value, else ``<file stem>/<row>``; source = the first ``--source-column``
present (``url``, ``image_path``), else ``<file>#row=<n>``; content_hash = the ``--hash-column``
(img2dataset's ``sha256`` of the image bytes) when present, else the SHA-256 of the float32
vector; the vector L2-normalised. A row whose vector is not finite, is all zeros or has another
length goes to ``ROOT/rejected/<batch>/`` with the reason; ``--max-reject-ratio`` and
``--unlabelled`` apply as in ``vmem ingest``; the manifest is written last (the commit).

It streams: a chunk of rows (``--chunk-rows``) at a time is read, checked and written; memory
does not grow with the input. Each input file is one unit of work (``import_part``: its own
output and rejected files): ``--runner local`` converts them one after another in this
process; ``--runner ray`` is a Ray Data job (``ray.data.from_items(parts).map(...)``, one task
per file, as many at once as the cluster has CPUs; ``--ray-address`` joins a cluster), for
LAION-scale folders of hundreds of files. The driver commits once every file is done.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import posixpath
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import (
    BatchManifest,
    embeddings_dir,
    rejected_dir,
    remove_stale_files,
    run_files,
)
from pipelines.records import ID_SCHEME_ITEM, Rejected, item_ids
from pipelines.rules import (
    DEFAULT_MAX_REJECT_RATIO,
    check_encoder,
    check_reject_ratio,
    default_batch_name,
    exit_status,
    is_policy,
)
from pipelines.schema import (
    REJECTED_SCHEMA,
    USE_COMPLIANT_NESTED_TYPE,
    embedding_batch,
    embedding_schema,
    rejected_batch,
)
from pipelines.sources.base import (
    UNLABELLED_POLICIES,
    check_label_kinds,
    normalize_label,
    parse_label_from,
)
from pipelines.sources.embeddings import (
    Chunk,
    EmbeddingPart,
    metadata_rows,
    part_dim,
    part_rows,
    plan_parts,
    read_chunks,
)
from vmem.helptext import HelpFormatter
from vmem.logs import configure_logging

DEFAULT_CHUNK_ROWS = 4096  # measured: as fast as 16384 with half the peak RSS
DEFAULT_SOURCE_COLUMNS = "url;image_path"
DEFAULT_HASH_COLUMN = "sha256"
# Measured (bench/import_embeddings.py): dictionaries only where values repeat and no snappy on
# random floats write a third faster; the files read back as the same schema as ingest's.
EMBEDDING_PARQUET_OPTIONS = {
    "use_dictionary": ["label", "encoder"],
    "compression": {**{name: "snappy" for name in ("id", "key", "label", "source", "content_hash",
                                                   "encoder")}, "embedding.list.item": "none"}}
UNIT_TOLERANCE = 1e-3  # |norm - 1| above this: counted as "normalised"
log = logging.getLogger("vmem.import")


@dataclass
class ImportConfig:
    embeddings: str
    memory: str
    encoder: str
    metadata: str | None = None
    batch: str = ""
    embedding_column: str = "embedding"  # Parquet inputs
    key_column: str = ""  # "": <file stem>/<row>
    source_columns: str = DEFAULT_SOURCE_COLUMNS  # ';'-separated, first present wins
    hash_column: str = DEFAULT_HASH_COLUMN
    label_from: str = ""  # "": unlabelled; column:<name>[;column:<name>...]
    unlabelled: str = "keep"  # keep | reject
    max_reject_ratio: float = DEFAULT_MAX_REJECT_RATIO
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    runner: str = "local"  # local | ray (Ray Data, one task per input file)
    ray_address: str | None = None  # --runner ray: join this cluster (None: local Ray)

    def resolved_batch(self) -> str:
        return self.batch or default_batch_name([self.embeddings])

    def label_columns(self) -> list[str]:
        """The label columns of ``--label-from`` (only ``column:<name>`` applies). Raises
        ValueError for another kind."""
        if not self.label_from:
            return []
        origins = parse_label_from(self.label_from)
        check_label_kinds(origins, ("column",), "import")
        return [name for _, name in origins]


@dataclass
class ImportResult:
    manifest: BatchManifest
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        m, c = self.manifest, self.manifest.counts
        rate = c["read"] / m.seconds if m.seconds else 0.0
        return (f"import batch={m.batch} read={c['read']} embedded={c['embedded']} "
                f"rejected={c['rejected']} unlabelled={c['unlabelled']} "
                f"normalised={c['normalised']} encoder={m.encoder} dim={m.dim} "
                f"in {m.seconds:.1f}s ({rate:.0f} rows/s)")


def check_compatible(config: ImportConfig, dim: int) -> None:
    """Refuse an import the memory could not index with its other batches: another embedding
    length or another encoder name. Raises IncompatibleEncoder (a ValueError) saying which."""
    check_encoder(config.memory, config.resolved_batch(), config.encoder, dim,
                  f"--encoder {config.encoder!r}")


def check_aligned(parts: list[EmbeddingPart]) -> int:
    """Total rows; raises ValueError naming the first part whose metadata file has another
    row count than its embeddings (footers and headers only)."""
    total = 0
    for part in parts:
        rows = part_rows(part)
        if part.metadata is not None and metadata_rows(part.metadata)[0] != rows:
            raise ValueError(f"metadata {part.metadata} has {metadata_rows(part.metadata)[0]} rows "
                             f"but embeddings {part.embeddings} has {rows}: not row-aligned")
        total += rows
    return total


@dataclass
class _Stats:
    read: int = 0
    embedded: int = 0
    rejected: int = 0
    bad: int = 0
    unlabelled: int = 0
    normalised: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, other: _Stats) -> None:
        for name in ("read", "embedded", "rejected", "bad", "unlabelled", "normalised"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.by_reason.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count

    def reject(self, rows: list[Rejected]) -> None:
        self.rejected += len(rows)
        for row in rows:
            self.by_reason[row.error_type] = self.by_reason.get(row.error_type, 0) + 1
            self.bad += not is_policy(row.stage, row.error_type)


def _column(chunk: Chunk, name: str) -> list | None:
    if not name or chunk.metadata is None or name not in chunk.metadata.column_names:
        return None
    return chunk.metadata.column(name).to_pylist()


def convert_chunk(chunk: Chunk, part: EmbeddingPart, batch: str, encoder: str, dim: int,
                  config: ImportConfig, label_columns: list[str], seen_keys: set[str] | None,
                  stats: _Stats) -> tuple[pa.RecordBatch | None, list[Rejected]]:
    """One chunk -> its good rows as an ``embedding_schema(dim)`` batch (None when none) and
    its bad rows as ``Rejected`` (stage ``import``: ``WrongDimension``, ``NonFinite``,
    ``ZeroVector``; stage ``read``: ``Unlabelled`` with ``--unlabelled reject``; stage
    ``dedupe``: ``DuplicateKey``, a ``--key-column`` value repeated in one file).
    ``seen_keys``: the part's keys so far (with ``--key-column``), updated."""
    n = len(chunk.vectors)
    rows = range(chunk.start, chunk.start + n)
    given_keys = _column(chunk, config.key_column)
    stem = part.stem
    keys = [str(given_keys[i]) if given_keys is not None and given_keys[i] is not None else f"{stem}/{row}"
            for i, row in enumerate(rows)]
    source_lists = [c for c in (_column(chunk, name) for name in
                                config.source_columns.split(";") if name) if c is not None]
    sources = [next((str(c[i]) for c in source_lists if c[i] is not None), f"{part.embeddings}#row={row}")
               for i, row in enumerate(rows)]
    label_lists = [c for c in (_column(chunk, name) for name in label_columns) if c is not None]
    labels = [next((lb for lb in (normalize_label(c[i]) for c in label_lists) if lb is not None), None)
              for i in range(n)]
    hashes = _column(chunk, config.hash_column)

    vectors = chunk.vectors
    wrong = chunk.lengths != dim
    finite = np.isfinite(vectors).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf rows: rejected below
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
    reasons: dict[int, tuple[str, str, str]] = {}
    for i in np.flatnonzero(wrong).tolist():
        reasons[i] = ("import", "WrongDimension",
                      f"embedding of length {int(chunk.lengths[i])}, expected {dim}")
    for i in np.flatnonzero(~wrong & ~finite).tolist():
        reasons[i] = ("import", "NonFinite", "embedding holds NaN or Inf")
    for i in np.flatnonzero(~wrong & finite & (norms == 0)).tolist():
        reasons[i] = ("import", "ZeroVector", "embedding is all zeros (no direction)")
    for i in range(n):
        if i in reasons:
            continue
        if labels[i] is None and config.unlabelled == "reject":
            reasons[i] = ("read", "Unlabelled", "no label from --label-from (--unlabelled reject)")
        elif seen_keys is not None:
            if keys[i] in seen_keys:
                reasons[i] = ("dedupe", "DuplicateKey", f"key {keys[i]!r} repeated in {part.embeddings}")
            else:
                seen_keys.add(keys[i])
    rejected = [Rejected(keys[i], sources[i], *reason) for i, reason in sorted(reasons.items())]
    stats.read += n
    stats.reject(rejected)
    good = np.asarray([i for i in range(n) if i not in reasons], dtype=np.int64)
    if not len(good):
        return None, rejected
    kept = vectors[good]
    kept /= norms[good, None].astype(np.float32)
    stats.normalised += int((np.abs(norms[good] - 1) > UNIT_TOLERANCE).sum())
    stats.unlabelled += sum(labels[i] is None for i in good.tolist())
    stats.embedded += len(good)
    digests = [str(hashes[i]) if hashes is not None and hashes[i] else
               hashlib.sha256(vectors[i].tobytes()).hexdigest() for i in good.tolist()]
    good_keys = [keys[i] for i in good.tolist()]
    out = embedding_batch(
        item_ids(batch, part.embeddings, good_keys), good_keys,
        [labels[i] for i in good.tolist()], [sources[i] for i in good.tolist()], digests,
        kept, encoder)
    return out, rejected


class _ParquetOut:
    """A Parquet file on any fsspec URL written batch by batch, opened on the first batch."""

    def __init__(self, url: str, schema: pa.Schema, stack: ExitStack, **options) -> None:
        self.url, self.schema, self.stack, self.writer = url, schema, stack, None
        self.options = options

    def write(self, batch: pa.RecordBatch) -> None:
        if self.writer is None:
            fs, path = fsspec.core.url_to_fs(self.url)
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            handle = self.stack.enter_context(fs.open(path, "wb"))
            self.writer = self.stack.enter_context(pq.ParquetWriter(
                handle, self.schema, use_compliant_nested_type=USE_COMPLIANT_NESTED_TYPE,
                **self.options))
        self.writer.write_batch(batch)


@dataclass(frozen=True)
class PartJob:
    """What every part's conversion shares (sent to Ray tasks with ``--runner ray``)."""

    config: ImportConfig
    batch: str
    run_id: str
    dim: int
    label_columns: list[str]
    columns: list[str]


def import_part(job: PartJob, number: int, part: EmbeddingPart) -> _Stats:
    """Stream one input file into ``embeddings/<batch>/part-<run>-<number>.parquet`` and its bad
    rows into ``rejected/<batch>/part-<run>-<number>.parquet`` (each written only when it gets a
    row), a chunk at a time. Returns the part's counts; raises what reading raises."""
    config, stats = job.config, _Stats()
    seen = set() if config.key_column else None
    emb_dir = embeddings_dir(config.memory, job.batch)
    rej_dir = rejected_dir(config.memory, job.batch)
    with ExitStack() as stack:
        out = _ParquetOut(f"{emb_dir}/part-{job.run_id}-{number:05d}.parquet",
                          embedding_schema(job.dim), stack, **EMBEDDING_PARQUET_OPTIONS)
        rejected_out = _ParquetOut(f"{rej_dir}/part-{job.run_id}-{number:05d}.parquet",
                                   REJECTED_SCHEMA, stack)
        for chunk in read_chunks(part, job.dim, job.columns, config.chunk_rows,
                                 config.embedding_column):
            good, bad = convert_chunk(chunk, part, job.batch, config.encoder, job.dim, config,
                                      job.label_columns, seen, stats)
            if good is not None:
                out.write(good)
            if bad:
                rejected_out.write(rejected_batch(bad))
    return stats


def run_parts(job: PartJob, parts: list[EmbeddingPart]) -> list[_Stats]:
    """Every part through ``import_part``: in this process (``local``) or as a Ray Data job
    (``ray``: one task per part). Raises ValueError for another runner."""
    if job.config.runner == "local":
        return [import_part(job, number, part) for number, part in enumerate(parts)]
    if job.config.runner != "ray":
        raise ValueError(f"--runner {job.config.runner!r}: expected local or ray")
    import ray

    if not ray.is_initialized():
        from indexer.localray import init  # a new local instance on loopback only

        init(job.config.ray_address, include_dashboard=False)

    def convert(row: dict) -> dict:
        return {"number": row["number"],
                "stats": asdict(import_part(job, row["number"], parts[row["number"]]))}

    done = (ray.data.from_items([{"number": n} for n in range(len(parts))],
                                override_num_blocks=len(parts))
            .map(convert, num_cpus=1).take_all())
    by_number = {row["number"]: _Stats(**row["stats"]) for row in done}
    if sorted(by_number) != list(range(len(parts))):
        raise RuntimeError(f"Ray Data returned parts {sorted(by_number)} of {len(parts)}")
    return [by_number[n] for n in range(len(parts))]


def run_import(config: ImportConfig) -> ImportResult:
    """Plan, check, stream every part into the batch, then commit its manifest. Raises
    ValueError (incompatible with the memory, files not row-aligned, a bad option),
    FileNotFoundError (no input), RejectRatioExceeded (after the rejected rows are written,
    before the commit)."""
    if config.unlabelled not in UNLABELLED_POLICIES:
        raise ValueError(f"unlabelled={config.unlabelled!r}: expected one of {UNLABELLED_POLICIES}")
    if config.chunk_rows < 1:
        raise ValueError(f"--chunk-rows {config.chunk_rows}: must be at least 1")
    started = time.monotonic()
    batch = config.resolved_batch()
    label_columns = config.label_columns()  # validates --label-from before anything is read
    parts = plan_parts(config.embeddings, config.metadata)
    dim = part_dim(parts[0], config.embedding_column)
    check_compatible(config, dim)
    total = check_aligned(parts)
    log.info("importing %d rows (dim %d) from %d files into batch %s", total, dim, len(parts), batch)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    emb_dir, rej_dir = embeddings_dir(config.memory, batch), rejected_dir(config.memory, batch)
    columns = [c for c in (config.key_column, *config.source_columns.split(";"),
                           config.hash_column, *label_columns) if c]
    job = PartJob(config, batch, run_id, dim, label_columns, columns)
    stats = _Stats()
    for part_stats in run_parts(job, parts):
        stats.add(part_stats)
    files, rejected_files = run_files(emb_dir, run_id), run_files(rej_dir, run_id)
    written = sum(f["rows"] for f in files), sum(f["rows"] for f in rejected_files)
    if stats.read != total or written != (stats.embedded, stats.rejected):
        raise RuntimeError(f"batch {batch}: planned {total} rows, read {stats.read}, wrote "
                           f"{written[0]} + {written[1]} rejected; not committing")
    check_reject_ratio(stats.bad, stats.read, config.max_reject_ratio, batch, rej_dir)
    source_format = "npy" if parts[0].embeddings.endswith(".npy") else "parquet"
    manifest = BatchManifest(
        batch=batch, run_id=run_id, created=datetime.now(timezone.utc).isoformat(),
        encoder=config.encoder, dim=dim, files=files, rejected_files=rejected_files,
        counts={"read": stats.read, "embedded": stats.embedded, "rejected": stats.rejected,
                "unlabelled": stats.unlabelled, "normalised": stats.normalised,
                **{f"rejected_{reason}": count for reason, count in sorted(stats.by_reason.items())}},
        inputs=[part.embeddings for part in parts] + [p.metadata for p in parts if p.metadata],
        source_format=f"import:{source_format}", runner=f"import-{config.runner}",
        seconds=round(time.monotonic() - started, 3), id_scheme=ID_SCHEME_ITEM)
    manifest.write(config.memory)  # the commit point
    remove_stale_files(emb_dir, files)
    remove_stale_files(rej_dir, rejected_files)
    return ImportResult(manifest, manifest.counts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmem import", description=__doc__, formatter_class=HelpFormatter,
        epilog="Public LAION embeddings (clip-retrieval layout, e.g. the laion2B-en ViT-L/14 "
               "folders with img_emb/ and metadata/ side by side): vmem import --embeddings "
               "<folder> --encoder open_clip:ViT-L-14:openai --memory ROOT --batch laion-part-0 "
               "--label-from column:<label column> (LAION has captions, not classes: without "
               "--label-from the items are unlabelled neighbours). Text embeddings: "
               "--embeddings <folder>/text_emb --metadata <folder>/metadata.")
    parser.add_argument("--embeddings", "-e", required=True,
                        help="A clip-retrieval output folder (holding img_emb/ and metadata/), "
                             "or a file, folder or pattern of .npy files or of .parquet files "
                             "with an embedding list column, on any fsspec URL.")
    parser.add_argument("--metadata", default=None,
                        help="Metadata .parquet files row-aligned with the .npy files, paired by "
                             "the trailing number of the name (img_emb_3.npy <-> "
                             "metadata_3.parquet), else by the stem. Default: the clip-retrieval "
                             "folder's metadata/, else none.")
    parser.add_argument("--memory", "-m", required=True,
                        help="ROOT of the visual memory (local folder or fsspec URL).")
    parser.add_argument("--encoder", required=True,
                        help="The name of the model that made the embeddings, recorded in the "
                             "batch; must equal the memory's encoder when it has batches "
                             "(a different dimension is refused with an error).")
    parser.add_argument("--batch", default="",
                        help="Batch name under ROOT/embeddings/ (default: derived from "
                             "--embeddings; re-running replaces the batch, with the same ids).")
    parser.add_argument("--embedding-column", default="embedding",
                        help="Parquet inputs: the list column holding the vectors.")
    parser.add_argument("--key-column", default="",
                        help="Metadata column giving each item's key (a repeat inside one file "
                             "is rejected as DuplicateKey). Default: <file stem>/<row>.")
    parser.add_argument("--source-column", dest="source_columns", default=DEFAULT_SOURCE_COLUMNS,
                        help="';'-separated metadata columns; the first non-null one is the "
                             "item's source (default %(default)s). Else <file>#row=<n>.")
    parser.add_argument("--hash-column", default=DEFAULT_HASH_COLUMN,
                        help="Metadata column holding the SHA-256 of the image bytes "
                             "(img2dataset's, default %(default)s), so duplicates of ingested "
                             "images are recognised. Else the SHA-256 of the vector.")
    parser.add_argument("--label-from", default="",
                        help="column:<name> (';'-separated, first non-null wins): the label "
                             "column of the metadata. Default: none, every item unlabelled "
                             "(captions are never classes). Integral numbers are written as "
                             "integers (3.0 -> '3').")
    parser.add_argument("--unlabelled", choices=UNLABELLED_POLICIES, default="keep",
                        help="An item with no label: keep it unlabelled (never votes) or "
                             "reject it (stage read, Unlabelled). Default keep.")
    parser.add_argument("--max-reject-ratio", type=float, default=DEFAULT_MAX_REJECT_RATIO,
                        help="Fail (exit 3, nothing committed, rejected rows written) when more "
                             "than this fraction of the rows is bad: NaN/Inf (NonFinite), all "
                             "zeros (ZeroVector), another length (WrongDimension). Default "
                             "%(default)s; 1: never. Unlabelled and duplicate keys do not count.")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="Rows read, checked and written at a time (memory ~ chunk x dim x 4 "
                             "bytes x a few; default %(default)s).")
    parser.add_argument("--runner", choices=("local", "ray"), default="local",
                        help="local: convert the input files one after another in this process; "
                             "ray: a Ray Data job, one task per input file, in parallel (for "
                             "folders of many files). Default %(default)s.")
    parser.add_argument("--ray-address", default=None,
                        help="--runner ray: join this Ray cluster (default: start a local one "
                             "on 127.0.0.1).")
    parser.add_argument("--log-level", default="INFO", help="Python logging level.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    config = ImportConfig(
        embeddings=args.embeddings, memory=args.memory, encoder=args.encoder,
        metadata=args.metadata, batch=args.batch, embedding_column=args.embedding_column,
        key_column=args.key_column, source_columns=args.source_columns,
        hash_column=args.hash_column, label_from=args.label_from, unlabelled=args.unlabelled,
        max_reject_ratio=args.max_reject_ratio, chunk_rows=args.chunk_rows, runner=args.runner,
        ray_address=args.ray_address)
    return exit_status("vmem import", lambda: run_import(config))


if __name__ == "__main__":
    from indexer import program  # --runner ray runs Ray in this process: end as every job does

    program.run(main)
