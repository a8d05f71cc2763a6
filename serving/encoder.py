"""The encoder deployment: image bytes in, unit embeddings out, concurrent requests batched.

Decoding, the decode policy (pipelines/decode.py) and the encoder's preprocessing run here, not
in the router, so the router imports neither torch nor an image library's heavy paths and an
image's decode cost lands on the replicas sized for it. A rejected image is answered as data
(its reason, a string), never as an exception, so one bad image cannot fail a batch.
"""
from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import numpy as np
from ray import serve

from pipelines.decode import DecodePolicy, ImageRejected, decode_image

if TYPE_CHECKING:
    from pipelines.encoders import TextEncoder


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class EncoderDeployment:
    """The encoder named in the index manifest (weights from ``weights`` when given). An
    open_clip encoder's text tower is loaded on the first text request, not before."""

    def __init__(self, encoder: str, weights: str = "", device: str = "auto",
                 max_pixels: int = 40_000_000, max_bytes: int = 20 * 1024 * 1024) -> None:
        # torch loads here, in the replica: a driver binding the app (serving.app) needs none
        from pipelines.encoders import EncoderSpec, load_encoder

        self.spec = EncoderSpec.parse(encoder, weights, device)
        self.encoder = load_encoder(self.spec)
        self.policy = DecodePolicy(max_pixels=max_pixels, max_bytes=max_bytes)
        self._text: TextEncoder | None = None
        self._text_lock = threading.Lock()

    def _prepare(self, data: bytes) -> np.ndarray | str:
        try:
            return self.encoder.preprocessing.pixels(decode_image(data, self.policy))
        except ImageRejected as error:
            return str(error)

    def _embed_all(self, requests: list[list[bytes]]) -> list[list[np.ndarray | str]]:
        prepared = [[self._prepare(data) for data in images] for images in requests]
        pixels = [p for images in prepared for p in images if not isinstance(p, str)]
        vectors = iter(self.encoder.embed(np.stack(pixels)) if pixels else [])
        return [[p if isinstance(p, str) else next(vectors) for p in images] for images in prepared]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed_images(self, requests: list[list[bytes]]) -> list[list[np.ndarray | str]]:
        """Each request: a list of encoded images; each answer: per image a (dim,) float32 unit
        vector, or the reason (str) it was rejected. One forward pass serves the whole batch."""
        return await asyncio.to_thread(self._embed_all, requests)

    def _text_encoder(self) -> TextEncoder:
        with self._text_lock:
            if self._text is None:
                from pipelines.encoders import load_text_encoder

                self._text = load_text_encoder(self.spec)
            return self._text

    async def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, float] | str:
        """(N,) texts -> ((N, dim) float32 unit vectors in the image embeddings' space, the
        model's logit scale), or the reason (str) this encoder cannot embed text (no text
        tower, or weights without one). The text tower loads on the first call."""
        try:
            encoder = await asyncio.to_thread(self._text_encoder)
        except ValueError as error:  # TextUnsupported, or a checkpoint without the text tower
            return str(error)
        return await asyncio.to_thread(encoder.embed_texts, texts), encoder.logit_scale

    def text_tower_loaded(self) -> bool:
        """Whether a text request has loaded the text tower (it is not loaded before)."""
        return self._text is not None

    def check_health(self) -> None:
        if self.encoder.dim <= 0:
            raise RuntimeError("encoder not loaded")
