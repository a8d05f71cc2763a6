"""The in-flight record types passed between ingest stages, and the stable id of a key."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def stable_id(key: str) -> int:
    """A 63-bit non-negative id from a source key: the same key always gets the same id.

    63 bits (not 64) because FAISS ids are signed int64 and -1 means "no result".
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def content_hash(data: bytes) -> str:
    """Hex SHA-256 of the raw image bytes: detects the same image under different keys."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageRecord:
    """One raw input image as read from a shard, before any decoding."""

    key: str  # unique within the data set, e.g. the WebDataset __key__ or a relative path
    source: str  # where it came from: shard URL + member, or file URL
    label: str | None  # None: unlabelled (no class; excluded from kNN votes)
    data: bytes

    @property
    def id(self) -> int:
        return stable_id(self.key)


@dataclass(frozen=True)
class PreparedImage:
    """A decoded, validated image turned into the encoder's input tensor (C, H, W float32)."""

    id: int
    key: str
    source: str
    label: str | None
    content_hash: str
    pixels: np.ndarray


@dataclass(frozen=True)
class Rejected:
    """An input that could not be embedded, and why. Every input is embedded or rejected."""

    key: str
    source: str
    stage: str  # "read", "decode", "embed", "dedupe"
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, key: str, source: str, stage: str, error: BaseException) -> "Rejected":
        return cls(key, source, stage, type(error).__name__, str(error)[:2000])
