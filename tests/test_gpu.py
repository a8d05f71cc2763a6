"""GPU paths (run where CUDA is present; skipped with a reason elsewhere)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import photo

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_encoder_on_gpu_with_autocast_matches_cpu():
    from pipelines.encoders import EncoderSpec, load_encoder

    images = [photo("chelsea.png"), photo("coffee.png")]
    cpu = load_encoder(EncoderSpec.parse("efficientnet-lite0", device="cpu")).embed_images(images)
    gpu = load_encoder(EncoderSpec.parse("efficientnet-lite0", device="cuda")).embed_images(images)
    # bf16 autocast: cosine similarity to the fp32 CPU embedding, not bitwise equality.
    assert np.all((cpu * gpu).sum(axis=1) > 0.99)


def test_faiss_trains_on_gpu_when_faiss_gpu_is_installed(monkeypatch):
    """The coarse k-means runs on a GPU index (faiss-gpu), and the index it trains searches
    as well as one trained on CPU (recall@10 of its IVF within 0.05 over the same rows)."""
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss-cpu installed (pip install '.[gpu]' for faiss-gpu)")
    from indexer import factory

    used = []
    to_gpu = factory.to_gpu_if_available
    monkeypatch.setattr(factory, "to_gpu_if_available", lambda index: used.append(to_gpu(index)) or used[-1])
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((20_000, 64)).astype(np.float32)
    index = factory.train("IVF64,Flat", 64, sample)
    assert index.is_trained and used and "Gpu" in type(used[0]).__name__
    monkeypatch.setattr(factory, "to_gpu_if_available", lambda index: index)
    on_cpu = factory.train("IVF64,Flat", 64, sample)
    exact = faiss.IndexFlatIP(64)
    exact.add(sample)
    truth = exact.search(sample[:200], 10)[1]
    for trained in (index, on_cpu):
        trained.add(sample)
        faiss.extract_index_ivf(trained).nprobe = 4
    recall = [np.mean([len(set(f) & set(t)) / 10 for f, t in zip(trained.search(sample[:200], 10)[1], truth)])
              for trained in (index, on_cpu)]
    assert abs(recall[0] - recall[1]) < 0.05, recall
