r"""``vmem update``: one scheduled step of a living memory — ingest new shards, publish them as
an index version, verify it, and tell serving to reload.

    vmem update --input 'gs://b/daily/2026-11-22/*.tar' --memory gs://b/memory --batch 2026-11-22 \
                --reload-url http://serving:8000 --token-env VMEM_TOKEN

or, as a scheduled job (infra/schedule/), every batch that has arrived and is not served yet:

    vmem update --incoming gs://b/incoming/ --memory gs://b/memory --reload-url http://serving:8000

where each folder under ``--incoming`` is one batch named after it (``incoming/2026-11-22/``
holding ``*.tar`` WebDataset shards, ``*.parquet`` files or image folders ``<label>/<file>``),
taken once it holds ``_SUCCESS`` (``--ready-marker``), which the upload writes last: on an object
store a folder appears file by file. Names starting with ``.`` or ``_`` are skipped.

Each batch is read and embedded as ``vmem ingest`` would (the same options: ``--format``,
``--label-from``, ``--max-reject-ratio`` ...), by the encoder and weights that embedded the
memory's batches unless ``--encoder``/``--weights`` say otherwise (a different one is refused
before anything is embedded: two embedding spaces cannot share an index).

Idempotent: re-running a day re-ingests the same rows into the same batch, and the index step
skips batches the memory already holds. Safe to interrupt: every step commits atomically
(batch manifest, then version manifest, then LATEST), so a failure leaves the last good version
serving and the next run picks up where this one stopped: with ``--incoming``, a round that was
killed is completed by the next (a batch already embedded is not embedded again).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import re
import urllib.request
from dataclasses import dataclass, replace

from indexer.build import BuildConfig, run_build
from indexer.edit import compact_if_due, run_add
from indexer.executor import DeferredExecutor, make_executor
from indexer.layout import read_latest
from indexer.manifest import IndexManifest
from indexer.store import resolve_version, verify_version
from pipelines import storage
from pipelines.beam_args import check_pipeline_args
from pipelines.encoders import DEFAULT_ENCODER
from pipelines.ingest import IngestConfig, add_embedding_options, config_from_args, run_ingest
from pipelines.manifest import BatchManifest, list_batches
from vmem.helptext import HelpFormatter
from vmem.logs import configure_logging

log = logging.getLogger("vmem.update")
API_FORMAT = "api"  # the source_format of batches added through the HTTP API (serving/editing.py)


def publish(memory: str, batch: str, executor, shards: int) -> IndexManifest:
    """Add the batch to LATEST (a delta segment per shard), or build the first version when
    there is none; then compact the shards past the compaction policy (deletes and adds made
    online since the last step are folded in here, off the serving path)."""
    if isinstance(executor, DeferredExecutor):
        executor = executor.resolve()  # Ray starts here, before any writer lock is taken
    if read_latest(memory) is None:
        return run_build(BuildConfig(memory, batches=list_batches(memory), num_shards=shards), executor)
    run_add(memory, [batch], executor)
    return compact_if_due(memory, executor)


def reload_serving(url: str, token: str, timeout: float = 120.0) -> dict:
    request = urllib.request.Request(url.rstrip("/") + "/v1/memory/reload", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (operator URL)
        return json.loads(response.read())


def run_update(inputs: list[str], memory: str, batch: str, executor, shards: int = 1,
               skip_ingest_if_present: bool = False, ingest: IngestConfig | None = None) -> dict:
    """Ingest ``inputs`` as ``batch`` of ``memory`` (how: ``ingest``, an IngestConfig whose
    inputs, memory and batch are replaced; default: IngestConfig's defaults), then publish it
    (``publish``) and verify the published version's files. Returns the round's summary."""
    if skip_ingest_if_present and batch in list_batches(memory):
        ingested = BatchManifest.read(memory, batch)
        log.info("batch %s already ingested (run %s): not re-ingesting", batch, ingested.run_id)
    else:
        template = ingest or IngestConfig(inputs=[], memory=memory)
        ingested = run_ingest(replace(template, inputs=inputs, memory=memory, batch=batch)).manifest
    manifest = publish(memory, batch, executor, shards)
    checked = verify_version(memory, resolve_version(memory, manifest.version))
    return {"batch": batch, "embedded": ingested.counts["embedded"],
            "rejected": ingested.counts["rejected"], "version": manifest.version,
            "operation": manifest.operation, "count": manifest.count, "files_verified": checked}


@dataclass(frozen=True)
class MemoryEncoder:
    """The encoder (its recorded name) and weights that embedded a memory's batches."""

    encoder: str
    weights: str
    batch: str  # the batch they were read from


def memory_encoder(memory: str) -> MemoryEncoder | None:
    """The encoder of the memory's LATEST version (its newest batch), or of its first complete
    batch when no version is published yet; None for a memory with neither. Batches added
    online (``source_format`` api) are passed over while another is there: they record the
    encoder's name but not the weights the serving encoder loaded."""
    latest = read_latest(memory)
    batches = list(resolve_version(memory, latest).batches)[::-1] if latest else list_batches(memory)
    first = None
    for name in batches:  # newest first; usually the first one read decides
        manifest = BatchManifest.read(memory, name)
        if manifest.source_format != API_FORMAT:
            return MemoryEncoder(manifest.encoder, manifest.weights, name)
        first = first or manifest
    return MemoryEncoder(first.encoder, first.weights, first.batch) if first else None


def resolve_encoder(memory: str, encoder: str | None, weights: str | None) -> tuple[str, str]:
    """(encoder, weights) for a new batch of ``memory``: those given, defaulting to the ones
    that embedded the memory's batches (``memory_encoder``; DEFAULT_ENCODER and packaged
    weights for an empty memory). Raises ValueError when a given encoder or weights differ from
    the memory's: vectors of two embedding spaces cannot share an index, and a batch embedded
    by the wrong encoder would otherwise be committed before the index step refuses it."""
    from pipelines.encoders import EncoderSpec

    recorded = memory_encoder(memory)
    if recorded is None:
        return encoder or DEFAULT_ENCODER, weights or ""
    if encoder is not None and EncoderSpec.parse(encoder).name != recorded.encoder:
        raise ValueError(f"--encoder {encoder}: the memory's batches were embedded by "
                         f"{recorded.encoder} (batch {recorded.batch}); a batch must be "
                         "embedded by the same encoder (leave --encoder out to use it)")
    if weights is not None and weights != recorded.weights:
        raise ValueError(f"--weights {weights or '(packaged)'}: the memory's batches were "
                         f"embedded with weights {recorded.weights or '(packaged)'} (batch "
                         f"{recorded.batch}); leave --weights out to use them")
    return recorded.encoder, recorded.weights


READY = "_SUCCESS"  # the marker an upload writes last (Hadoop's and Spark's convention)
BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
GLOB_CHARS = re.compile(r"[*?\[\]{}]")


def batch_inputs(folder: str) -> list[str]:
    """The ingest inputs of one incoming batch folder, named one by one so the batch records
    exactly what went in: its ``.tar`` shards, or its ``.parquet`` files, or (neither present)
    the folder itself as an image-folder tree (``<label>/<file>``). Raises ValueError for a
    folder holding both kinds, and for a shard name the ingest would read as a pattern."""
    names = [n for n in storage.list_names(folder) if not n.startswith((".", "_"))]
    kinds = {suffix: [n for n in names if n.endswith(suffix)] for suffix in (".tar", ".parquet")}
    if kinds[".tar"] and kinds[".parquet"]:
        raise ValueError(f"{folder} holds both .tar and .parquet files: one format per batch")
    files = kinds[".tar"] or kinds[".parquet"]
    for name in files:
        if GLOB_CHARS.search(name):
            raise ValueError(f"{storage.join(folder, name)}: a shard name must not contain "
                             "* ? [ ] { } (the ingest reads those as a pattern)")
    return [storage.join(folder, name) for name in files] or [folder]


def pending_batches(incoming: str, memory: str, ready_marker: str = READY) -> list[tuple[str, list[str]]]:
    """``[(batch, inputs)]`` for every folder under ``incoming`` that is complete (holds
    ``ready_marker``; "" = every folder, for uploads renamed into place atomically) and that the
    memory's LATEST version does not hold yet, in name order (dates sort as they happened).
    Folders named ``.x`` or ``_x`` are skipped. A missing local ``incoming`` raises
    FileNotFoundError; a missing object-store prefix (they have no empty folders) is no batch
    yet. Raises ValueError for a folder name that is not a batch name ([A-Za-z0-9._-])."""
    if not storage.exists(incoming):
        if storage.is_local(incoming):
            raise FileNotFoundError(f"--incoming {incoming} does not exist")
        log.warning("nothing under %s yet", incoming)
        return []
    latest = read_latest(memory)
    served = set(resolve_version(memory, latest).batches) if latest else set()
    fs, path = storage.filesystem(incoming)
    pending = []
    for name in storage.list_names(incoming):
        if name.startswith((".", "_")) or name in served or not fs.isdir(posixpath.join(path, name)):
            continue
        if not BATCH_NAME.fullmatch(name):
            raise ValueError(f"{storage.join(incoming, name)}: a batch folder is named with "
                             "letters, digits, '.', '_' and '-' only")
        folder = storage.join(incoming, name)
        if ready_marker and not storage.exists(storage.join(folder, ready_marker)):
            log.info("batch %s: no %s yet (upload in progress?): not this round", name, ready_marker)
            continue
        pending.append((name, batch_inputs(folder)))
    return pending


def run_pending(incoming: str, memory: str, executor, shards: int = 1,
                ingest: IngestConfig | None = None, ready_marker: str = READY) -> list[dict]:
    """Ingest and publish every pending batch of ``incoming`` (``pending_batches``), oldest
    first, one version each (embedded as ``ingest`` says: see run_update); a batch already
    embedded by a killed round is not embedded again.
    Returns one ``run_update`` summary per batch ([] when nothing is pending). Stops at the
    first batch that fails, raising its error: the batches before it stay published (each is
    logged as it is), the failing one and those after it are pending for the next round."""
    summaries = []
    for batch, inputs in pending_batches(incoming, memory, ready_marker):
        summaries.append(run_update(inputs, memory, batch, executor, shards,
                                    skip_ingest_if_present=True, ingest=ingest))
        log.info("published batch %s: %s", batch, json.dumps(summaries[-1]))
    return summaries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmem update", description=__doc__,
                                     formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", "-i", dest="inputs", action="append",
                        help="Shard pattern of the new images (repeatable; needs --batch).")
    source.add_argument("--incoming", default=None,
                        help="Folder of batch folders (one per day, say): ingest and publish "
                             "every complete one the memory does not serve yet, oldest first.")
    parser.add_argument("--ready-marker", default=READY,
                        help="With --incoming: a batch folder is complete once it holds this "
                             "file, written last by the upload (default %(default)s; '' takes "
                             "every folder, for uploads renamed into place atomically).")
    parser.add_argument("--memory", "-m", required=True, help="ROOT of the visual memory.")
    parser.add_argument("--batch", default="",
                        help="Batch name of --input, e.g. the date: the unit of idempotence.")
    parser.add_argument("--shards", type=int, default=1, help="Shards of the first build.")
    parser.add_argument("--skip-ingest-if-present", action="store_true",
                        help="Do not re-embed a batch that already has a manifest.")
    parser.add_argument("--ray-address", default=None, help="Ray cluster for the index step.")
    parser.add_argument("--no-ray", action="store_true", help="Run the index step in-process.")
    parser.add_argument("--reload-url", default="", help="Serving base URL to reload afterwards.")
    parser.add_argument("--token-env", default="VMEM_TOKEN", help="Variable holding the serving token.")
    embedding = parser.add_argument_group("how each batch is read and embedded (as vmem ingest)")
    add_embedding_options(embedding, encoder_default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_pipeline_args(parser, beam_args)
    if args.inputs and not args.batch:
        parser.error("--input needs --batch (the unit of idempotence, e.g. the date)")
    if args.incoming is not None and (args.batch or args.skip_ingest_if_present or not args.incoming):
        parser.error("--incoming takes no --batch or --skip-ingest-if-present (each folder is a "
                     "batch, never embedded twice) and needs a folder")
    configure_logging("INFO")
    try:
        args.encoder, args.weights = resolve_encoder(args.memory, args.encoder, args.weights)
    except ValueError as error:
        parser.error(str(error))
    ingest = config_from_args(args, [], args.memory, "", beam_args)
    # Ray starts when the first batch is published, not before its ingest: a round with
    # nothing pending, or killed while it embeds, starts none
    executor = DeferredExecutor(lambda: make_executor(args.ray_address, use_ray=not args.no_ray))
    if args.incoming:
        rounds = run_pending(args.incoming, args.memory, executor, args.shards, ingest,
                             args.ready_marker)
        summary = {"incoming": args.incoming, "batches": rounds,
                   "version": rounds[-1]["version"] if rounds else read_latest(args.memory)}
    else:
        summary = run_update(args.inputs, args.memory, args.batch, executor, args.shards,
                             args.skip_ingest_if_present, ingest)
    published = summary.get("batches", [summary])
    if args.reload_url and published:  # nothing published: serving has nothing to reload
        summary["serving"] = reload_serving(args.reload_url, os.environ.get(args.token_env, ""))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    from indexer import program

    program.run(main)
