"""Fashion-MNIST (70,000 labelled 28x28 images, 10 classes) as WebDataset shards.

Read from Debian's ``dataset-fashion-mnist`` when installed, else downloaded from the official
source and checked against its published MD5 sums.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from pipelines.data.shard_writer import write_shards
from pipelines.storage import CACHE_DIR

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 sums from the data set's README (zalandoresearch/fashion-mnist).
FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = {"train": "train", "test": "t10k"}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fetch(name: str, base_url: str = OFFICIAL_URL, source_dir: Path = DEBIAN_DIR,
          checksums: dict[str, str] = FILES, cache_dir: Path = CACHE_DIR / "fashion-mnist") -> Path:
    """The local path of one data file: Debian's copy, else a verified cached download."""
    local = source_dir / name
    if local.exists():
        return local
    target = cache_dir / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_suffix(".part")
        with urllib.request.urlopen(base_url.rstrip("/") + "/" + name, timeout=60) as response:
            temp.write_bytes(response.read())
        if md5(temp) != checksums[name]:
            temp.unlink()
            raise ValueError(f"{name}: checksum mismatch against the published MD5 {checksums[name]}")
        os.replace(temp, target)
    return target


def read_idx(path: Path) -> np.ndarray:
    """IDX format (big-endian dims after a magic number) from a .gz file."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split: str, base_url: str = OFFICIAL_URL,
               source_dir: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    prefix = SPLITS[split]
    images = read_idx(fetch(f"{prefix}-images-idx3-ubyte.gz", base_url, source_dir))
    labels = read_idx(fetch(f"{prefix}-labels-idx1-ubyte.gz", base_url, source_dir))
    return images, labels


def select(labels: np.ndarray, per_class: int | None, classes: list[str] | None = None) -> np.ndarray:
    """Indices of the first ``per_class`` images of each wanted class (default all), in file
    order (deterministic)."""
    unknown = sorted(set(classes or []) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown Fashion-MNIST classes {unknown}; the classes are {list(CLASSES)}")
    wanted = [CLASSES.index(c) for c in classes] if classes else range(len(CLASSES))
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in wanted])
    return np.sort(keep)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def samples(split: str, indices: np.ndarray, images: np.ndarray,
            labels: np.ndarray) -> Iterator[tuple[str, dict[str, bytes]]]:
    for index in indices:
        yield (f"{split}-{index:05d}",
               {"png": png(images[index]), "cls": CLASSES[labels[index]].encode()})


def write_fashion_mnist(out: str, splits: tuple[str, ...] = ("train", "test"),
                        per_class: int | None = None, shard_size: int = 10_000,
                        base_url: str = OFFICIAL_URL, source_dir: Path = DEBIAN_DIR,
                        classes: list[str] | None = None) -> dict:
    """Write ``out/fashion-mnist-<split>-NNNNNN.tar``; returns {split: [shard URLs]}."""
    written = {}
    for split in splits:
        images, labels = load_split(split, base_url, source_dir)
        indices = select(labels, per_class, classes)
        written[split] = write_shards(samples(split, indices, images, labels), out,
                                      f"fashion-mnist-{split}", shard_size)
    return written
