"""Small fsspec helpers shared by every stage: URL joins and atomic writes (temp + rename)."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import fsspec

CACHE_DIR = Path(os.environ.get("VMEM_CACHE", Path.home() / ".cache" / "visual-memory"))


# An HTTP(S) server that accepts a connection and then never answers would hold a read (a job
# listing its inputs, a source fetched back) for aiohttp's session default of 5 minutes per
# request, again on each of fsspec's calls; these bound the connect and each socket read
# instead (not the whole transfer: a large file from a live server still streams).
HTTP_CONNECT_TIMEOUT_S = 30.0
HTTP_READ_TIMEOUT_S = 60.0


def bound_http_reads(connect_s: float = HTTP_CONNECT_TIMEOUT_S, read_s: float = HTTP_READ_TIMEOUT_S) -> None:
    """Make fsspec's http(s) filesystems created from now on time out (fsspec.exceptions.
    FSTimeoutError, a TimeoutError) when a server takes more than ``connect_s`` seconds to
    accept or ``read_s`` between two reads, through fsspec's configuration (``fsspec.config.
    conf["http"]["client_kwargs"]["timeout"]``, an aiohttp.ClientTimeout); a timeout already
    configured there (an fsspec config file) is kept, and explicit storage options win."""
    import aiohttp

    client = fsspec.config.conf.setdefault("http", {}).setdefault("client_kwargs", {})
    client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=connect_s,
                                                       sock_read=read_s))


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def is_local(url: str) -> bool:
    fs, _ = filesystem(url)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def localize(url: str, cache: str = "weights") -> str:
    """A local file path for ``url``: the path itself when local, else a copy cached under
    ``CACHE_DIR/<cache>/`` (written to a temp file and renamed, so a half-copied file never has
    the final name). Raises FileNotFoundError when a local path does not exist."""
    fs, path = filesystem(url)
    if is_local(url):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{cache} file not found: {url}")
        return path
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = CACHE_DIR / cache / f"{digest}-{Path(path).name}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".", delete=False) as tmp:
            with fs.open(path, "rb") as remote:
                shutil.copyfileobj(remote, tmp)
        os.replace(tmp.name, target)
    return str(target)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Readers see the old content or the new, never a partial file: write a hidden temp file
    beside the target, then rename it over the final name."""
    fs, path = filesystem(url)
    directory, name = posixpath.split(path)
    fs.makedirs(directory, exist_ok=True)
    temp = posixpath.join(directory, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    with fs.open(temp, "wb") as handle:
        handle.write(data)
    try:
        fs.mv(temp, path)
    finally:
        if fs.exists(temp):
            fs.rm(temp)


@contextlib.contextmanager
def staged(url: str) -> Iterator[str]:
    """A local path to write ``url``'s new content to, for libraries that write files
    themselves (FAISS's ``write_index``, Arrow's IPC writer, ``np.save``, a memory map). On
    normal exit the file is renamed over ``url`` (uploaded first when ``url`` is remote), so
    readers see the old content or the new, never a partial file; on an error it is removed
    and nothing is written. Nothing is held in memory."""
    fs, path = filesystem(url)
    directory, name = posixpath.split(path)
    fs.makedirs(directory, exist_ok=True)
    temp = posixpath.join(directory, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    if is_local(url):
        try:
            yield temp
            os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
        return
    with tempfile.TemporaryDirectory(prefix="vmem-upload-") as local:
        local_file = os.path.join(local, name)
        yield local_file
        try:
            fs.put_file(local_file, temp)
            fs.mv(temp, path)
        finally:
            if fs.exists(temp):
                fs.rm(temp)


def write_file_atomic(url: str, write: Callable[[str], None]) -> None:
    """``write(local_path)`` fills the file that then replaces ``url`` atomically (``staged``)."""
    with staged(url) as local:
        write(local)


def local_copy(url: str, scratch: str) -> str:
    """A local path holding ``url``'s bytes: the path itself when local, else a download into
    the directory ``scratch`` (the caller removes it)."""
    if is_local(url):
        return filesystem(url)[1]
    fs, path = filesystem(url)
    target = os.path.join(scratch, f"{uuid.uuid4().hex[:8]}-{posixpath.basename(path)}")
    fs.get_file(path, target)
    return target


def create_exclusive(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` only if nothing has that name yet: the put-if-absent a commit
    protocol needs (whoever writes the name first wins). Raises FileExistsError when the name
    is taken. Local: a hidden temp file hard-linked to the name (``link(2)`` fails on an
    existing name, atomically; readers never see a partial file), or where the mount has no
    hard links an ``O_EXCL`` create. Elsewhere: fsspec's
    ``pipe_file(mode="create")``, a conditional write where the driver makes it one (gcsfs:
    ``ifGenerationMatch=0``; s3fs: ``If-None-Match: *``); a driver that does not falls back to
    fsspec's check-then-write, which two machines could race."""
    fs, path = filesystem(url)
    directory, name = posixpath.split(path)
    fs.makedirs(directory, exist_ok=True)
    if not is_local(url):
        fs.pipe_file(path, data, mode="create")
        return
    temp = posixpath.join(directory, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FUSE mounts such as gcsfuse): O_EXCL still decides
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
    finally:
        os.unlink(temp)


def read_json_if_exists(url: str) -> Any | None:
    """The JSON at ``url``, or None when there is none. Reads the object itself (no listing,
    so no driver's listing cache can hide a file another machine has just written)."""
    fs, path = filesystem(url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def write_json_atomic(url: str, value: Any) -> None:
    write_bytes_atomic(url, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(url: str) -> Any:
    with fsspec.open(url, "rt") as handle:
        return json.load(handle)


def read_json_required(url: str, missing: str) -> Any:
    """JSON that must exist (a manifest): a missing file is a FileNotFoundError saying what."""
    if not exists(url):
        raise FileNotFoundError(f"{missing} ({url})")
    return read_json(url)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def list_names(url: str) -> list[str]:
    """Base names directly under a directory URL ([] when it does not exist)."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


class JsonRecord:
    """A dataclass stored as one JSON file, written atomically: the manifests of every stage.
    A subclass says where it lives (``url_for``) and which field names it (``KEY``)."""

    KEY = ""
    WHAT = "record"

    @classmethod
    def url_for(cls, root: str, name: str) -> str:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, fields: dict) -> "JsonRecord":
        return cls(**fields)

    def write(self, root: str) -> None:
        write_json_atomic(self.url_for(root, getattr(self, self.KEY)), dataclasses.asdict(self))

    @classmethod
    def read(cls, root: str, name: str):
        return cls.from_fields(read_json_required(cls.url_for(root, name),
                                                  f"{cls.WHAT} {name!r} has no manifest"))
