"""Text queries and zero-shot labels on an open_clip memory, through a real `vmem serve` on
127.0.0.1. The CLIP model is open_clip's ViT-S-32-alt built without downloads (random weights,
seeded, saved as safetensors): the tests check shapes, normalisation and plumbing (a text's
neighbours equal brute force over the memory with the model's own text embedding; zero-shot
equals the CLIP formula computed here), not accuracy."""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests
import torch

from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from pipelines.encoders import EncoderSpec, TextUnsupported, load_encoder, load_text_encoder
from tests.test_web import browser  # noqa: F401 (the headless Chromium fixture)

pytestmark = pytest.mark.slow
MODEL = "ViT-S-32-alt"  # embed_dim 256; its tokenizer is open_clip's bundled BPE (no download)


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(MODEL, pretrained=None).eval()
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, str(path)


def model_text(model, texts: list[str]) -> np.ndarray:
    import open_clip

    with torch.inference_mode():
        features = model.encode_text(open_clip.get_tokenizer(MODEL)(texts))
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_the_text_tower_embeds_in_the_image_space_and_is_separate(clip_model, tmp_path):
    model, weights = clip_model
    spec = EncoderSpec.parse(f"open_clip:{MODEL}", weights=weights, device="cpu")
    image = load_encoder(spec)
    names = [name for name, _ in image.module.named_parameters()]
    assert names and all(name.startswith("visual.") for name in names)  # no text weights held
    text = load_text_encoder(spec)
    assert all(not name.startswith("model.visual") for name, _ in text.module.named_parameters())
    texts = ["a photo of a cat", "a photo of a coffee cup", "x" * 1000]  # the last: truncated to 77 tokens
    vectors = text.embed_texts(texts)
    assert vectors.shape == (3, image.dim) == (3, 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, model_text(model, texts), atol=1e-5)
    assert text.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    with pytest.raises(TextUnsupported, match="open_clip"):
        load_text_encoder(EncoderSpec.parse("efficientnet-lite0"))
    from safetensors.torch import save_file  # an image-only checkpoint has no text tower to load

    visual_only = tmp_path / "visual.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("visual.")},
              str(visual_only))
    load_encoder(EncoderSpec.parse(f"open_clip:{MODEL}", weights=str(visual_only), device="cpu"))
    with pytest.raises(ValueError, match="text tower"):
        load_text_encoder(EncoderSpec.parse(f"open_clip:{MODEL}", weights=str(visual_only), device="cpu"))


@pytest.fixture(scope="module")
def clip_server(clip_model, tmp_path_factory, ray_executor):
    """80 Fashion-MNIST test images embedded by the model, built into 2 shards, served."""
    import pyarrow as pa
    from PIL import Image
    from ray import serve

    from pipelines.data.fashion_mnist import CLASSES, load_split, png
    from pipelines.manifest import write_embedding_batch
    from pipelines.schema import embedding_batch
    from serving.serve import DEFAULT_CONFIG, load_config, start
    from tests.test_serving import free_port

    model, weights = clip_model
    spec = EncoderSpec.parse(f"open_clip:{MODEL}", weights=weights, device="cpu")
    images, labels = load_split("test")
    pictures = [Image.open(io.BytesIO(png(images[i]))).convert("RGB") for i in range(80)]
    vectors = load_encoder(spec).embed_images(pictures)
    ids = [1000 + i for i in range(80)]
    keys = [f"item-{i}" for i in range(80)]
    names = [CLASSES[labels[i]] for i in range(80)]
    root = str(tmp_path_factory.mktemp("clip-memory") / "memory")
    table = embedding_batch(ids, keys, names, keys, [""] * 80, vectors, spec.name)
    write_embedding_batch(root, "clip", pa.Table.from_batches([table]), spec.name, "test")
    run_build(BuildConfig(root, num_shards=2), LocalExecutor())
    port = free_port()
    config = load_config(DEFAULT_CONFIG, root, "127.0.0.1", port,
                         {"searcher_groups": 0, "encoder_weights": weights}, data_plane_port=free_port())
    config["applications"][0]["name"] = "visual-memory-text"
    start(config)
    yield f"http://127.0.0.1:{port}", np.asarray(ids), vectors, png(images[100])
    serve.shutdown()


def test_text_queries_search_the_images_and_zero_shot_sits_next_to_the_vote(clip_server, clip_model):
    from ray import serve

    from pipelines.data.fashion_mnist import CLASSES
    from vmem.client import MemoryClient, Text

    url, ids, vectors, query_png = clip_server
    model, _ = clip_model
    encoder = serve.get_deployment_handle("EncoderDeployment", "visual-memory-text")
    assert encoder.text_tower_loaded.remote().result() is False  # not loaded before a text comes

    text = "a photo of a sneaker"
    body = requests.post(f"{url}/v1/neighbors", json={"text": text, "k": 7}).json()
    assert encoder.text_tower_loaded.remote().result() is True
    scores = vectors @ model_text(model, [text])[0]
    expected = ids[np.lexsort((ids, -scores))][:7]
    assert [n["id"] for n in body["neighbours"]] == expected.tolist()
    with MemoryClient(url) as client:
        assert [n.id for n in client.neighbors(Text(text), k=7).neighbours] == expected.tolist()

        labels, templates = list(CLASSES), ["a photo of a {}.", "a {}, in black and white"]
        shot = client.zero_shot(query_png, labels, templates, k=9)
    # the CLIP formula, here: prompt embeddings averaged per label, softmax(scale x cosine)
    from PIL import Image

    image = load_encoder(EncoderSpec.parse(f"open_clip:{MODEL}", weights=clip_model[1], device="cpu")
                         ).embed_images([Image.open(io.BytesIO(query_png)).convert("RGB")])[0]
    prompts = model_text(model, [t.replace("{}", label) for label in labels for t in templates])
    classes = prompts.reshape(len(labels), len(templates), -1).mean(axis=1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    logits = float(model.logit_scale.detach().exp()) * (classes @ image)
    expected_p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert list(shot.scores) == labels and sum(shot.scores.values()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose([shot.scores[label] for label in labels], expected_p, atol=1e-4)
    assert shot.label == labels[int(np.argmax(expected_p))] and shot.templates == templates
    assert shot.memory.k == 9 and len(shot.memory.neighbours) == 9 and shot.memory.label
    assert shot.agree == (shot.memory.label == shot.label)


@pytest.mark.parametrize("body, field", [
    ({"text": ""}, "text"),
    ({"text": "x" * 2001}, "text"),
    ({"text": "a shoe", "embedding": [0.1] * 256}, "text"),
    ({"item_key": "item-3", "text": "a shoe"}, "item_key"),
])
def test_bad_text_queries_get_a_422_naming_the_field(clip_server, body, field):
    url = clip_server[0]
    response = requests.post(f"{url}/v1/neighbors", json=body)
    assert response.status_code == 422 and response.json()["field"].endswith(field), response.text


@pytest.mark.parametrize("extra, field", [
    ({"labels": ["Bag", "Bag"]}, "labels"),
    ({"labels": ["Bag", " "]}, "labels"),
    ({"labels": ["Bag"], "templates": ["no placeholder"]}, "templates"),
    ({"labels": []}, "labels"),
])
def test_bad_zero_shot_requests_get_a_422_naming_the_field(clip_server, extra, field):
    url, _, vectors, _ = clip_server
    response = requests.post(f"{url}/v1/classify/zero-shot", json={"embedding": vectors[0].tolist(), **extra})
    assert response.status_code == 422 and response.json()["field"].endswith(field), response.text
    text_query = requests.post(f"{url}/v1/classify/zero-shot", json={"text": "a bag", "labels": ["Bag"]})
    assert text_query.status_code == 422 and text_query.json()["field"] == "text"


def test_a_memory_without_a_text_tower_refuses_text_naming_the_field():
    """The router refuses text for a non-open_clip memory before any encoder call."""
    import asyncio
    from types import SimpleNamespace

    from serving.router import ApiError, Router

    router = SimpleNamespace(encoder=object(), encoder_name="efficientnet-lite0")
    with pytest.raises(ApiError) as refused:
        asyncio.run(Router.func_or_class._embed_texts(router, ["a cat"], ["text"]))
    assert refused.value.status == 422 and refused.value.field == "text"
    assert "open_clip" in refused.value.message and "efficientnet-lite0" in refused.value.message


def test_the_page_searches_by_text(clip_server, browser):
    """The page shows the text box for an open_clip memory; a text query fills the decision
    and the evidence gallery from the text's neighbours."""
    from tests.test_web import wait

    url = clip_server[0]
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/")
    wait(page, "!document.getElementById('text-form').hidden")
    page.fill("#k", "12")
    page.fill("#text", "a photo of a sneaker")
    page.click("#text-run")
    wait(page, "document.getElementById('decision').dataset.label")
    assert page.locator("#gallery .card").count() == 12
    assert not errors, errors
    page.close()
