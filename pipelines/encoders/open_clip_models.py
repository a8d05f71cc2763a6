"""open_clip image towers (the CLIP family), from a local/fsspec checkpoint or the hub."""
from __future__ import annotations

import open_clip
import torch

from pipelines.encoders.base import EncoderSpec, Preprocessing
from pipelines.encoders.weights import load_state_dict


class ImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


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


def build(spec: EncoderSpec) -> tuple[torch.nn.Module, int]:
    if spec.weights:
        model = open_clip.create_model(spec.model, pretrained=None)
        state = load_state_dict(spec.weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        visual_missing = [k for k in missing if k.startswith("visual.")]
        if visual_missing or (unexpected and not missing and len(unexpected) > 0 and
                              all(k.startswith("visual.") for k in unexpected)):
            raise ValueError(f"{spec.weights} does not fit {spec.model}: missing {visual_missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    else:
        model = open_clip.create_model(spec.model, pretrained=spec.pretrained or None)
    return ImageTower(model), int(model.visual.output_dim)


def embedding_dim(spec: EncoderSpec) -> int:
    config = open_clip.get_model_config(spec.model)
    if config is None:
        raise ValueError(f"unknown open_clip model {spec.model!r}; see open_clip.list_models()")
    return int(config["embed_dim"])
