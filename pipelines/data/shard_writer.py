"""Write WebDataset tar shards (``key.png`` + ``key.cls``) atomically to any fsspec URL."""
from __future__ import annotations

import io
import tarfile
from typing import Iterable, Iterator

from pipelines import storage


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: byte-identical reruns
    tar.addfile(info, io.BytesIO(data))


def shard_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """(key, {extension: bytes}) samples -> the bytes of one tar shard."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, parts in samples:
            for extension, data in parts.items():
                _add(tar, f"{key}.{extension}", data)
    return buffer.getvalue()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_shards(samples: Iterable[tuple[str, dict[str, bytes]]], out: str, prefix: str,
                 shard_size: int) -> list[str]:
    """Write ``out/prefix-000000.tar`` ... each with up to ``shard_size`` samples; return URLs."""
    urls = []
    for index, chunk in enumerate(_chunks(samples, shard_size)):
        url = storage.join(out, f"{prefix}-{index:06d}.tar")
        storage.write_bytes_atomic(url, shard_bytes(chunk))
        urls.append(url)
    return urls
