"""Read remembered images back from their ``source`` URIs, for evidence galleries and audits.

Sources are what the readers record: ``shard.tar#key.ext`` (a WebDataset member),
``file.parquet#row=N`` (a Parquet row) or a plain file URL (an image folder). Requests are
grouped by container so each tar or Parquet file is streamed once, however many images it holds.

Only sources under the caller's allowed roots are opened (``pipelines.sources.policy``): a
stored ``source`` is data, possibly written by an API client, and reading it server-side must
not reach internal hosts or local files (no HTTP redirects are followed either).
"""
from __future__ import annotations

import tarfile
from collections import defaultdict

import fsspec
import pyarrow.parquet as pq

from pipelines.sources.policy import (
    NETWORK_SCHEMES,
    SourcePolicy,
    SourceRefused,
    is_synthetic,
    parse_location,
)


def split_source(uri: str) -> tuple[str, str]:
    """``container#member`` -> (container, member); a plain file -> (uri, "")."""
    container, _, member = uri.partition("#")
    return container, member


def _open(url: str, **kwargs):
    """``fsspec.open`` without following HTTP redirects (a redirect could leave the roots)."""
    if parse_location(url).scheme in NETWORK_SCHEMES:
        kwargs["allow_redirects"] = False
    return fsspec.open(url, "rb", **kwargs)


def _from_tar(url: str, members: set[str]) -> dict[str, bytes]:
    found = {}
    with _open(url, compression="infer") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if info.isfile() and info.name in members:
                found[info.name] = tar.extractfile(info).read()
                if len(found) == len(members):
                    break
    return found


def _from_parquet(url: str, members: set[str], image_column: str) -> dict[str, bytes]:
    rows = {int(m.removeprefix("row=")): m for m in members}
    with _open(url) as handle:
        column = pq.read_table(handle, columns=[image_column]).column(image_column).to_pylist()
    out = {}
    for row, member in rows.items():
        value = column[row] if row < len(column) else None
        out[member] = value.get("bytes") if isinstance(value, dict) else value
    return {m: v for m, v in out.items() if v}


def read_sources(uris: list[str], roots: list[str] | SourcePolicy,
                 image_column: str = "image") -> dict[str, bytes]:
    """``{source: image bytes}`` for every source in ``uris`` that can still be read; a missing
    one is simply absent (the caller shows what it has: the memory may outlive its source
    images), and so is a source with nothing to read (``""``, the API's ``api:<key>``).

    ``roots``: the allowed roots (URL prefixes or absolute paths, see
    ``pipelines.sources.policy``; ``input_roots`` turns a memory's ingest inputs into roots) or
    a ``SourcePolicy``. Raises SourceRefused, before anything is opened, when a source lies
    outside them (its ``source`` and ``reason`` name the first; the message counts the rest)."""
    policy = roots if isinstance(roots, SourcePolicy) else SourcePolicy(roots)
    wanted = [uri for uri in dict.fromkeys(uris) if not is_synthetic(uri)]
    refused = []
    for uri in wanted:
        try:
            policy.check_url(uri)
        except SourceRefused as error:
            refused.append(error)
    if refused:
        first = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise SourceRefused(first.source, f"{first.reason}{more}; not read") from None
    by_container: dict[str, set[str]] = defaultdict(set)
    for uri in wanted:
        container, member = split_source(uri)
        by_container[container].add(member)
    images: dict[str, bytes] = {}
    for container, members in by_container.items():
        try:
            if members == {""}:
                with _open(container) as handle:
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
