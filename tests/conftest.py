"""Shared fixtures: small real data (Fashion-MNIST from Debian, scikit-image's bundled photos)
and the offline encoder, loaded once per session."""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
logging.getLogger("apache_beam").setLevel(logging.WARNING)

PHOTO_DIR = Path(__import__("skimage").__file__).parent / "data"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def photo(name: str) -> Image.Image:
    """A real photograph bundled with scikit-image (chelsea.png is a cat, coffee.png a cup)."""
    return Image.open(PHOTO_DIR / name).convert("RGB")


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def fmnist_shards(tmp_path_factory) -> Path:
    """Fashion-MNIST, 10 images per class per split, as WebDataset shards of 40 images."""
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Debian's dataset-fashion-mnist is not installed: run `make test` "
                    "(scripts/install-system-deps.sh installs it)")
    from pipelines.data.fashion_mnist import write_fashion_mnist

    out = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(str(out), per_class=10, shard_size=40)
    return out


@pytest.fixture(scope="session")
def offline_encoder():
    from pipelines.encoders import EncoderSpec, load_encoder

    return load_encoder(EncoderSpec.parse("efficientnet-lite0", device="cpu"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def embedded_memory(fmnist_shards_large, tmp_path_factory) -> Path:
    """A real memory: Fashion-MNIST embedded by the offline encoder through the Beam job, as
    two batches (train A: shards 0-1, train B: shard 2) and a query root (test split)."""
    from pipelines.ingest import IngestConfig, run_ingest

    root = tmp_path_factory.mktemp("embedded")
    shards = fmnist_shards_large
    for batch, pattern, memory in [("train-a", "fashion-mnist-train-{000000..000001}.tar", root / "memory"),
                                   ("train-b", "fashion-mnist-train-000002.tar", root / "memory"),
                                   ("test", "fashion-mnist-test-*.tar", root / "queries")]:
        run_ingest(IngestConfig(inputs=[str(shards / pattern)], memory=str(memory), batch=batch,
                                device="cpu"))
    return root


@pytest.fixture(scope="session")
def fmnist_shards_large(tmp_path_factory) -> Path:
    """Fashion-MNIST, 60 train + 20 test images per class, shards of 200."""
    from pipelines.data.fashion_mnist import write_fashion_mnist

    out = tmp_path_factory.mktemp("fmnist-large")
    write_fashion_mnist(str(out), ("train",), per_class=60, shard_size=200)
    write_fashion_mnist(str(out), ("test",), per_class=20, shard_size=200)
    return out


@pytest.fixture
def memory_copy(embedded_memory, tmp_path) -> str:
    """A private copy of the embedded memory's ROOT, for tests that publish versions."""
    import shutil

    shutil.copytree(embedded_memory / "memory", tmp_path / "memory")
    return str(tmp_path / "memory")


@pytest.fixture(scope="session")
def ray_executor():
    """A real local Ray instance (2 CPUs, loopback), shared by the session's tests."""
    import ray

    from indexer.executor import RayExecutor

    executor = RayExecutor(num_cpus=2)
    yield executor
    ray.shutdown()
