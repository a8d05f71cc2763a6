"""One trained quantizer per version: segment files hold inverted lists, not quantizers.

A build trains one empty index per version (pre-transform, coarse quantizer and codebooks),
stored once as ``<version>/trained.faiss`` and named by the manifest (``trained_path``). Every
segment of the version is encoded with it and written *stripped* (``write_stripped``): its
coarse quantizer is swapped for an empty placeholder of the same dimension while FAISS writes
the file, and an OPQ/PCA pre-transform over the IVF level is left out (the file holds the IVF
index alone), so the file holds the inverted lists (codes and ids), a header and the PQ
codebooks (FAISS's reader requires those: 256 x d' float32, 0.26 MB at d' = 256) -- not the
nlist x d centroids (100 MB at nlist 65536, d = 384), an HNSW graph over them, nor the OPQ
rotation (d x d' float32, 0.39 MB for OPQ64_256 at d = 384). Loading attaches the quantizer and
the pre-transform of the version's trained index (``attach``), read once per process and shared
by every segment and shard that process serves (``trained_index``).

A stripped IVF index is recognised by its quantizer holding no centroids while ``nlist > 0``
(a trained quantizer holds exactly nlist). Exact indexes (``IDMap2,Flat``) have no quantizer
and are written as they are. Segments written before this scheme carry their own quantizer
(and pre-transform) and load unchanged; segments that kept only the pre-transform get the
quantizer alone.
"""
from __future__ import annotations

import atexit
import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from indexer.manifest import IndexManifest


def _ivf(index: faiss.Index):
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_index(ivf)


def is_stripped(index: faiss.Index) -> bool:
    """True when ``index`` is an IVF index whose coarse quantizer was left out of its file."""
    ivf = _ivf(index)
    return ivf is not None and ivf.nlist > 0 and ivf.quantizer.ntotal == 0


def _stored_level(index: faiss.Index) -> faiss.Index:
    """What a segment file holds of ``index``: the IVF level alone when ``index`` is an
    OPQ/PCA pre-transform directly over an IVF index (the transform is the version's, shared),
    else ``index`` itself."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        inner = faiss.downcast_index(outer.index)
        if isinstance(inner, faiss.IndexIVF):
            return inner
    return index


@contextlib.contextmanager
def _stripped_view(index: faiss.Index):
    """``index``'s stored level (``_stored_level``) with an empty placeholder for its coarse
    quantizer while the block runs; ``index`` is restored afterwards and must not be searched
    by another thread meanwhile."""
    ivf = _ivf(index)
    if ivf is None:
        yield index
        return
    stored = _stored_level(index)
    if is_stripped(index):
        yield stored
        return
    quantizer, owned = ivf.quantizer, ivf.own_fields
    placeholder = faiss.IndexFlat(ivf.d, ivf.metric_type)  # referenced until restored
    ivf.own_fields = False
    ivf.quantizer = placeholder
    try:
        yield stored
    finally:
        ivf.quantizer = quantizer
        ivf.own_fields = owned


def write_stripped(index: faiss.Index, path: str) -> None:
    """Write ``index`` to the local file ``path`` without its coarse quantizer or its
    pre-transform (streamed by FAISS's writer: no serialised copy in memory). ``index`` is
    unchanged afterwards; it must not be searched by another thread while this runs. Raises
    RuntimeError from FAISS."""
    with _stripped_view(index) as stored:
        faiss.write_index(stored, path)


def serialize_stripped(index: faiss.Index) -> bytes:
    """``index`` serialised as ``write_stripped`` writes it. The index's quantizer pointer is
    swapped while FAISS serialises, so ``index`` must be private to the caller (never a
    ``Trained.index`` that other threads search through)."""
    with _stripped_view(index) as stored:
        return faiss.serialize_index(stored).tobytes()


def attach(index: faiss.Index, trained: faiss.Index) -> faiss.Index:
    """Give a stripped ``index`` the coarse quantizer of ``trained`` and, when the file left it
    out, ``trained``'s pre-transform (both shared, not copied: ``trained`` stays referenced by
    the result); return the searchable index (a new ``IndexPreTransform`` over ``index`` in the
    second case, else ``index``). Raises ValueError when the two disagree on nlist or
    dimension. An index that is not stripped is returned as is."""
    if not is_stripped(index):
        return index
    ivf, source = _ivf(index), _ivf(trained)
    if source is None or source.nlist != ivf.nlist or source.d != ivf.d:
        raise ValueError(f"the trained index (nlist {getattr(source, 'nlist', 0)}) does not match "
                         f"the segment (nlist {ivf.nlist}, d {ivf.d})")
    # The stripped file's empty placeholder quantizer (an IndexFlat of 0 vectors, ~100 bytes)
    # stays allocated: handing its ownership to Python (``this.acquire()``) corrupts SWIG's
    # downcast proxies. own_fields is cleared so the segment never frees the shared quantizer.
    ivf.own_fields = False
    ivf.quantizer = source.quantizer
    index.referenced_objects = [trained]  # the shared quantizer lives as long as the segment
    outer = faiss.downcast_index(trained)
    if (not isinstance(outer, faiss.IndexPreTransform)
            or isinstance(faiss.downcast_index(index), faiss.IndexPreTransform)):
        return index
    wrapped = faiss.IndexPreTransform(index)  # own_fields false: frees neither part
    transforms = [outer.chain.at(number) for number in range(outer.chain.size())]
    for transform in reversed(transforms):
        wrapped.prepend_transform(transform)
    # the chain belongs to ``trained``: it, and the IVF level, live as long as the wrapper
    wrapped.referenced_objects = [index, trained, *transforms]
    return wrapped


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


def lists_copyable(index: faiss.Index) -> bool:
    """Whether ``copy_lists`` can copy into (or from) ``index``: an IVF index with array lists
    (every kind the memory builds but the exact ``IDMap2,Flat``)."""
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists),
                                          faiss.ArrayInvertedLists)


def copy_lists(index: faiss.Index, other: faiss.Index) -> None:
    """Append ``other``'s inverted lists to ``index``'s (same trained kind), keeping ids and
    leaving ``other`` unchanged: FAISS's ``InvertedLists.copy_subset_to`` over every list
    (``SUBSET_TYPE_INVLIST``). ``other`` may then be a piece file memory-mapped read-only
    (``IO_FLAG_MMAP_IFC``), whose lists ``merge_lists`` cannot empty (FAISS aborts resizing a
    mapped view): a merge holds the target's codes and the page cache the piece's, not a
    second copy on the heap. Raises ValueError when either is not ``lists_copyable`` or the
    kinds differ."""
    if not (lists_copyable(index) and lists_copyable(other)):
        raise ValueError("copy_lists copies IVF array lists; merge other kinds with merge_lists")
    target, source = faiss.extract_index_ivf(index), faiss.extract_index_ivf(other)
    if (target.nlist, target.code_size, target.d) != (source.nlist, source.code_size, source.d):
        raise ValueError(f"cannot copy lists of IVF{source.nlist} (code size {source.code_size}) "
                         f"into IVF{target.nlist} (code size {target.code_size})")
    added = source.invlists.copy_subset_to(target.invlists, faiss.InvertedLists.SUBSET_TYPE_INVLIST,
                                           0, source.nlist)
    target.ntotal += added
    index.ntotal = target.ntotal


# IVF kinds whose ``sa_encode`` output (list number, then the code add_with_ids would store)
# ``add_sa_codes`` files as add_with_ids does. Fast-scan kinds store codes block-interleaved
# and others may keep more per row (IVFPQR's refinement codes): those are added row by row.
_CODES_ADDABLE = (faiss.IndexIVFPQ, faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer)


def encode(trained: faiss.Index, vectors: np.ndarray) -> np.ndarray | None:
    """(n, sa_code_size) uint8: each of the (n, d) float32 ``vectors`` pre-transformed,
    assigned to its list by ``trained``'s coarse quantizer and encoded, list number first
    (FAISS ``Index.sa_encode``). Encoding a chunk once and filing its rows into several
    segments (``add_codes``) costs one assignment per row at the chunk's batch size, whatever
    the number of segments, and gives each row the same code whichever segment receives it.
    None for a kind that cannot be added from such codes (exact ``IDMap2,Flat``, fast-scan
    IVF, an IVF level inside another wrapper than one OPQ/PCA pre-transform such as IDMap or
    a refinement index): add its vectors with ``add_with_ids``. Raises ValueError for a row
    that is not finite: the quantizer cannot assign it a list (``add_with_ids`` would drop it
    silently); ingest and the API refuse such rows before they get here."""
    level = faiss.downcast_index(_stored_level(trained))
    if type(level) not in _CODES_ADDABLE:
        return None
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(rows).all():
        bad = int((~np.isfinite(rows).all(axis=1)).sum())
        raise ValueError(f"{bad} of {len(rows)} vectors have a NaN or infinite component")
    return trained.sa_encode(rows)


def add_codes(index: faiss.Index, codes: np.ndarray, ids: np.ndarray) -> None:
    """File ``encode``'s (n, sa_code_size) uint8 ``codes`` under their (n,) int64 ``ids`` in
    ``index`` (an empty or partly filled segment of the same trained kind, e.g.
    ``Trained.empty()``): FAISS ``IndexIVF.add_sa_codes``, as ``add_with_ids`` of the same
    vectors would, without encoding them again."""
    ivf = faiss.extract_index_ivf(index)
    ivf.add_sa_codes(np.ascontiguousarray(codes), np.ascontiguousarray(ids, dtype=np.int64))
    index.ntotal = ivf.ntotal  # a pre-transform wrapper counts its own


@dataclass(frozen=True, eq=False)
class Trained:
    """A version's trained index, shared read-only by every segment and thread of a process:
    ``index`` (pre-transform, coarse quantizer and codebooks) and ``stripped`` (the same index
    as ``serialize_stripped`` writes it: the empty template every segment is encoded from).
    A cached one (``trained_index``) is never mutated after construction; only the owner of a
    private copy may (a build's add task narrows its coarse quantizer's beam)."""

    index: faiss.Index
    stripped: bytes

    @classmethod
    def from_bytes(cls, data: bytes | np.ndarray) -> "Trained":
        """From ``faiss.serialize_index`` bytes (the ``trained.faiss`` file's content)."""
        array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
        template = faiss.deserialize_index(array)  # a private copy, stripped then dropped
        return cls(faiss.deserialize_index(array), serialize_stripped(template))

    def empty(self) -> faiss.Index:
        """A new empty index of the trained kind sharing this coarse quantizer: what a task
        encodes one shard's rows onto (each row is assigned once, by the shared quantizer)."""
        return attach(faiss.deserialize_index(np.frombuffer(self.stripped, dtype=np.uint8)),
                      self.index)


_TRAINED: OrderedDict[tuple[str, str, str], Trained] = OrderedDict()
_TRAINED_MAX = 4
_LOCK = threading.Lock()
atexit.register(_TRAINED.clear)  # free FAISS objects before SWIG's own teardown at exit


def trained_index(root: str, manifest: "IndexManifest") -> Trained:
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
    trained = Trained.from_bytes(load_trained(root, manifest))
    with _LOCK:
        _TRAINED[key] = trained
        while len(_TRAINED) > _TRAINED_MAX:
            _TRAINED.popitem(last=False)
    return trained
