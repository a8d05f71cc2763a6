"""Pluggable frozen encoders behind one interface (see base.Encoder).

base.py imports torch and torchvision, so its names are loaded on first use (PEP 562's module
``__getattr__``): importing this package for DEFAULT_ENCODER (a job's ``--help``) costs nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.encoders.base import Encoder, EncoderSpec, Preprocessing, TextEncoder

DEFAULT_ENCODER = "efficientnet-lite0"
_FROM_BASE = ("Encoder", "EncoderSpec", "Preprocessing", "TextEncoder", "TextUnsupported",
              "resolve_device")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from pipelines.encoders import base

        return getattr(base, name)
    if name == "tune_glibc_malloc":
        from pipelines.encoders.allocator import tune_glibc_malloc

        return tune_glibc_malloc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _family(spec: EncoderSpec):
    # Imported lazily: a worker loads only the library its encoder needs.
    if spec.family == "efficientnet-lite":
        from pipelines.encoders import efficientnet_lite as family
    elif spec.family == "open_clip":
        from pipelines.encoders import open_clip_models as family
    elif spec.family == "timm":
        from pipelines.encoders import timm_models as family
    else:
        raise ValueError(f"unknown encoder family {spec.family!r}")
    return family


def preprocessing_for(spec: EncoderSpec) -> Preprocessing:
    """The encoder's input transform, known without loading any weights."""
    return _family(spec).preprocessing(spec)


def embedding_dim(spec: EncoderSpec) -> int:
    """The embedding length, known without loading any weights (for output schemas)."""
    return _family(spec).embedding_dim(spec)


def load_encoder(spec: EncoderSpec) -> Encoder:
    from pipelines.encoders.allocator import tune_glibc_malloc
    from pipelines.encoders.base import Encoder, resolve_device

    device = resolve_device(spec.device)
    if device.type == "cpu":
        tune_glibc_malloc()
    module, dim = _family(spec).build(spec)
    return Encoder(spec.name, module, dim, preprocessing_for(spec), device)


def load_text_encoder(spec: EncoderSpec) -> TextEncoder:
    """The text tower of ``spec`` (open_clip only; TextUnsupported otherwise), with the same
    weights as its image tower: its embeddings search the memory's image embeddings."""
    from pipelines.encoders.base import TextEncoder, TextUnsupported, resolve_device

    if spec.family != "open_clip":
        raise TextUnsupported(f"{spec.name} has no text tower: text queries need an open_clip encoder")
    device = resolve_device(spec.device)
    module, tokenizer = _family(spec).build_text(spec)
    return TextEncoder(spec.name, module, tokenizer, module.logit_scale, device)


__all__ = ["DEFAULT_ENCODER", "Encoder", "EncoderSpec", "Preprocessing", "TextEncoder",
           "TextUnsupported", "embedding_dim", "load_encoder", "load_text_encoder",
           "preprocessing_for", "resolve_device", "tune_glibc_malloc"]
