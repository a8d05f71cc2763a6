"""Ingest job: image shards on any fsspec URL -> embedding shards of a visual memory.

    python -m pipelines.ingest --input 'data/fmnist/fashion-mnist-train-*.tar' --memory ROOT

Beam options that this parser does not know (``--runner``, ``--project``, ``--region``,
``--direct_num_workers`` ...) go to Beam unchanged, so the same command runs locally, on
Dataflow, Flink or Spark. Every input is either embedded into ``ROOT/embeddings/<batch>/`` or
rejected with a reason into ``ROOT/rejected/<batch>/``; the batch's ``_manifest.json`` is
written last and is the commit: a failed run leaves the previous batch content intact.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipelines.beam_args import check_pipeline_args
from pipelines.decode import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from pipelines.encoders import DEFAULT_ENCODER
from pipelines.manifest import (SKIPPED_PREFIX, BatchManifest, embeddings_dir, rejected_dir,
                                remove_stale_files, run_files)
from pipelines.records import ID_SCHEME_ITEM
from pipelines.rules import (DEDUPE_POLICIES, DEFAULT_MAX_REJECT_RATIO, bad_rejections,
                             check_encoder, check_reject_ratio, default_batch_name, exit_status)
from pipelines.sources import SOURCE_FORMATS, detect_format
from pipelines.sources.base import DEFAULT_LABEL_FROM
from pipelines.sources.webdataset import DEFAULT_IMAGE_FIELDS
from pipelines.timeouts import DEFAULT_ITEM_TIMEOUT_S
from vmem.helptext import HelpFormatter
from vmem.logs import configure_logging

log = logging.getLogger("vmem.ingest")


@dataclass
class IngestConfig:
    inputs: list[str]
    memory: str
    batch: str = ""
    source_format: str = "auto"
    encoder: str = DEFAULT_ENCODER
    weights: str = ""
    device: str = "auto"
    batch_size: int = 0  # 0: auto (small on CPU, where small batches are faster; large on GPU)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO  # long/short side; 0: no limit
    image_column: str = "image"
    label_column: str = "label"
    key_column: str = "key"
    image_field: str = DEFAULT_IMAGE_FIELDS  # WebDataset: ordered image-field preference
    label_from: str = ""  # "": the format's default (sources.base.DEFAULT_LABEL_FROM)
    unlabelled: str = "keep"  # keep (label null, no vote, counted) | reject
    path_roots: list[str] = field(default_factory=list)  # Parquet path-only image structs
    write_batch_rows: int = 4096
    torch_threads: int = 0  # 0: torch's default (all cores)
    no_glob: bool = False  # every --input is a literal path (no brace/glob expansion)
    item_timeout_s: float = DEFAULT_ITEM_TIMEOUT_S  # per item read and decode; <= 0: none
    max_reject_ratio: float = DEFAULT_MAX_REJECT_RATIO  # bad / read above this: no commit
    dedupe: str = "none"  # none (keep content duplicates, list them) | content (skip them)
    beam_args: list[str] = field(default_factory=list)

    def resolved_batch(self) -> str:
        return self.batch or default_batch_name(self.inputs)

    def resolved_format(self) -> str:
        return self.source_format if self.source_format != "auto" else detect_format(self.inputs[0])


@dataclass
class IngestResult:
    manifest: BatchManifest
    metrics: dict[str, int]

    def summary(self) -> str:
        m, c = self.manifest, self.manifest.counts
        rate = c["embedded"] / m.seconds if m.seconds else 0.0
        duplicates = (f"duplicate_content={c['duplicate_content']} "
                      if c.get("duplicate_content") else "")
        skipped = (f"duplicate_content_skipped={c['duplicate_content_skipped']} "
                   if c.get("duplicate_content_skipped") else "")
        skipped += (f"skipped_members={c['skipped_members']} "
                    if c.get("skipped_members") else "")
        return (f"ingest batch={m.batch} read={c['read']} embedded={c['embedded']} "
                f"rejected={c['rejected']} {duplicates}{skipped}encoder={m.encoder} dim={m.dim} "
                f"in {m.seconds:.1f}s ({rate:.1f} images/s)")


def run_ingest(config: IngestConfig) -> IngestResult:
    """Run the pipeline, list content duplicates (pipelines/dedupe.py), then commit the batch
    manifest; raise RuntimeError if any input went unaccounted, RejectRatioExceeded if more of
    the input was bad than ``config.max_reject_ratio`` (after the rejected rows are written,
    before the commit), ValueError for an unknown ``config.dedupe``, IncompatibleEncoder (before
    anything is read or written) when the memory's other batches were embedded by another
    encoder, which the index step would refuse only after this batch was committed."""
    if config.dedupe not in DEDUPE_POLICIES:
        raise ValueError(f"dedupe={config.dedupe!r}: expected one of {DEDUPE_POLICIES}")
    # Beam and torch are imported here, not with the module: `vmem ingest --help` needs neither
    from pipelines.dedupe import find_duplicates, write_duplicates
    from pipelines.encoders import EncoderSpec, embedding_dim
    from pipelines.encoders.allocator import tune_glibc_malloc
    from pipelines.ingest_pipeline import run_pipeline

    batch = config.resolved_batch()
    spec = EncoderSpec.parse(config.encoder, config.weights, config.device)
    check_encoder(config.memory, batch, spec.name, embedding_dim(spec), f"--encoder {config.encoder!r}")
    tune_glibc_malloc()  # before Beam starts its worker threads (see encoders/allocator.py)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    started = time.monotonic()
    metrics, runner = run_pipeline(config, run_id)

    emb_dir, rej_dir = embeddings_dir(config.memory, batch), rejected_dir(config.memory, batch)
    files, rejected_files = run_files(emb_dir, run_id), run_files(rej_dir, run_id)
    skipped_files = [f for f in run_files(rej_dir, run_id, SKIPPED_PREFIX.rstrip("-")) if f["rows"]]
    embedded = sum(f["rows"] for f in files)
    rejected = sum(f["rows"] for f in rejected_files)
    read = metrics.get("read", embedded + rejected)
    if read != embedded + rejected:
        raise RuntimeError(f"batch {batch}: read {read} inputs but wrote {embedded} embeddings + "
                           f"{rejected} rejected; not committing (previous content kept)")
    check_reject_ratio(bad_rejections(rej_dir, rejected_files), read, config.max_reject_ratio,
                       batch, rej_dir)
    duplicates = find_duplicates(config.memory, batch,
                                 [f"{emb_dir}/{f['path']}" for f in files])
    duplicate_files = write_duplicates(config.memory, batch, run_id, duplicates)
    manifest = BatchManifest(
        batch=batch, run_id=run_id, created=datetime.now(timezone.utc).isoformat(),
        encoder=spec.name, dim=embedding_dim(spec), files=files, rejected_files=rejected_files,
        counts={"read": read, "embedded": embedded, "rejected": rejected,
                "decoded": metrics.get("decoded", 0), "bytes": metrics.get("bytes", 0),
                "unlabelled": metrics.get("unlabelled", 0),
                "duplicate_content": duplicates.num_rows,
                "duplicate_content_skipped": metrics.get("duplicate_content_skipped", 0),
                "skipped_members": sum(f["rows"] for f in skipped_files)},
        inputs=list(config.inputs), source_format=config.resolved_format(),
        weights=config.weights, runner=runner,
        seconds=round(time.monotonic() - started, 3), id_scheme=ID_SCHEME_ITEM,
        duplicate_files=duplicate_files, skipped_files=skipped_files)
    manifest.write(config.memory)  # the commit point
    remove_stale_files(emb_dir, files)
    remove_stale_files(rej_dir, rejected_files + duplicate_files + skipped_files)
    return IngestResult(manifest, metrics)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmem ingest", description=__doc__, formatter_class=HelpFormatter,
        epilog="Any other --option is passed to Apache Beam (e.g. --runner DataflowRunner "
               "--project P --region R --temp_location gs://... --sdk_container_image ...).")
    parser.add_argument("--input", "-i", dest="inputs", action="append", required=True,
                        help="Shard pattern on any fsspec URL; braces and globs expand "
                             "(e.g. 'gs://b/shards/{00000..00999}.tar'). A path that exists "
                             "is taken literally (e.g. 'photos [2024]'); patterns expand only "
                             "when no such path exists. Repeat for several.")
    parser.add_argument("--memory", "-m", required=True,
                        help="ROOT of the visual memory (local folder or fsspec URL).")
    parser.add_argument("--batch", default="",
                        help="Batch name under ROOT/embeddings/ (default: derived from every "
                             "--input, e.g. 'queries-tar-1a2b3c4d' for .../queries/*.tar, so "
                             "re-running the same command replaces the same batch and other "
                             "inputs never do).")
    add_embedding_options(parser, DEFAULT_ENCODER)
    parser.add_argument("--log-level", default="INFO", help="Python logging level.")
    return parser


def add_embedding_options(parser: argparse.ArgumentParser, encoder_default: str | None) -> None:
    """The options that say how a batch is read, checked and embedded, shared by ``vmem
    ingest`` and ``vmem update`` (the fields of IngestConfig other than inputs, memory, batch
    and beam_args). ``encoder_default`` None leaves ``--encoder`` and ``--weights`` None when
    not given, for a caller that takes them from the memory."""
    parser.add_argument("--no-glob", action="store_true",
                        help="Take every --input literally: no brace or glob expansion; a "
                             "missing path is an error.")
    parser.add_argument("--max-reject-ratio", type=float, default=DEFAULT_MAX_REJECT_RATIO,
                        help="Fail (exit 3, nothing committed, rejected rows written) when more "
                             "than this fraction of the inputs is bad (default %(default)s; "
                             "1: never). Duplicates, --unlabelled reject, files "
                             "skipped by extension and non-regular files do not count.")
    parser.add_argument("--dedupe", choices=DEDUPE_POLICIES, default="none",
                        help="Exact duplicate images (same SHA-256 of the bytes) already in "
                             "another batch or earlier in this one. none (default): keep them, "
                             "list them in ROOT/rejected/<batch>/duplicates-*.parquet and count "
                             "them (duplicate_content). content: skip them (rejected, stage "
                             "dedupe, DuplicateContent; not counted as bad input). Item ids "
                             "are a hash of batch + shard URL + key, so the same key in two "
                             "runs or two shards is two items; re-ingesting the same input "
                             "into the same batch gives the same ids.")
    parser.add_argument("--item-timeout", type=float, default=DEFAULT_ITEM_TIMEOUT_S,
                        help="Seconds (default %(default)s) one item may take to read, and "
                             "again to decode and preprocess; past it the item goes to "
                             "rejected/ with TimeoutError (0: no limit). Only regular files "
                             "are read: named pipes, devices and sockets are rejected unopened.")
    parser.add_argument("--format", dest="source_format", default="auto",
                        choices=("auto",) + SOURCE_FORMATS,
                        help="Source layout; auto: .tar -> webdataset, .parquet -> parquet, "
                             "else image folders (label = parent folder).")
    parser.add_argument("--encoder", default=encoder_default,
                        help="efficientnet-lite0|1|2 (offline), open_clip:<model>[:<tag>], or "
                             "timm:<model>[.<tag>] (e.g. timm:vit_large_patch14_dinov2.lvd142m)"
                             + (f" (default {encoder_default})." if encoder_default else
                                ". Default: the encoder that embedded the memory's batches "
                                f"({DEFAULT_ENCODER} for an empty memory); another is refused."))
    parser.add_argument("--weights", default="" if encoder_default else None,
                        help="Encoder weights: local/fsspec path to .safetensors or a torch "
                             "checkpoint (loaded weights-only). Default: "
                             + ("packaged or hub weights." if encoder_default else
                                "those of the memory's batches (packaged or hub weights for an "
                                "empty memory); others are refused."))
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N.")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=0,
                        help="Max images per encoder forward (default: 16 on CPU, 256 on GPU; "
                             "--batch_size is the spelling a Dataflow Flex Template passes).")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="Intra-op threads per forward (default: all cores); with "
                             "--direct_running_mode multi_threading use cores / workers.")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="Reject images with more pixels (decompression-bomb guard; default %(default)s).")
    parser.add_argument("--max-aspect-ratio", type=float, default=DEFAULT_MAX_ASPECT_RATIO,
                        help="Reject images whose long side is more than this many times the "
                             "short side (default %(default)s; 0: no limit), checked on the "
                             "header. Within it, preprocessing center-crops the long side to 4x "
                             "the short before resizing, so memory stays bounded.")
    parser.add_argument("--image-column", default="image", help="Parquet: image bytes column.")
    parser.add_argument("--label-column", default="label", help="Parquet: label column.")
    parser.add_argument("--key-column", default="key",
                        help="Parquet: key column (default key: <file>/<row>).")
    parser.add_argument("--image-field", default=DEFAULT_IMAGE_FIELDS,
                        help="WebDataset: ordered image-field preference, ';'-separated, matched "
                             "case-insensitively; the first field a sample has is its image "
                             f"(default {DEFAULT_IMAGE_FIELDS!r}: a 'mask.png' or 'depth.jpg' "
                             "field is never picked unless named). A sample is every member "
                             "sharing the name up to the first dot; the rest is the field.")
    parser.add_argument("--label-from", default="",
                        help="Where labels come from, ';'-separated in order (first present "
                             "wins): cls | txt | json:<key> (WebDataset), folder (image "
                             "folders), column:<name> (Parquet). Default: webdataset "
                             f"{DEFAULT_LABEL_FROM['webdataset']!r} (a .txt caption is never a "
                             "label unless asked), parquet 'column:<--label-column>', folder "
                             "'folder'. Integral numbers are written as integers (3.0 -> '3').")
    parser.add_argument("--unlabelled", choices=("keep", "reject"), default="keep",
                        help="An item with no label: keep it unlabelled (label null: it never "
                             "votes and is no class; counted as 'unlabelled' in the manifest) "
                             "or reject it (stage read, Unlabelled). Default keep.")
    parser.add_argument("--path-root", dest="path_roots", action="append", default=[],
                        help="Parquet: a Hugging Face {bytes, path} image with null bytes is "
                             "read from its path (relative to the Parquet file's folder); an "
                             "absolute path must lie under that folder or a --path-root. Repeat.")


def config_from_args(args: argparse.Namespace, inputs: list[str], memory: str, batch: str,
                     beam_args: list[str]) -> IngestConfig:
    """The IngestConfig of parsed ``add_embedding_options`` (``args.encoder`` and
    ``args.weights`` already resolved to strings) for these inputs, memory and batch."""
    return IngestConfig(
        inputs=inputs, memory=memory, batch=batch, source_format=args.source_format,
        encoder=args.encoder, weights=args.weights, device=args.device, batch_size=args.batch_size,
        max_pixels=args.max_pixels, max_aspect_ratio=args.max_aspect_ratio,
        image_column=args.image_column, label_column=args.label_column, key_column=args.key_column,
        image_field=args.image_field, label_from=args.label_from, unlabelled=args.unlabelled,
        path_roots=args.path_roots, torch_threads=args.torch_threads, no_glob=args.no_glob,
        item_timeout_s=args.item_timeout, max_reject_ratio=args.max_reject_ratio,
        dedupe=args.dedupe, beam_args=beam_args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_pipeline_args(parser, beam_args)
    configure_logging(args.log_level)
    config = config_from_args(args, args.inputs, args.memory, args.batch, beam_args)
    return exit_status("vmem ingest", lambda: run_ingest(config))


if __name__ == "__main__":
    sys.exit(main())
