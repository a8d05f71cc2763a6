"""Smoke test of an image, run inside it by tests/test_images.py (`buildah run --isolation
chroot`, as the image's non-root user, no network needed): a tiny ingest -> build -> in-process
query on images written here, and the Serve configs validated. Prints one JSON object.

    python smoke.py [CONFIG ...]   # inside the image; exits non-zero on the first failure

CONFIG: more Serve configs or RayService manifests to validate (``vmem serve --check``) besides
the packaged serving/serve_config.yaml.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def write_images(folder: Path, per_class: int, seed: int) -> None:
    """``folder/<colour>/<n>.png``: 48x48 noisy patches of three colours (seeded)."""
    rng = np.random.default_rng(seed)
    for label, rgb in COLOURS.items():
        (folder / label).mkdir(parents=True)
        for n in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (48, 48, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / label / f"{n}.png")


def query(memory: str, images: list[Image.Image], k: int) -> list[str]:
    """Classify ``images`` in this process with the serving code (answer, merge, RankVoting)."""
    from indexer.search import ShardedIndex
    from indexer.store import resolve_version
    from pipelines.encoders import load_encoder
    from pipelines.encoders.base import EncoderSpec
    from serving.aggregation import Aggregator
    from serving.answers import answer, merge_answers
    from serving.decision import decide

    manifest = resolve_version(memory, None)
    index = ShardedIndex(memory, manifest)
    vectors = load_encoder(EncoderSpec.parse(manifest.encoder)).embed_images(images)
    merged = merge_answers([answer(shard, vectors, k, version=manifest.version)
                            for shard in index.shards], k)
    return [d.label for d in decide(merged.ids, merged.scores, merged.meta, Aggregator("rank", None))]


def main() -> int:
    import faiss
    import torch

    import serving

    work = Path(tempfile.mkdtemp(prefix="vmem-smoke-"))
    write_images(work / "images", per_class=4, seed=0)
    write_images(work / "queries", per_class=1, seed=1)
    memory = str(work / "memory")
    help_text = run("vmem", "--help")
    run("vmem", "ingest", "--input", str(work / "images"), "--memory", memory, "--batch", "smoke")
    run("vmem", "index", "build", "--memory", memory, "--no-ray")
    labels = list(COLOURS)
    images = [Image.open(work / "queries" / label / "0.png").convert("RGB") for label in labels]
    predicted = query(memory, images, k=3)
    packaged = Path(serving.__file__).with_name("serve_config.yaml")
    checked = [run("vmem", "serve", "--check", "--config", str(config)).strip()
               for config in [packaged, *sys.argv[1:]]]
    print(json.dumps({"uid": os.getuid(), "help_lists_commands": "update" in help_text,
                      "expected": labels, "predicted": predicted, "serve_check": checked,
                      "revision": Path("/opt/vmem-lock/REVISION").read_text().strip(),
                      "faiss_gpu_build": hasattr(faiss, "StandardGpuResources"),
                      "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
                      "torch_cuda": torch.version.cuda, "cuda_devices": torch.cuda.device_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
