"""One trained quantizer per version: segment files hold inverted lists, not quantizers.

A build trains one empty index per version (coarse quantizer and codebooks), stored once as
``<version>/trained.faiss`` and named by the manifest (``trained_path``). Every segment of the
version is encoded with it and written *stripped* (``write_stripped``): its coarse quantizer
is swapped for an empty placeholder of the same dimension while FAISS writes the file, so the
file holds the inverted lists (codes and ids), a header and the PQ codebooks (FAISS's reader
requires those: 256 x d float32, 0.4 MB at d = 384) -- not the nlist x d centroids (100 MB at
nlist 65536, d = 384), nor an HNSW graph over them. Loading attaches the quantizer of the
version's trained index (``attach``), read once per process and shared by every segment and
shard that process serves (``trained_index``).

A stripped IVF index is recognised by its quantizer holding no centroids while ``nlist > 0``
(a trained quantizer holds exactly nlist). Exact indexes (``IDMap2,Flat``) have no quantizer
and are written as they are. Segments written before this scheme carry their own quantizer and
load unchanged.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import faiss

if TYPE_CHECKING:  # pragma: no cover
    from indexer.manifest import IndexManifest


def _ivf(index: faiss.Index):
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_index(ivf)


def is_stripped(index: faiss.Index) -> bool:
    """True when ``index`` is an IVF index whose coarse quantizer was left out of its file."""
    ivf = _ivf(index)
    return ivf is not None and ivf.nlist > 0 and ivf.quantizer.ntotal == 0


def write_stripped(index: faiss.Index, path: str) -> None:
    """Write ``index`` to the local file ``path`` without its coarse quantizer (streamed by
    FAISS's writer: no serialised copy in memory). ``index`` is unchanged afterwards; it must
    not be searched by another thread while this runs. Raises RuntimeError from FAISS."""
    ivf = _ivf(index)
    if ivf is None or is_stripped(index):
        faiss.write_index(index, path)
        return
    quantizer, owned = ivf.quantizer, ivf.own_fields
    placeholder = faiss.IndexFlat(ivf.d, ivf.metric_type)
    ivf.own_fields = False
    ivf.quantizer = placeholder
    try:
        faiss.write_index(index, path)
    finally:
        ivf.quantizer = quantizer
        ivf.own_fields = owned


def attach(index: faiss.Index, trained: faiss.Index) -> faiss.Index:
    """Give a stripped ``index`` the coarse quantizer of ``trained`` (shared, not copied: the
    trained index stays referenced by ``index``) and return it. Raises ValueError when the
    two disagree on nlist or dimension. An index that is not stripped is returned as is."""
    if not is_stripped(index):
        return index
    ivf, source = _ivf(index), _ivf(trained)
    if source is None or source.nlist != ivf.nlist or source.d != ivf.d:
        raise ValueError(f"the trained index (nlist {getattr(source, 'nlist', 0)}) does not match "
                         f"the segment (nlist {ivf.nlist}, d {ivf.d})")
    placeholder = ivf.quantizer
    owned = ivf.own_fields
    ivf.own_fields = False
    ivf.quantizer = source.quantizer
    if owned:
        placeholder.this.acquire()  # Python now frees the empty placeholder
    del placeholder
    index.referenced_objects = [trained]  # the shared quantizer lives as long as the segment
    return index


def merge_lists(index: faiss.Index, other: faiss.Index) -> None:
    """Move ``other``'s inverted lists onto ``index``'s (same trained kind), keeping ids:
    FAISS's ``InvertedLists.merge_from``. ``IndexIVF.merge_from`` would also compare the two
    coarse quantizers, which pieces written without one do not have; they share the
    version's by construction. Raises ValueError when the kinds differ."""
    target, source = faiss.try_extract_index_ivf(index), faiss.try_extract_index_ivf(other)
    if target is None or source is None:  # exact (IDMap2,Flat): nothing shared to compare
        index.merge_from(other, 0)
        return
    if (target.nlist, target.code_size, target.d) != (source.nlist, source.code_size, source.d):
        raise ValueError(f"cannot merge lists of IVF{source.nlist} (code size {source.code_size}) "
                         f"into IVF{target.nlist} (code size {target.code_size})")
    target.invlists.merge_from(source.invlists, 0)
    target.ntotal += source.ntotal
    index.ntotal = target.ntotal
    source.ntotal = 0


def shared_empty(trained: faiss.Index, stripped: bytes) -> faiss.Index:
    """An empty index of the trained kind that shares ``trained``'s quantizer: what an add
    task encodes one shard's rows onto. ``stripped`` is ``serialize_stripped(trained)``."""
    import numpy as np

    return attach(faiss.deserialize_index(np.frombuffer(stripped, dtype=np.uint8)), trained)


def serialize_stripped(index: faiss.Index) -> bytes:
    """``index`` serialised without its coarse quantizer (small: header and codebooks)."""
    ivf = _ivf(index)
    if ivf is None or is_stripped(index):
        return faiss.serialize_index(index).tobytes()
    quantizer, owned = ivf.quantizer, ivf.own_fields
    ivf.own_fields = False
    ivf.quantizer = faiss.IndexFlat(ivf.d, ivf.metric_type)
    try:
        return faiss.serialize_index(index).tobytes()
    finally:
        ivf.quantizer = quantizer
        ivf.own_fields = owned


_TRAINED: OrderedDict[tuple[str, str, str], faiss.Index] = OrderedDict()
_TRAINED_MAX = 4
_LOCK = threading.Lock()


def trained_index(root: str, manifest: "IndexManifest") -> faiss.Index:
    """The version's trained index, read once per process (a few versions are kept: a
    replica following new versions shares one quantizer across them when they share the
    file), its checksum verified on every call. Raises ChecksumMismatch, FileNotFoundError; ValueError when the manifest names
    no trained index."""
    from indexer.checksums import verify_file
    from indexer.layout import index_root
    from indexer.store import load_trained
    from pipelines import storage

    if not manifest.trained_path:
        raise ValueError(f"version {manifest.version} names no trained index")
    key = (root, manifest.trained_path, manifest.trained_sha256)
    # checked on every use (a stat while the file is unchanged, a re-hash once it changed)
    verify_file(storage.join(index_root(root), manifest.trained_path), manifest.trained_sha256)
    with _LOCK:
        if key in _TRAINED:
            _TRAINED.move_to_end(key)
            return _TRAINED[key]
    import numpy as np

    index = faiss.deserialize_index(np.frombuffer(load_trained(root, manifest), dtype=np.uint8))
    with _LOCK:
        _TRAINED[key] = index
        while len(_TRAINED) > _TRAINED_MAX:
            _TRAINED.popitem(last=False)
    return index
