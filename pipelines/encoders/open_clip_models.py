"""open_clip (the CLIP family), from a local/fsspec checkpoint or the hub: the image tower for
ingest and image queries; the text tower, built only when text is asked for (``build_text``),
for text -> image search and zero-shot labels in the same embedding space."""
from __future__ import annotations

import open_clip
import torch

from pipelines.encoders.base import EncoderSpec, Preprocessing
from pipelines.encoders.weights import load_state_dict


class ImageTower(torch.nn.Module):
    """``model.encode_image``: the vision tower alone (the text tower's weights are let go)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.visual = model.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


class TextTower(torch.nn.Module):
    """``model.encode_text`` (token ids (N, context) int64 -> (N, dim) features), the vision
    tower let go; ``logit_scale``: the model's learned temperature, exp'd (CLIP's zero-shot
    logits are ``logit_scale`` x cosine)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        model.visual = None  # encode_text does not use it; its weights are freed
        self.model = model
        self.logit_scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def preprocessing(spec: EncoderSpec) -> Preprocessing:
    """CLIP: shorter side to the model's size, bicubic without antialias (method.md section 1)."""
    config = open_clip.get_model_config(spec.model)
    if config is None:
        raise ValueError(f"unknown open_clip model {spec.model!r}; see open_clip.list_models()")
    size = config["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    pretrained = open_clip.get_pretrained_cfg(spec.model, spec.pretrained) if spec.pretrained else {}
    mean = tuple(pretrained.get("mean") or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(pretrained.get("std") or open_clip.OPENAI_DATASET_STD)
    return Preprocessing(resize=size, crop=size, mean=mean, std=std, interpolation="bicubic",
                         antialias=False)


def _model(spec: EncoderSpec, tower: str) -> torch.nn.Module:
    """The whole CLIP model with ``spec``'s weights; ValueError when a checkpoint misses the
    ``tower`` ("visual" or "text") or belongs to another model."""
    if not spec.weights:
        return open_clip.create_model(spec.model, pretrained=spec.pretrained or None)
    model = open_clip.create_model(spec.model, pretrained=None)
    state = load_state_dict(spec.weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    needed = [k for k in missing if k.startswith("visual.") == (tower == "visual")]
    if needed or (unexpected and all(k.startswith("visual.") for k in unexpected)):
        raise ValueError(f"{spec.weights} does not fit {spec.model}'s {tower} tower: missing "
                         f"{needed[:5]}, unexpected {unexpected[:5]}")
    return model


def build(spec: EncoderSpec) -> tuple[torch.nn.Module, int]:
    model = _model(spec, "visual")
    return ImageTower(model), int(model.visual.output_dim)


def build_text(spec: EncoderSpec) -> tuple[TextTower, object]:
    """The text tower and its tokenizer (open_clip's: the BPE vocabulary ships with the
    package, so nothing is downloaded for the CLIP models' own tokenizer)."""
    return TextTower(_model(spec, "text")), open_clip.get_tokenizer(spec.model)


def embedding_dim(spec: EncoderSpec) -> int:
    config = open_clip.get_model_config(spec.model)
    if config is None:
        raise ValueError(f"unknown open_clip model {spec.model!r}; see open_clip.list_models()")
    return int(config["embed_dim"])
