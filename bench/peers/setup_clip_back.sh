#!/usr/bin/env bash
# Create bench/.venv-clip-back: clip-retrieval's `clip back` server as a benchmark peer.
# It lives in its own virtualenv and is never a dependency of the project.
#
#   bash bench/peers/setup_clip_back.sh          # idempotent: a no-op once installed
#   PYTHON=python3.11 bash bench/peers/setup_clip_back.sh
#   TORCH_SPEC='torch==2.13.0' TORCHVISION_SPEC='torchvision==0.28.0' bash ...   # another torch
#
# Pins, and why:
#  - clip-retrieval 2.45.0 pulls all-clip 1.3.0 (imports OpenAI `clip` from clip-anytorch at
#    import time), open-clip-torch < 3, numpy < 2, pyarrow < 16.
#  - torch 2.14.1 + torchvision 0.29.1: the project's own versions (clip back allows any
#    torch < 3), so pip reuses the wheels already on this machine. Not the CPU-only
#    torch-2.13.0+cpu wheel that also lies here: PyPI has no CPU torchvision, and the CUDA
#    torchvision fails to import on a CPU torch ("operator torchvision::nms does not exist").
#  - setuptools < 70: clip-anytorch does `from pkg_resources import packaging`, which newer
#    setuptools no longer provides. torch 2.14 declares setuptools >= 77.0.3 (only used
#    for building C++ extensions), so setuptools is downgraded last with --no-deps; `pip check`
#    then reports that one known mismatch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${CLIP_BACK_VENV:-$HERE/../.venv-clip-back}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
CLIP_RETRIEVAL_SPEC="${CLIP_RETRIEVAL_SPEC:-clip-retrieval==2.45.0}"

KEY="$(cat "${BASH_SOURCE[0]}" | cksum | cut -d' ' -f1)-$(echo "$TORCH_SPEC $TORCHVISION_SPEC $CLIP_RETRIEVAL_SPEC" | cksum | cut -d' ' -f1)"
STAMP="$VENV/.installed-$KEY"
PY="$VENV/bin/python"

check() {
    "$PY" -c 'import clip_retrieval.clip_back, all_clip, faiss, torch, open_clip, pyarrow' 2>/dev/null
}

if [ -f "$STAMP" ] && check; then
    echo "clip back venv up to date: $VENV"
    exit 0
fi

test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
# torch first, on its own (the largest download when the wheels are not already here).
"$PY" -m pip install -q "$TORCH_SPEC" "$TORCHVISION_SPEC"
"$PY" -m pip install -q "$CLIP_RETRIEVAL_SPEC" "all-clip==1.3.0" "$TORCH_SPEC" "$TORCHVISION_SPEC" \
    "faiss-cpu>=1.8,<2" "requests"
"$PY" -m pip install -q --no-deps "setuptools<70"
"$PY" -m pip check || true   # expected: torch requires setuptools>=77.0.3 (harmless here)

check || { echo "clip back venv: import check failed" >&2; "$PY" -c 'import clip_retrieval.clip_back, all_clip'; exit 1; }
rm -f "$VENV"/.installed-* && touch "$STAMP"
"$PY" - <<'EOF'
import importlib.metadata as m
print("clip back venv ready:", ", ".join(f"{p} {m.version(p)}" for p in
      ("clip-retrieval", "all-clip", "torch", "open-clip-torch", "faiss-cpu", "numpy", "pyarrow",
       "flask", "setuptools")))
EOF
