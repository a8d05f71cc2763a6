"""The ingest job's Beam pipeline (``vmem ingest``; pipelines/ingest.py is the job: its config,
command line and commit): read tasks -> records -> decode and preprocess -> RunInference with
the encoder -> embedding and rejected Parquet files of one run. Imports Beam and torch: the job
imports this module only when it runs, so ``vmem ingest --help`` starts in a second."""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import fsspec_beam  # noqa: F401  (registers memory:// and file:// for Beam)
from pipelines.decode import DecodePolicy
from pipelines.dedupe import DropDuplicateContent, key_by_content
from pipelines.encoders import EncoderSpec, embedding_dim, preprocessing_for, resolve_device
from pipelines.inference import EncoderModelHandler
from pipelines.manifest import SKIPPED_PREFIX, embeddings_dir, rejected_dir
from pipelines.schema import (REJECTED_SCHEMA, SKIPPED_SCHEMA, USE_COMPLIANT_NESTED_TYPE,
                              embedding_schema)
from pipelines.sources import expand_urls, make_source
from pipelines.sources.guard import GuardedSource
from pipelines.transforms import (NAMESPACE, REJECTED, SKIPPED, DecodeAndPrepare, KeepFirstOfKey,
                                  ProgressLogger, ReadShard, failed_batch_to_rejected,
                                  rejected_to_table, results_to_table, skipped_to_table)

LOCAL_RUNNER = "FnApiRunner"  # Beam's in-process Python runner (Prism needs a download)
log = logging.getLogger("vmem.ingest")


def default_batch_size(spec: EncoderSpec) -> int:
    """Measured (bench/ingest.py): on CPU a forward of 8-16 images beats 64 by 2x (the
    activations stay in cache); on GPU large batches fill the device."""
    return 256 if resolve_device(spec.device).type == "cuda" else 16


def embeddings_sink(memory: str, batch: str, run_id: str, dim: int) -> beam.PTransform:
    """Boundary 1's Beam sink: Arrow tables of ``embedding_schema(dim)`` in, Parquet files
    ``ROOT/embeddings/<batch>/part-<run_id>-*.parquet`` out, written with the same Parquet
    options as ``manifest.write_embedding_batch`` (``schema.USE_COMPLIANT_NESTED_TYPE``)."""
    return beam.io.WriteToParquetBatched(
        f"{embeddings_dir(memory, batch)}/part-{run_id}", schema=embedding_schema(dim),
        file_name_suffix=".parquet", use_compliant_nested_type=USE_COMPLIANT_NESTED_TYPE)


def build_pipeline(pipeline: beam.Pipeline, config, run_id: str) -> None:
    source = make_source(config.resolved_format(), config.image_column, config.label_column,
                         config.key_column, image_field=config.image_field,
                         label_from=config.label_from, path_roots=tuple(config.path_roots),
                         list_skipped=True)
    if config.no_glob:
        # Existing paths are always taken literally (sources/urls.py); --no-glob only forbids
        # falling back to expansion, so a missing literal path is an error here.
        expand_urls(config.inputs, glob=False)
    tasks = source.plan(config.inputs)
    # Only regular files are opened, and every item has a time limit (sources/guard.py).
    source = GuardedSource(source, config.item_timeout_s)
    spec = EncoderSpec.parse(config.encoder, config.weights, config.device)
    dim = embedding_dim(spec)
    batch = config.resolved_batch()
    log.info("%d read tasks from %s (%s), encoder %s (dim %d)", len(tasks), config.inputs,
             source.name, spec.name, dim)

    read = (pipeline
            | "PlanReads" >> beam.Create(tasks)
            | "ReadShards" >> beam.ParDo(ReadShard(source, config.unlabelled, batch))
            .with_outputs(REJECTED, SKIPPED, main="images"))
    # Grouping by id (batch, shard, key) both drops repeated keys of one shard and spreads the
    # work across workers.
    unique = (read.images
              | "KeyById" >> beam.Map(lambda record: (record.id, record))
              | "GroupById" >> beam.GroupByKey()
              | "KeepFirst" >> beam.ParDo(KeepFirstOfKey()).with_outputs(REJECTED, main="images"))
    rejected = [read[REJECTED], unique[REJECTED]]
    images = unique.images
    if config.dedupe == "content":  # pipelines/dedupe.py: skip content seen before
        distinct = (images
                    | "KeyByContent" >> beam.Map(key_by_content)
                    | "GroupByContent" >> beam.GroupByKey()
                    | "DropDuplicateContent" >> beam.ParDo(DropDuplicateContent(config.memory, batch))
                    .with_outputs(REJECTED, main="images"))
        rejected.append(distinct[REJECTED])
        images = distinct.images
    prepared = images | "Decode" >> beam.ParDo(
        DecodeAndPrepare(preprocessing_for(spec),
                         DecodePolicy(max_pixels=config.max_pixels,
                                      max_aspect_ratio=config.max_aspect_ratio),
                         config.item_timeout_s)
    ).with_outputs(REJECTED, main="images")
    batch_size = config.batch_size or default_batch_size(spec)
    # On CPU a fixed batch size (min = max) avoids BatchElements' ramp-up through slow sizes.
    on_gpu = resolve_device(spec.device).type == "cuda"
    handler = EncoderModelHandler(spec, min_batch_size=min(32, batch_size) if on_gpu else batch_size,
                                  max_batch_size=batch_size, torch_threads=config.torch_threads)
    embedded, failed = prepared.images | "Embed" >> RunInference(handler).with_exception_handling()
    failed_embeds = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_to_rejected)

    (embedded
     | "Progress" >> beam.ParDo(ProgressLogger())
     | "BatchRows" >> beam.BatchElements(min_batch_size=256, max_batch_size=config.write_batch_rows)
     | "ToArrow" >> beam.Map(results_to_table, encoder=spec.name)
     | "WriteEmbeddings" >> embeddings_sink(config.memory, batch, run_id, dim))
    (tuple(rejected + [prepared[REJECTED], failed_embeds])
     | "AllRejected" >> beam.Flatten()
     | "BatchRejected" >> beam.BatchElements(min_batch_size=1, max_batch_size=4096)
     | "RejectedToArrow" >> beam.Map(rejected_to_table)
     | "WriteRejected" >> beam.io.WriteToParquetBatched(
         f"{rejected_dir(config.memory, batch)}/part-{run_id}",
         schema=REJECTED_SCHEMA, file_name_suffix=".parquet", num_shards=1))
    (read[SKIPPED]
     | "BatchSkipped" >> beam.BatchElements(min_batch_size=1, max_batch_size=4096)
     | "SkippedToArrow" >> beam.Map(skipped_to_table)
     | "WriteSkipped" >> beam.io.WriteToParquetBatched(
         f"{rejected_dir(config.memory, batch)}/{SKIPPED_PREFIX}{run_id}",
         schema=SKIPPED_SCHEMA, file_name_suffix=".parquet", num_shards=1))


def counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def run_pipeline(config, run_id: str) -> tuple[dict[str, int], str]:
    """Build and run the pipeline of ``config`` (an ``IngestConfig``) for run ``run_id``, to the
    end. Returns the job's Beam counters by name and the runner that ran it (Beam's
    ``--runner`` among ``config.beam_args``; LOCAL_RUNNER when none is given). Raises what
    the pipeline raised."""
    options = PipelineOptions(config.beam_args)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = LOCAL_RUNNER
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config, run_id)
    result = pipeline.run()
    result.wait_until_finish()
    return counters(result), str(options.view_as(StandardOptions).runner)
