"""timm models (DINOv2 ViT-S/B/L-14, the paper's best), pooled output, no classifier."""
from __future__ import annotations

import timm
import torch

from pipelines.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing
from pipelines.encoders.weights import localize

DINOV2_SIZE = 224  # method.md: resize 256, crop 224 (timm's default for DINOv2 is 518)


def _is_dinov2(spec: EncoderSpec) -> bool:
    return "dinov2" in spec.model


def preprocessing(spec: EncoderSpec) -> Preprocessing:
    if _is_dinov2(spec):
        return Preprocessing(resize=256, crop=DINOV2_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             interpolation="bicubic", antialias=True)
    config = timm.get_pretrained_cfg(spec.model)
    if config is None:
        raise ValueError(f"unknown timm model {spec.model!r}; see timm.list_models(pretrained=True)")
    size = config.input_size[-1]
    return Preprocessing(resize=int(round(size / config.crop_pct)), crop=size,
                         mean=tuple(config.mean), std=tuple(config.std),
                         interpolation=config.interpolation or "bicubic")


def build(spec: EncoderSpec) -> tuple[torch.nn.Module, int]:
    name = f"{spec.model}.{spec.pretrained}" if spec.pretrained else spec.model
    extra = {"img_size": DINOV2_SIZE} if _is_dinov2(spec) else {}
    if spec.weights:
        # timm's own loader applies the architecture's checkpoint filter (e.g. resampling
        # DINOv2's 518-px position embeddings to 224) and uses torch's weights-only unpickler.
        model = timm.create_model(name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": localize(spec.weights)}, **extra)
    else:
        model = timm.create_model(name, pretrained=bool(spec.pretrained) or "." in spec.model,
                                  num_classes=0, **extra)
    return model, pooled_width(model)


def pooled_width(model: torch.nn.Module) -> int:
    """Width of the pooled output with the classifier removed: ``head_hidden_size`` where a
    model has a pre-logits layer after pooling (MobileNetV3: 576 features -> 1024), else
    ``num_features``."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def embedding_dim(spec: EncoderSpec) -> int:
    """Built on the meta device: the architecture's feature size without allocating weights."""
    with torch.device("meta"):
        model = timm.create_model(spec.model.split(".")[0], pretrained=False, num_classes=0)
    return pooled_width(model)
