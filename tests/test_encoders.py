"""Encoders: real packaged weights, and open_clip / timm models loaded from local checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.encoders import EncoderSpec, embedding_dim, load_encoder, preprocessing_for
from tests.conftest import photo


def test_spec_parsing_and_names():
    assert EncoderSpec.parse("efficientnet-lite0").name == "efficientnet-lite0"
    spec = EncoderSpec.parse("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert (spec.family, spec.model, spec.pretrained) == ("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert EncoderSpec.parse("timm:vit_small_patch14_dinov2.lvd142m").model == "vit_small_patch14_dinov2.lvd142m"
    with pytest.raises(ValueError, match="unknown encoder"):
        EncoderSpec.parse("resnet50")


def test_offline_encoder_has_real_imagenet_weights(offline_encoder):
    """The packaged weights classify real photos: the classifier head of the same network
    puts the cat photo in ImageNet's cat classes (281-285) and the coffee in espresso (967)."""
    network = offline_encoder.module.network
    for name, classes in [("chelsea.png", range(281, 286)), ("coffee.png", [967, 968])]:
        pixels = torch.from_numpy(offline_encoder.preprocessing(photo(name))[None])
        with torch.inference_mode():
            logits = network(pixels.contiguous(memory_format=torch.channels_last))
        assert int(logits.argmax()) in classes


def test_embeddings_are_unit_norm_and_deterministic(offline_encoder):
    images = [photo("chelsea.png"), photo("coffee.png"), photo("astronaut.png")]
    first, again = offline_encoder.embed_images(images), offline_encoder.embed_images(images)
    assert first.shape == (3, 1280) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, again)
    # Different photos are not near-duplicates; the same photo is.
    assert (first @ first.T)[0, 1] < 0.9


def test_uint8_batches_are_normalised_in_the_forward(offline_encoder):
    """Ingest and serving send uint8 pixels (a quarter of the bytes) and the forward
    normalises the batch: the same values, hence the same embeddings, as per-image float32."""
    pre = offline_encoder.preprocessing
    images = [photo("chelsea.png"), photo("coffee.png"), photo("astronaut.png")]
    raw = np.stack([pre.pixels(image) for image in images])
    assert raw.dtype == np.uint8 and raw.shape == (3, 3, pre.crop, pre.crop)
    floats = np.stack([pre(image) for image in images])
    np.testing.assert_array_equal(pre.normalize(torch.from_numpy(raw)).numpy(), floats)
    np.testing.assert_array_equal(offline_encoder.embed(raw), offline_encoder.embed(floats))
    with pytest.raises(TypeError, match="uint8 or float32"):
        offline_encoder.embed(floats.astype(np.float64))


def test_open_clip_vit_b32_from_local_safetensors(tmp_path):
    """ViT-B-32 built without downloads, saved as safetensors, loaded through the encoder spec:
    the embedding equals the model's own encode_image, normalised."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    path = tmp_path / "vit-b-32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))

    spec = EncoderSpec.parse("open_clip:ViT-B-32", weights=str(path), device="cpu")
    encoder = load_encoder(spec)
    assert encoder.dim == embedding_dim(spec) == 512
    pre = preprocessing_for(spec)
    assert (pre.crop, pre.antialias) == (224, False)  # method.md: CLIP without antialias
    pixels = np.stack([pre(photo("chelsea.png")), pre(photo("coffee.png"))])
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(pixels)), dim=-1)
    np.testing.assert_allclose(encoder.embed(pixels), expected.numpy(), atol=1e-5)


def test_open_clip_rejects_a_checkpoint_for_another_model(tmp_path):
    torch.save({"visual.unrelated": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_encoder(EncoderSpec.parse("open_clip:ViT-B-32", weights=str(tmp_path / "wrong.pt")))


def test_timm_dinov2_from_local_torch_checkpoint(tmp_path):
    """DINOv2 ViT-S/14 from a weights-only torch file holding 518-px position embeddings, as
    the released checkpoints do; timm's filter resamples them for 224-px input."""
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).eval()
    path = tmp_path / "dinov2_vits14.pth"
    torch.save(reference.state_dict(), path)

    spec = EncoderSpec.parse("timm:vit_small_patch14_dinov2", weights=str(path), device="cpu")
    encoder = load_encoder(spec)
    assert encoder.dim == embedding_dim(spec) == 384
    pre = preprocessing_for(spec)
    assert (pre.resize, pre.crop, pre.mean) == (256, 224, (0.485, 0.456, 0.406))
    vectors = encoder.embed_images([photo("chelsea.png"), photo("coffee.png")])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The loaded weights are the saved ones (not a fresh random init).
    loaded = dict(encoder.module.named_parameters())
    torch.testing.assert_close(loaded["blocks.0.attn.qkv.weight"], reference.blocks[0].attn.qkv.weight)


def test_weights_from_fsspec_url_are_cached_atomically(tmp_path, monkeypatch):
    import fsspec

    from pipelines import storage
    from pipelines.encoders import weights

    monkeypatch.setattr(storage, "CACHE_DIR", tmp_path / "cache")
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    with fsspec.open("memory://weights/tiny.pt", "wb") as handle:
        torch.save(tensors, handle)
    loaded = weights.load_state_dict("memory://weights/tiny.pt")
    torch.testing.assert_close(loaded["w"], tensors["w"])
    assert [p.name for p in (tmp_path / "cache" / "weights").iterdir() if p.name.startswith(".")] == []


class NotATensor:
    """Any class instance: torch's weights-only unpickler must refuse to build it."""


def test_checkpoints_holding_arbitrary_objects_are_refused(tmp_path):
    import pickle

    from pipelines.encoders.weights import load_state_dict

    torch.save({"w": torch.zeros(1), "payload": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(str(tmp_path / "evil.pth"))


@pytest.mark.parametrize("model", ["mobilenetv3_small_100", "resnet18", "vit_small_patch14_dinov2"])
def test_timm_declared_width_equals_the_pooled_output(model):
    """The schema's embedding width (known before weights load) must be what forward returns:
    MobileNetV3's pre-logits layer makes it 1024, not its 576 `num_features`."""
    import timm
    import torch

    spec = EncoderSpec.parse(f"timm:{model}", device="cpu")
    extra = {"img_size": 224} if "dinov2" in model else {}
    network = timm.create_model(model, pretrained=False, num_classes=0, **extra).eval()
    with torch.no_grad():
        width = network(torch.zeros(1, 3, 224, 224)).shape[-1]
    assert embedding_dim(spec) == width
