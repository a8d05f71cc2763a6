"""The encoder as a Beam ModelHandler, so RunInference does batching, model sharing per worker,
metrics and the dead-letter output for failed batches."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.encoders import Encoder, EncoderSpec, load_encoder
from pipelines.records import PreparedImage

_NO_PIXELS = np.empty((0,), dtype=np.uint8)


class EncoderModelHandler(ModelHandler[PreparedImage, PredictionResult, Encoder]):
    """PreparedImage batches -> PredictionResult(example without pixels, unit-norm embedding)."""

    def __init__(self, spec: EncoderSpec, min_batch_size: int = 8, max_batch_size: int = 64,
                 large_model: bool = False, torch_threads: int = 0) -> None:
        super().__init__(min_batch_size=min(min_batch_size, max_batch_size), max_batch_size=max_batch_size,
                         large_model=large_model)
        self.spec = spec
        self.torch_threads = torch_threads

    def load_model(self) -> Encoder:
        if self.torch_threads:
            # With several Beam worker threads per process, each forward should use fewer
            # intra-op threads than cores, or the threads oversubscribe the CPU.
            import torch

            torch.set_num_threads(self.torch_threads)
        return load_encoder(self.spec)

    def run_inference(self, batch: Sequence[PreparedImage], model: Encoder,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        embeddings = model.embed(np.stack([item.pixels for item in batch]))
        if not np.isfinite(embeddings).all():
            raise FloatingPointError("encoder produced non-finite embeddings for this batch")
        # Drop the pixels: downstream stages need only the metadata and the embedding.
        return [PredictionResult(dataclasses.replace(item, pixels=_NO_PIXELS), vector,
                                 model_id=model.name)
                for item, vector in zip(batch, embeddings)]

    def get_num_bytes(self, batch: Sequence[PreparedImage]) -> int:
        return sum(item.pixels.nbytes for item in batch)

    def get_metrics_namespace(self) -> str:
        return "vmem.encoder"
