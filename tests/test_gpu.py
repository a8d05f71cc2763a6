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


def test_faiss_trains_on_gpu_when_faiss_gpu_is_installed():
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss-cpu installed (pip install '.[gpu]' for faiss-gpu)")
    from indexer.factory import train

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((20_000, 64)).astype(np.float32)
    index = train("IVF64,PQ8x8", 64, sample)
    assert index.is_trained
