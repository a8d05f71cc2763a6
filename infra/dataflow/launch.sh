#!/usr/bin/env bash
# Build the Flex Template and launch the ingest job on Dataflow with GPU workers.
# Requires: gcloud, a GCP project with Dataflow, Artifact Registry and GPUs in the region.
# Status (infra/README.md): NOT run (no GCP here); the template's parameters are checked
# against the ingest's options, and the worker image's `worker` stage is built and smoke-tested
# by `make images`, not its `dataflow` stage (which needs Beam's SDK image).
set -euo pipefail
: "${PROJECT:?}" "${REGION:=us-central1}" "${BUCKET:?}" "${INPUT:?}" "${BATCH:?}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/vmem/worker-gpu:latest"
TEMPLATE="gs://${BUCKET}/templates/visual-memory-ingest.json"

# 1. The worker image (also the launcher: the template runs `python -m pipelines.ingest`).
gcloud builds submit --project "$PROJECT" --tag "$IMAGE" --file infra/docker/Dockerfile.worker-gpu .
# 2. The template spec.
gcloud dataflow flex-template build "$TEMPLATE" --project "$PROJECT" --image "$IMAGE" \
  --sdk-language PYTHON --metadata-file infra/dataflow/flex-template-metadata.json \
  --env FLEX_TEMPLATE_PYTHON_PY_FILE=pipelines/ingest.py
# 3. Launch: one L4 per worker, driver installed by Dataflow, autoscaling between 1 and 64 workers.
gcloud dataflow flex-template run "vmem-ingest-${BATCH}" --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "$TEMPLATE" \
  --parameters input="$INPUT",memory="gs://${BUCKET}/memory",batch="$BATCH",encoder="${ENCODER:-efficientnet-lite0}" \
  --parameters sdk_container_image="$IMAGE",experiments=use_runner_v2 \
  --worker-machine-type g2-standard-8 --max-workers 64 --num-workers 1 \
  --additional-experiments "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" \
  --temp-location "gs://${BUCKET}/tmp" --staging-location "gs://${BUCKET}/staging"

# The same job elsewhere (options, not code):
#   python -m pipelines.ingest --input ... --memory ... --runner FlinkRunner --flink_master host:8081 \
#       --environment_type DOCKER --environment_config vmem-worker-cpu:latest
#   python -m pipelines.ingest --input ... --memory ... --runner SparkRunner --spark_master_url spark://host:7077
