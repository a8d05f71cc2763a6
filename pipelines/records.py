"""The in-flight record types passed between ingest stages, and the ids of remembered items.

Id schemes (recorded per embedding batch as ``BatchManifest.id_scheme``):

- ``ID_SCHEME_KEY`` (``"key"``, batches written before issue 12 kind 1): ``stable_id(key)``,
  a hash of the key alone. Two runs numbering their keys from ``000000000`` collide.
- ``ID_SCHEME_ITEM`` (``"batch-shard-key"``, every batch written since): ``item_id(batch,
  shard, key)``, a hash of the batch name, the shard (read task URL) and the key. Unique across
  batches, sources and runs; the same input re-ingested into the same batch gets the same ids.

- ``ID_SCHEME_API`` (``"api-key"``, items added through the online API): ``api_id(key)``, a
  hash of the key in the ``api`` namespace: one item per key (a retried add is refused as a
  duplicate, never remembered twice), never equal to an ingested item's id.

Old ids are never rewritten: a memory may hold batches of every scheme.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

ID_SCHEME_KEY = "key"
ID_SCHEME_ITEM = "batch-shard-key"
ID_SCHEME_API = "api-key"  # online adds: api_id(key)
API_NAMESPACE = "api"  # the "batch" part of the ids of items added through the online API


def stable_id(key: str) -> int:
    """A 63-bit non-negative id from a source key alone (``ID_SCHEME_KEY``: the ids of batches
    written before ``item_id``; kept so those ids stay what they were and delete-by-key finds
    them by hashing). The same key always gets the same id.

    63 bits (not 64) because FAISS ids are signed int64 and -1 means "no result".
    """
    return _id_of(key.encode("utf-8"))


def item_id(batch: str, shard: str, key: str) -> int:
    """The 63-bit id of the item ``key`` read from ``shard`` (a read task's URL) into embedding
    batch ``batch`` (``ID_SCHEME_ITEM``): the same (batch, shard, key) always gets the same id;
    any part differing gives another. The parts are JSON-encoded before hashing, so
    ``("a/b", "c")`` and ``("a", "b/c")`` never meet."""
    return _id_of(json.dumps([batch, shard, key], ensure_ascii=False).encode("utf-8"))


def item_ids(batch: str, shard: str, keys: list[str]) -> list[int]:
    """``[item_id(batch, shard, k) for k in keys]``, faster: the hash state of the shared
    prefix is computed once and copied per key (bulk imports: millions of keys per shard)."""
    head = json.dumps([batch, shard], ensure_ascii=False)[:-1] + ", "
    base = hashlib.blake2b(head.encode("utf-8"), digest_size=8)
    out = []
    for key in keys:
        state = base.copy()
        state.update((json.dumps(key, ensure_ascii=False) + "]").encode("utf-8"))
        out.append(int.from_bytes(state.digest(), "big") & 0x7FFF_FFFF_FFFF_FFFF)
    return out


def api_id(key: str) -> int:
    """The id of an item added through the online API under ``key``: ``item_id`` in the
    ``API_NAMESPACE`` (no shard). The same key gets the same id, so a retried add is refused as
    a duplicate instead of remembered twice; it never equals an ingested item's id."""
    return item_id(API_NAMESPACE, "", key)


def _id_of(data: bytes) -> int:
    digest = hashlib.blake2b(data, digest_size=8).digest()
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
    batch: str = ""  # the embedding batch it is read into (set by transforms.ReadShard)
    shard: str = ""  # the read task's URL (set by transforms.ReadShard)

    @property
    def id(self) -> int:
        """``item_id(batch, shard, key)`` (``ID_SCHEME_ITEM``)."""
        return item_id(self.batch, self.shard, self.key)


@dataclass(frozen=True)
class PreparedImage:
    """A decoded, validated image, resized and cropped for the encoder: uint8 (3, H, W), normalised
    in the batched forward (``Encoder.embed``)."""

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


@dataclass(frozen=True)
class Skipped:
    """A part of an input read past without being used as an image or a label: a WebDataset
    member (a ``mask.png`` field, a ``.txt`` caption, a second ``.JPG``, tar metadata) or a
    Parquet column. Not an item and not an error: listed (``ROOT/rejected/<batch>/skipped-*``),
    counted as ``skipped_members``, never as read. Sources yield these only when asked
    (``list_skipped``)."""

    key: str  # the sample's key (WebDataset) or the file's stem (Parquet)
    source: str  # <shard URL>#<member>, or <file URL>#column=<name>
    reason: str
