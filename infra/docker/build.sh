#!/usr/bin/env bash
# `make images`: build the project's images on a machine with no Docker engine and no registry,
# then smoke-test each one (tests/test_images.py). Steps:
#   1. the base image from Debian packages (mmdebstrap → buildah), once;
#   2. the build context: the project at HEAD (`git archive`, built into a wheel) and a
#      wheelhouse of the locks (requirements.lock, requirements-gpu.lock), built on the host so
#      the image builds are offline;
#   3. buildah bud --isolation chroot: runtime, ray, worker-cpu; runtime-gpu, ray-gpu, worker-gpu
#      (the `worker` stages; the Dataflow stages need apache/beam_python3.11_sdk: not built here);
#   4. the smoke tests, run inside each image with `buildah run --isolation chroot`.
# Environment: TAG (default dev), WORK (default build/images), GPU=0 skips the GPU images,
# SMOKE=0 skips step 4, PY (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
TAG=${TAG:-dev}
WORK=${WORK:-build/images}
GPU=${GPU:-1}
SMOKE=${SMOKE:-1}
REVISION=$(git rev-parse HEAD)
export BUILDAH_ISOLATION=chroot
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "images: the images carry commit ${REVISION:0:12}; uncommitted changes are not in them" >&2
fi
bash scripts/install-image-tools.sh
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

step() { printf '\n== images: %s (%s)\n' "$1" "$(date -u +%T)"; }

# 1. Base: Debian bookworm (python3 is 3.11, as the locks), from Debian's packages.
BASE=localhost/vmem-base:bookworm
if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  step "base image $BASE from Debian packages (mmdebstrap)"
  rm -f "$WORK/base.tar"
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd,wget \
    bookworm "$WORK/base.tar"
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$WORK/base.tar" /
  buildah config --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
  buildah commit --rm "$ctr" "$BASE"
  rm -f "$WORK/base.tar"
fi

# 2. Context: the project at HEAD as a wheel, the locks, and their wheelhouse.
step "context: the project at ${REVISION:0:12} and a wheelhouse of the locks"
ctx=$WORK/context
rm -rf "$ctx/src" "$ctx"/visual_memory-*.whl
mkdir -p "$ctx/src" "$ctx/wheels" "$WORK/empty"
git archive HEAD | tar -x -C "$ctx/src"
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$ctx" "$ctx/src"
cp infra/docker/requirements.lock infra/docker/requirements-gpu.lock "$ctx/"
locks=(-r infra/docker/requirements.lock)
[ "$GPU" = 1 ] && locks+=(-r infra/docker/requirements-gpu.lock)
"$PY" -m pip wheel --quiet --no-deps --find-links "$ctx/wheels" --wheel-dir "$ctx/wheels" "${locks[@]}"

bud() {  # bud <tag> <dockerfile> <context> [buildah bud options...]
  local tag=$1 file=$2 context=$3; shift 3
  step "build $tag"
  buildah bud --isolation chroot --layers --pull-never --build-arg "REVISION=$REVISION" \
    -f "$file" -t "$tag" "$@" "$context"
}

# 3. Images.
bud "localhost/vmem-runtime:$TAG" infra/docker/Dockerfile.runtime "$ctx" --build-arg "BASE=$BASE" \
  --build-arg LOCK=requirements.lock
bud "localhost/vmem-ray:$TAG" infra/docker/Dockerfile.ray "$WORK/empty" \
  --build-arg "RUNTIME=localhost/vmem-runtime:$TAG"
bud "localhost/vmem-worker-cpu:$TAG" infra/docker/Dockerfile.worker-cpu "$WORK/empty" \
  --build-arg "RUNTIME=localhost/vmem-runtime:$TAG" --target worker
images="localhost/vmem-ray:$TAG localhost/vmem-worker-cpu:$TAG"
if [ "$GPU" = 1 ]; then
  bud "localhost/vmem-runtime-gpu:$TAG" infra/docker/Dockerfile.runtime "$ctx" --build-arg "BASE=$BASE" \
    --build-arg LOCK=requirements-gpu.lock
  bud "localhost/vmem-ray-gpu:$TAG" infra/docker/Dockerfile.ray "$WORK/empty" \
    --build-arg "RUNTIME=localhost/vmem-runtime-gpu:$TAG"
  bud "localhost/vmem-worker-gpu:$TAG" infra/docker/Dockerfile.worker-gpu "$WORK/empty" \
    --build-arg "RUNTIME=localhost/vmem-runtime-gpu:$TAG" --target worker
  images="$images localhost/vmem-ray-gpu:$TAG localhost/vmem-worker-gpu:$TAG"
fi
buildah images --filter reference='localhost/vmem-*'

# 4. Smoke tests, inside each image.
if [ "$SMOKE" = 1 ]; then
  step "smoke tests: $images"
  VMEM_IMAGES="$images" VMEM_IMAGE_REVISION="$REVISION" VMEM_IMAGE_REPORT="$WORK/report" \
    "$PY" -m pytest -p no:cacheprovider tests/test_images.py
  buildah images --json --filter reference='localhost/vmem-*' > "$WORK/report/images.json"
  echo "images: smoke-test results in $WORK/report/"
fi
