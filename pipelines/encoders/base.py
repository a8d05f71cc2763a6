"""The one narrow encoder interface: preprocessing known without weights, then embed a batch.

An encoder is named by a spec string, e.g. ``efficientnet-lite0``, ``open_clip:ViT-B-32``,
``open_clip:ViT-B-32:laion2b_s34b_b79k``, ``timm:vit_small_patch14_dinov2.lvd142m``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    family: str  # "efficientnet-lite", "open_clip", "timm"
    model: str
    pretrained: str = ""  # open_clip tag / timm pretrained tag (hub download where reachable)
    weights: str = ""  # local or fsspec path to safetensors / torch weights-only checkpoint
    device: str = "auto"

    @classmethod
    def parse(cls, text: str, weights: str = "", device: str = "auto") -> "EncoderSpec":
        family, _, rest = text.partition(":")
        if family.startswith("efficientnet-lite") and not rest:
            return cls("efficientnet-lite", family, weights=weights, device=device)
        if family in ("open_clip", "timm") and rest:
            model, _, tag = rest.partition(":")
            return cls(family, model, tag, weights, device)
        raise ValueError(
            f"unknown encoder {text!r}: use efficientnet-lite0|1|2, open_clip:<model>[:<tag>] "
            "or timm:<model>[.<tag>]"
        )

    @property
    def name(self) -> str:
        """The encoder's name as recorded with every embedding row."""
        if self.family == "efficientnet-lite":
            return self.model
        return ":".join(part for part in (self.family, self.model, self.pretrained) if part)

    def with_device(self, device: str) -> "EncoderSpec":
        return replace(self, device=device)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, center-crop, scale to [0, 1], normalise (method.md section 1)."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    antialias: bool = True
    max_aspect_ratio: float = 4.0  # the resize output is at most resize x (this x resize) pixels

    def __call__(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> float32 (3, crop, crop), normalised: ``normalize(pixels(image))``."""
        return self.normalize(torch.from_numpy(self.pixels(image))).numpy()

    def pixels(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> uint8 (3, crop, crop): the geometric half (resize, crop), so a
        batch travels at a quarter of float32's bytes and is normalised once, on the encoder's
        device (``Encoder.embed`` accepts uint8). Memory is bounded whatever the shape:
        the long side is first center-cropped to ``max_aspect_ratio`` x the short side (the
        final center crop lies well inside it), so the resize output never exceeds
        ``resize * resize * max_aspect_ratio`` pixels (a 1x16000 strip would otherwise
        become 256x4,096,000). Images within the ratio are not touched by this step."""
        width, height = image.size
        short, long = min(width, height), max(width, height)
        if long > short * self.max_aspect_ratio:
            keep = max(1, int(short * self.max_aspect_ratio))
            offset = (long - keep) // 2
            box = (offset, 0, offset + keep, height) if width > height else (0, offset, width, offset + keep)
            image = image.crop(box)
        tensor = TF.pil_to_tensor(image)  # uint8 (3, H, W)
        tensor = TF.resize(tensor, [self.resize], interpolation=InterpolationMode(self.interpolation),
                           antialias=self.antialias)
        return TF.center_crop(tensor, [self.crop, self.crop]).contiguous().numpy()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float32 (..., 3, H, W): scale to [0, 1], subtract ``mean``,
        divide by ``std`` per channel. Elementwise, so a batch gives bit-identical values to
        its images one by one."""
        tensor = pixels.to(torch.float32).div_(255.0)
        return TF.normalize(tensor, list(self.mean), list(self.std))


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Encoder:
    """A frozen torch module whose forward returns pooled features; embeds L2-normalised float32."""

    def __init__(self, name: str, module: torch.nn.Module, dim: int, preprocessing: Preprocessing,
                 device: torch.device) -> None:
        self.name = name
        self.dim = dim
        self.preprocessing = preprocessing
        self.device = device
        self.module = module.eval().requires_grad_(False).to(device)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) -> (N, dim) unit-norm float32. ``pixels`` is either uint8 from
        ``preprocessing.pixels`` (normalised here, on the device, after a 4x smaller transfer)
        or float32 already normalised by ``preprocessing(image)``; TypeError for other dtypes."""
        if pixels.dtype == np.uint8:
            batch = self.preprocessing.normalize(
                torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device))
        elif pixels.dtype == np.float32:
            batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        else:
            raise TypeError(f"pixels: expected uint8 or float32, got {pixels.dtype}")
        with torch.inference_mode(), autocast(self.device):
            features = self.module(batch)
        features = F.normalize(features.float(), dim=-1)
        return features.cpu().numpy()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed(np.stack([self.preprocessing.pixels(image) for image in images]))


class TextUnsupported(ValueError):
    """The encoder has no text tower (only open_clip models embed text)."""


class TextEncoder:
    """A frozen CLIP text tower and its tokenizer: texts -> unit embeddings in the same space as
    the image tower's (Radford et al. 2021), for text -> image search and zero-shot labels.
    ``logit_scale``: the model's temperature (zero-shot logits = logit_scale x cosine)."""

    def __init__(self, name: str, module: torch.nn.Module, tokenizer, logit_scale: float,
                 device: torch.device) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.logit_scale = logit_scale
        self.device = device
        self.module = module.eval().requires_grad_(False).to(device)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N,) strings -> (N, dim) unit-norm float32; the tokenizer truncates each text to
        the model's context length (77 tokens for CLIP)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), autocast(self.device):
            features = self.module(tokens)
        return F.normalize(features.float(), dim=-1).cpu().numpy()


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA (the encoders' GPU path); nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
