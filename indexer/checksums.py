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


_verified: dict[tuple, bool] = {}  # (url, digest, size, mtime) of files this process checked
_failed: dict[tuple, str] = {}  # the same key -> the mismatch found: an unchanged bad file fails again


def _stamp(url: str) -> tuple | None:
    """What changes when a file is rewritten: size and modification time, and where the store
    reports them the inode, change time and ETag (a repair that restores size and mtime, such
    as ``cp -p`` or a snapshot restore, still changes those). None when no time is known."""
    fs, path = storage.filesystem(url)
    info = fs.info(path)
    modified = info.get("mtime") or info.get("updated") or info.get("LastModified") or info.get("created")
    if modified is None:
        return None
    return (info.get("size"), str(modified), info.get("ino"), str(info.get("created")),
            info.get("ETag") or info.get("etag") or info.get("md5Hash"))


def verify_file(url: str, expected: str) -> None:
    """Hash ``url`` and compare with ``expected``; raises ChecksumMismatch. A file this process
    already verified, unchanged since (same size and modification time), is not hashed again:
    versions share files, so an edit or a replica following a new version hashes only the
    files that are new (an immutable file's stamp does not change). Likewise a file that failed
    and has not changed since fails again without being read (a corrupt file that several
    versions share, tried for each: serving/searchers.py); a repaired file is hashed again."""
    stamp = _stamp(url)
    key = (url, expected, stamp)
    if stamp is not None and key in _verified:
        return
    if stamp is not None and key in _failed:
        raise ChecksumMismatch(_failed[key])
    actual = sha256_file(url)
    if actual != expected:
        message = f"{url}: sha256 {actual} does not match the manifest's {expected}"
        if stamp is not None:
            _failed[key] = message
        raise ChecksumMismatch(message)
    if stamp is not None:
        _verified[key] = True
