"""Read remembered images back from their ``source`` URIs, for evidence galleries and audits.

Sources are what the readers record: ``shard.tar#key.ext`` (a WebDataset member),
``file.parquet#row=N`` (a Parquet row) or a plain file URL (an image folder). Requests are
grouped by container so each tar or Parquet file is streamed once, however many images it holds.
"""
from __future__ import annotations

import tarfile
from collections import defaultdict

import fsspec
import pyarrow.parquet as pq


def split_source(uri: str) -> tuple[str, str]:
    """``container#member`` -> (container, member); a plain file -> (uri, "")."""
    container, _, member = uri.partition("#")
    return container, member


def _from_tar(url: str, members: set[str]) -> dict[str, bytes]:
    found = {}
    with fsspec.open(url, "rb", compression="infer") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if info.isfile() and info.name in members:
                found[info.name] = tar.extractfile(info).read()
                if len(found) == len(members):
                    break
    return found


def _from_parquet(url: str, members: set[str], image_column: str) -> dict[str, bytes]:
    rows = {int(m.removeprefix("row=")): m for m in members}
    with fsspec.open(url, "rb") as handle:
        column = pq.read_table(handle, columns=[image_column]).column(image_column).to_pylist()
    out = {}
    for row, member in rows.items():
        value = column[row] if row < len(column) else None
        out[member] = value.get("bytes") if isinstance(value, dict) else value
    return {m: v for m, v in out.items() if v}


def read_sources(uris: list[str], image_column: str = "image") -> dict[str, bytes]:
    """The bytes of every source that can still be read; a missing one is simply absent (the
    caller shows what it has: the memory may outlive its source images)."""
    by_container: dict[str, set[str]] = defaultdict(set)
    for uri in uris:
        container, member = split_source(uri)
        by_container[container].add(member)
    images: dict[str, bytes] = {}
    for container, members in by_container.items():
        try:
            if members == {""}:
                with fsspec.open(container, "rb") as handle:
                    images[container] = handle.read()
            elif container.endswith(".parquet"):
                images.update({f"{container}#{m}": data
                               for m, data in _from_parquet(container, members, image_column).items()})
            else:
                images.update({f"{container}#{m}": data
                               for m, data in _from_tar(container, members).items()})
        except FileNotFoundError:
            continue  # the source is gone; its images are reported as unavailable
    return images
