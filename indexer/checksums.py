"""SHA-256 of artifacts, checked before anything is loaded."""
from __future__ import annotations

import hashlib

from pipelines import storage

CHUNK = 8 * 1024 * 1024


class ChecksumMismatch(RuntimeError):
    """A file's bytes are not the ones its manifest recorded: refuse to load it."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(url: str) -> str:
    fs, path = storage.filesystem(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(url: str, expected: str) -> None:
    actual = sha256_file(url)
    if actual != expected:
        raise ChecksumMismatch(f"{url}: sha256 {actual} does not match the manifest's {expected}")
