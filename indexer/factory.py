"""Pick a FAISS index for a memory, as autofaiss does: exact below a size, IVF-PQ above it
(with an HNSW coarse quantizer for large nlist), sized to the vector count and a
bytes-per-vector budget."""
from __future__ import annotations

import logging
import math
import re

import faiss
import numpy as np

log = logging.getLogger(__name__)
EXACT_BELOW = 100_000  # vectors; exact search costs ~N*d flops per query, fine up to here
MIN_TRAIN_PER_CENTROID = 39  # faiss's k-means warns below this


MIN_DIMS_PER_SUBQUANTIZER = 2  # 1-d sub-quantizers cost the most k-means work per byte of code


def pq_subquantizers(dim: int, bytes_per_vector: int) -> int:
    """m = min(budget, dim / 2): one byte per sub-quantizer (8-bit codes), at least
    ``MIN_DIMS_PER_SUBQUANTIZER`` dimensions each (m >= 1: d = 1 gets one 1-d sub-quantizer,
    d = 2 or 3 a 1-byte code whatever the budget). m need not divide dim: the OPQ rotation's
    output is padded to a multiple of m (``opq_output_dim``), as autofaiss's OPQ48_144 at
    d = 128. One dimension per sub-quantizer was the fault of the old rule (the largest m
    dividing d): PQ32 at d = 32 trained in 436 CPU-s on 65,536 vectors where autofaiss's
    whole build took 97 (docs/benchmarks.md); a budget of 48 at d = 128 gave PQ32."""
    return max(1, min(bytes_per_vector, dim // MIN_DIMS_PER_SUBQUANTIZER))


def opq_output_dim(dim: int, m: int) -> int:
    """d' of ``OPQ{m}_{d'}``: a multiple of m (faiss's PQ needs d' % m == 0), at most 4 per
    sub-quantizer (a reduction above that), padded up from dim when m does not divide it."""
    return min(4 * m, -(-dim // m) * m)


HNSW_FROM_NLIST = 65536  # coarse quantizer: flat below, HNSW32 from here (autofaiss, big-ann)
QUANTIZER_EF_SEARCH = 128  # HNSW beam when probing; FAISS uses max(ef, nprobe)
ASSIGN_EF_SEARCH = 64  # HNSW beam when a build assigns a vector to its list (top-1 only)


def choose_factory(count: int, dim: int, bytes_per_vector: int = 64) -> str:
    """``IDMap2,Flat`` for small memories; ``OPQ{m}_{d'},IVF{nlist},PQ{m}x8`` otherwise, with
    nlist ~ 4 sqrt(N) (a power of two, capped so each list trains on enough points) and m from
    the budget (``pq_subquantizers``). The OPQ rotation (as autofaiss chooses) balances the
    variance across the m sub-spaces and outputs d' = ``opq_output_dim`` dimensions: at
    100,000 x 384, IVF1024, PQ64 it lifted recall@10 from 0.711 to 0.778 for 76 more training
    CPU-seconds, bounded by OPQ's 65,536-point sample (bench/pq_recall.py, docs/benchmarks.md).
    From nlist = ``HNSW_FROM_NLIST`` the coarse quantizer is an HNSW graph over the centroids
    (``IVF{nlist}_HNSW32``, as autofaiss and the big-ann baselines choose): assigning a vector
    costs ~log(nlist) distance computations instead of nlist. Below it a flat quantizer is as
    cheap: one BLAS product assigned a 128-d vector among 16,384 centroids in 95 CPU-us,
    32,768 in 183, 65,536 in 345; HNSW32 at the build's beam (``ASSIGN_EF_SEARCH`` 64) took
    192, 188 and 127, agreeing with the flat list for 99.9-99.7 % of vectors (one thread,
    ``bench/assign.py``, 2026-12-02, docs/benchmarks.md). At 10M x 128 the flat quantizer
    cut the add from 245 to 104 CPU-us per vector against HNSW32 at efSearch 128."""
    if count < EXACT_BELOW:
        return "IDMap2,Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(count)))
    nlist = max(16, min(nlist, 65536, count // MIN_TRAIN_PER_CENTROID))
    quantizer = "_HNSW32" if nlist >= HNSW_FROM_NLIST else ""
    m = pq_subquantizers(dim, bytes_per_vector)
    output = opq_output_dim(dim, m)
    rotation = f"OPQ{m}_{output}" if output != dim else f"OPQ{m}"
    return f"{rotation},IVF{nlist}{quantizer},PQ{m}x8"


def make_index(factory: str, dim: int) -> faiss.Index:
    """An untrained inner-product index of ``factory`` (faiss ``index_factory``), without
    polysemous training: faiss's factory turns it on for ``PQ{m}x8`` unless the string ends
    in ``np``, and it only reorders each codebook's 256 centroids so that Hamming distances
    between codes track real ones (for ``polysemous_ht`` filtering, which nothing here uses;
    recall is unchanged, the centroids are the same). It costs ~3.7 CPU-s per sub-quantizer
    whatever the sample size: IVF256,PQ64x8 on 20,000 x 384 trained in 294 CPU-s with it and
    61 without (one thread, 2026-11-30). OPQ rotations train OPQ_ITERATIONS alternations.
    Raises RuntimeError for a string faiss rejects, ValueError for a kind the memory cannot
    hold (``refuse_unsupported``)."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    refuse_unsupported(index, factory)
    _set_opq_iterations(index)
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    if isinstance(inner, faiss.IndexPreTransform):  # OPQ..,PQ..: the PQ is inside
        inner = faiss.downcast_index(inner.index)
    if getattr(inner, "do_polysemous_training", False):
        inner.do_polysemous_training = False
    return index


# Additive quantizers whose encoder searches with a random state shared across the rows it is
# given: a row's code depends on the batch it was encoded in, so a segment would not equal one
# FAISS index of the same rows (indexer/quantizer.py encodes chunks; shards split them).
_BATCH_DEPENDENT = (faiss.IndexIVFLocalSearchQuantizer, faiss.IndexLocalSearchQuantizer,
                    faiss.IndexIVFProductLocalSearchQuantizer, faiss.IndexProductLocalSearchQuantizer)


def refuse_unsupported(index: faiss.Index, factory: str) -> None:
    """Raise ValueError, before anything is trained, for a factory string whose index the
    memory cannot hold: a refinement index (``RFlat``, ``Refine(...)``: keep vectors with
    ``--keep-vectors`` for exact re-ranking instead), an ``IDMap``/``IDMap2`` over an IVF
    index (IVF lists hold the ids already; only ``IDMap2,Flat``, the exact kind, maps them),
    a local-search additive quantizer (LSQ, PLSQ: batch-dependent codes), or fast-scan IVF
    lists (``...fs``: FAISS aborts merging a shard's pieces)."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        outer = faiss.downcast_index(outer.index)
    if isinstance(outer, faiss.IndexRefine):
        raise ValueError(f"factory {factory!r}: refinement indexes are not supported; keep the vectors "
                         f"(--keep-vectors fp16|fp32) to re-rank neighbours exactly")
    if isinstance(outer, faiss.IndexIDMap) and faiss.try_extract_index_ivf(outer) is not None:
        raise ValueError(f"factory {factory!r}: IVF lists hold the ids already; drop the IDMap prefix")
    ivf = faiss.try_extract_index_ivf(index)
    level = faiss.downcast_index(ivf) if ivf is not None else outer
    if isinstance(level, _BATCH_DEPENDENT):
        raise ValueError(f"factory {factory!r}: local-search quantizers (LSQ, PLSQ) encode a row "
                         f"differently depending on the rows encoded with it; use PQ, RQ or SQ")
    if isinstance(level, faiss.IndexIVFFastScan):
        raise ValueError(f"factory {factory!r}: fast-scan lists (...fs) cannot be merged from a "
                         f"build's pieces (faiss 1.15's block lists overrun their buffer merging "
                         f"into a non-empty list: the process aborts); use the kind without fs")


OPQ_ITERATIONS = 10  # faiss's OPQMatrix default is 50: 25 gave +0.004 recall@10 at 2x the CPU


def _set_opq_iterations(index: faiss.Index) -> None:
    """OPQ rotations train ``OPQ_ITERATIONS`` alternations (PQ, then Procrustes) instead of
    faiss's 50: at 100,000 x 384 (OPQ64, IVF1024, PQ64x8) 10 gave recall@10 0.764 for 218
    training CPU-s, 25 gave 0.767 for 444 (one probe, 2026-11-30)."""
    if not isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        return
    chain = faiss.downcast_index(index).chain
    for number in range(chain.size()):
        transform = faiss.downcast_VectorTransform(chain.at(number))
        if isinstance(transform, faiss.OPQMatrix):
            transform.niter = OPQ_ITERATIONS


def nlist_of(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 0


def hnsw_quantizer(factory: str) -> bool:
    """Whether ``factory``'s coarse quantizer is an HNSW graph (``IVF{nlist}_HNSW{M}``)."""
    return any(token.startswith("IVF") and "_HNSW" in token for token in factory.split(","))


def set_quantizer_beam(index: faiss.Index, ef_search: int) -> None:
    """Set the HNSW beam (``efSearch``) of ``index``'s coarse quantizer, when it is an HNSW
    graph; nothing otherwise. Mutates ``index``: call it on a private copy only."""
    ivf = faiss.try_extract_index_ivf(index)
    quantizer = None if ivf is None else faiss.downcast_index(ivf.quantizer)
    if quantizer is not None and hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = ef_search


def add_threads(factory: str, node_cpus: int) -> int:
    """OpenMP threads of one add task (indexer/openmp.py), the rest of the node's CPUs going to
    other add tasks: every CPU of the node (one task per node) when the coarse quantizer is
    HNSW, whose per-process copies cost more to search (bench/add_threads.py: 1.19-1.60x the
    CPU per vector as one-thread processes); one (one task per CPU) with a flat quantizer,
    whose assignment is a BLAS product: at 1M x 384, OPQ64_256,IVF4096,PQ64x8, S = 4, 2 CPUs
    (2026-12-01), one-thread tasks added at 1.05x FAISS's CPU, one two-thread task at 1.26x
    (docs/benchmarks.md)."""
    return max(1, node_cpus) if hnsw_quantizer(factory) else 1


def training_size(factory: str, count: int) -> int:
    """How many vectors to train on: enough for k-means and the PQ codebooks (256 centroids
    each), no more than the memory holds. 0 for indexes that need no training."""
    nlist = nlist_of(factory)
    if not nlist and "PQ" not in factory and "SQ" not in factory:
        return 0
    return min(count, max(256 * 40, nlist * 64))


def minimum_training_vectors(factory: str, dim: int) -> int:
    """k-means needs one point per centroid (nlist for IVF, 2^bits per PQ codebook); an OPQ
    rotation needs at least as many points as dimensions (faiss aborts the process otherwise)."""
    pq = re.search(r"PQ\d+(?:x(\d+))?", factory)
    pq_centroids = 2 ** int(pq.group(1) or 8) if pq else 0
    rotation = max(dim, _opq_output(factory)) if re.match(r"\s*OPQ", factory) else 0
    return max(nlist_of(factory), pq_centroids, rotation, 1)


def _opq_output(factory: str) -> int:
    match = re.match(r"\s*OPQ\d+_(\d+)", factory)
    return int(match.group(1)) if match else 0


def bytes_per_vector(index: faiss.Index) -> float:
    """Serialized size per stored vector (codes + ids + list overhead)."""
    return len(faiss.serialize_index(index)) / max(index.ntotal, 1)


def to_gpu_if_available(index: faiss.Index) -> faiss.Index:
    """Train/search on every visible GPU with faiss-gpu; the same index on CPU otherwise."""
    if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    if hasattr(faiss, "index_gpu_to_cpu") and faiss.get_num_gpus() > 0:
        try:
            return faiss.index_gpu_to_cpu(index)
        except RuntimeError:  # already a CPU index
            return index
    return index


def _quiet_clustering(index: faiss.Index) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.min_points_per_centroid = 1
        pq = getattr(faiss.downcast_index(ivf), "pq", None)
        if pq is not None:
            pq.cp.min_points_per_centroid = 1


def train(factory: str, dim: int, sample: np.ndarray, seed: int = 0,
          verbose: bool = False) -> faiss.Index:
    """A trained, empty index (GPU k-means where present). Seeded: same sample, same index.
    ``verbose``: FAISS prints the coarse k-means' progress (one line per iteration, with
    seconds and objective) on stdout, the training phase's progress display."""
    index = make_index(factory, dim)
    if not index.is_trained:
        needed = minimum_training_vectors(factory, dim)
        if sample is None or len(sample) < needed:
            have = 0 if sample is None else len(sample)
            raise ValueError(f"{factory} needs at least {needed} training vectors, the memory has "
                             f"{have}: use a smaller IVF/PQ or --factory 'IDMap2,Flat'")
        recommended = max(nlist_of(factory), 256 if "PQ" in factory else 0) * MIN_TRAIN_PER_CENTROID
        if len(sample) < recommended:
            # One clear warning here instead of one per k-means run from faiss's C++ code.
            log.warning("training %s on %d vectors; faiss recommends >= %d for good centroids",
                        factory, len(sample), recommended)
            _quiet_clustering(index)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
            ivf.cp.verbose = verbose
            clustering_index = to_gpu_if_available(faiss.IndexFlatIP(ivf.d))  # d' after OPQ{m}_{d'}
            ivf.clustering_index = clustering_index
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        if ivf is not None:
            ivf.clustering_index = None
            set_quantizer_beam(index, QUANTIZER_EF_SEARCH)
    return index
