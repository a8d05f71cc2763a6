"""The web page (serving/web/) in a real headless Chromium (Debian's, driven by Playwright over
the DevTools protocol) against a real `vmem serve` application on 127.0.0.1 over a memory of
real Fashion-MNIST images: upload an image, read the decision and its evidence (thumbnails read
through the allowed roots), forget evidence and see the decision change, add an image, roll
back. Screenshots are saved and checked (not blank, the expected elements present)."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from tests.conftest import encode, photo
from tests.test_serving import free_port

TOKEN = "web-test-token-not-a-secret"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(embedded_memory, fmnist_shards_large, tmp_path_factory, ray_executor):
    from ray import serve

    from serving.serve import DEFAULT_CONFIG, load_config, start

    root = str(tmp_path_factory.mktemp("web") / "memory")
    shutil.copytree(embedded_memory / "memory", root)
    run_build(BuildConfig(root, num_shards=2), LocalExecutor())
    port = free_port()
    config = load_config(DEFAULT_CONFIG, root, "127.0.0.1", port,
                         {"token": TOKEN, "searcher_groups": 0,
                          "allowed_source_roots": [str(fmnist_shards_large)]},
                         data_plane_port=free_port())
    config["applications"][0]["name"] = "visual-memory-web"
    start(config)
    yield f"http://127.0.0.1:{port}", root
    serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make test` (scripts/install-system-deps.sh installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def wait(page, condition: str) -> None:
    """Wait for a JavaScript condition; on timeout, fail with what the page's error box says."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, timeout=60_000)
    except PlaywrightTimeout:
        raise AssertionError(f"timed out waiting for {condition!r}; the page says: "
                             f"{page.locator('#error').text_content()!r}") from None


def check_screenshot(path: Path, *, min_width: int = 800) -> None:
    """Not blank: the page rendered text, bars and thumbnails (many distinct colours)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] >= min_width and image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200


def test_thumbnails_are_served_through_the_roots_only(served):
    url, root = served
    from tests.indexer_helpers import load_embeddings

    ids, vectors, _ = load_embeddings(root)
    answer = requests.post(f"{url}/v1/neighbors", json={"embedding": vectors[0].tolist(), "k": 1}).json()
    source = answer["neighbours"][0]["source"]
    thumbnail = requests.get(f"{url}/v1/thumbnail", params={"source": source, "size": 64})
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(__import__("io").BytesIO(thumbnail.content)).size) <= 64
    refused = requests.get(f"{url}/v1/thumbnail", params={"source": "/etc/passwd"})
    assert refused.status_code == 403 and refused.json()["field"] == "source"
    inside = source.split("#")[0] + "#no-such-member.png"
    assert requests.get(f"{url}/v1/thumbnail", params={"source": inside}).status_code == 404
    assert requests.get(f"{url}/v1/thumbnail", params={"source": source, "size": 5000}).status_code == 422
    assert requests.get(f"{url}/static/../router.py").status_code == 404


def test_query_inspect_forget_add_and_roll_back_in_a_browser(served, browser, embedded_memory, tmp_path):
    from pipelines.data.fashion_mnist import load_split, png

    url, _ = served
    images, _ = load_split("test")
    query = tmp_path / "query.png"
    query.write_bytes(png(images[0]))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/")
    wait(page, "document.getElementById('summary').textContent.includes('items')")
    # the versions table loads after the summary (a second request): wait for it, then count
    wait(page, "document.querySelectorAll('#versions tbody tr').length > 0")
    assert page.locator("#versions tbody tr").count() == 1
    assert page.locator("#segments").text_content().startswith("2 segments over 2 shards · 0 tombstoned")
    assert page.locator("#degraded").is_hidden()  # every shard serves this version
    assert page.locator("#text-form").is_hidden()  # efficientnet: no text tower, no text box

    # query by upload: the decision, its vote bars and the evidence gallery with thumbnails
    page.set_input_files("#file", str(query))
    wait(page, "document.getElementById('decision').dataset.label")
    before = page.locator("#decision").get_attribute("data-label")
    assert before and before != "unknown"
    assert page.locator(f".bar.winner[data-label='{before}']").count() == 1
    assert page.locator("#gallery .card").count() == 50
    wait(page, "document.querySelectorAll('#gallery .card img').length >= 10")
    assert "version" in page.locator("#answered").text_content()
    # without the token every edit control is disabled, with the reason
    forget_buttons = page.locator("button.forget")
    assert forget_buttons.first.is_disabled()
    assert forget_buttons.first.get_attribute("title") == "enter the admin token to edit"
    page.screenshot(path=str(shots / "decision.png"), full_page=True)
    check_screenshot(shots / "decision.png")
    # query by an item of the memory: the second neighbour's own neighbours, itself first
    first, second = (page.locator("#gallery .card").nth(i).get_attribute("data-key") for i in (0, 1))
    page.locator("button.like").nth(1).click()
    wait(page, f"document.querySelector('#gallery .card').dataset.key === {second!r}")
    page.set_input_files("#file", str(query))  # back to the uploaded image
    wait(page, f"document.querySelector('#gallery .card').dataset.key === {first!r}")

    # with the admin token: forget the top neighbour; the same query re-runs from the edit's version
    page.fill("#token", TOKEN)
    assert forget_buttons.first.is_enabled()
    top = page.locator("#gallery .card").first.get_attribute("data-key")
    forget_buttons.first.click()
    wait(page, "document.getElementById('change').textContent.includes('after')")
    assert page.locator(f"#gallery .card[data-key='{top}']").count() == 0
    # forget every image of the winning label (two clicks): the decision must change
    page.select_option("#label-filter", before)
    assert page.locator("#gallery .card:not([hidden])").count() >= 1
    page.click("#forget-label")
    assert "click again" in page.locator("#forget-label").text_content()
    page.click("#forget-label")
    wait(page, f"document.getElementById('decision').dataset.label !== {before!r}")
    after = page.locator("#decision").get_attribute("data-label")
    assert after != before and f"before: {before}" in page.locator("#change").text_content()
    assert page.locator(f"#gallery .card[data-label='{before}']").count() == 0
    page.screenshot(path=str(shots / "after-forget.png"), full_page=True)
    check_screenshot(shots / "after-forget.png")

    # add an image by upload, with a label
    cup = tmp_path / "coffee.png"
    cup.write_bytes(encode(photo("coffee.png"), "PNG"))
    page.set_input_files("#add-files", str(cup))
    page.fill("#add-label", "Coffee cup")
    page.click("#add")
    wait(page, "document.getElementById('add-result').textContent.includes('added 1')")
    wait(page, "document.getElementById('classes').textContent.includes('Coffee cup 1')")

    # roll back to the first version: the unlearned images stay forgotten
    wait(page, "document.querySelector('#versions tbody').textContent.includes('add')")
    operations = page.locator("#versions tbody").text_content()
    assert operations.count("delete") == 2 and "build" in operations
    page.locator("button.rollback").last.click()  # the oldest version (the table is newest first)
    wait(page, "document.querySelector('#versions tbody').textContent.includes('rollback')")
    wait(page, """() => {  // the query re-ran from the rollback's version (or a later compaction's)
        const row = [...document.querySelectorAll('#versions tbody tr')].find(r => r.textContent.includes('rollback'));
        const answered = /version (\S+)/.exec(document.getElementById('answered').textContent);
        return row && answered && answered[1] >= row.cells[0].textContent.split(' ')[0];
    }""")
    assert page.locator(f"#gallery .card[data-label='{before}']").count() == 0
    assert page.locator(f"#gallery .card[data-key='{top}']").count() == 0
    page.screenshot(path=str(shots / "versions.png"), full_page=True)
    check_screenshot(shots / "versions.png")
    assert not errors, errors
    page.close()


def test_one_click_forgets_exactly_the_image_clicked_when_keys_repeat(served, browser, tmp_path):
    """A key may name several items (a folder ingested into two batches; here an online add
    under an ingested item's key, with its embedding): the page names an item by its id as a
    decimal string (``id_str``: ids are 64-bit, beyond a JS number's 53 bits), so "more like
    this" queries that item (by key it was 422, "names 2 items") and "forget this image" forgets
    it alone (by key it forgot both). Last in the module: it edits the served memory, and the
    test above counts versions from the first."""
    from pipelines.data.fashion_mnist import load_split, png
    from pipelines.records import api_id
    from tests.indexer_helpers import load_embeddings

    url, root = served
    admin = {"Authorization": f"Bearer {TOKEN}"}
    images, _ = load_split("test")
    query = tmp_path / "query.png"
    query.write_bytes(png(images[1]))
    found = requests.post(f"{url}/v1/neighbors", json={
        "image_base64": base64.b64encode(query.read_bytes()).decode(), "k": 1}).json()
    original = found["neighbours"][0]
    assert original["id_str"] == str(original["id"])
    ids, vectors, _ = load_embeddings(root)
    vector = vectors[int(np.flatnonzero(ids == original["id"])[0])]
    key, twin = original["key"], str(api_id(original["key"]))
    added = requests.post(f"{url}/v1/memory/items", headers=admin, json={"items": [
        {"key": key, "label": "twin", "embedding": vector.tolist()}]})
    assert added.status_code == 200, added.text
    size = requests.get(f"{url}/v1/memory").json()["size"]

    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url + "/")
    wait(page, "document.getElementById('summary').textContent.includes('items')")
    page.fill("#token", TOKEN)
    page.set_input_files("#file", str(query))
    wait(page, "document.getElementById('decision').dataset.label")
    cards = page.locator(f"#gallery .card[data-key='{key}']")
    assert sorted(cards.evaluate_all("cs => cs.map(c => c.dataset.id)")) == sorted([original["id_str"], twin])
    # more like this on the twin: its own embedding is the query (distance 0), not a 422
    page.locator(f"#gallery .card[data-id='{twin}'] button.like").click()
    wait(page, "document.querySelector('#gallery .card').textContent.includes('distance 0.000')")
    assert page.locator("#error").is_hidden()
    # forget the ingested item: the twin under the same key stays (the query re-runs by it)
    page.locator(f"#gallery .card[data-id='{original['id_str']}'] button.forget").click()
    wait(page, "document.getElementById('change').textContent.includes('after')")
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    assert page.locator(f"#gallery .card[data-id='{original['id_str']}']").count() == 0
    assert page.locator("#gallery .card").first.get_attribute("data-id") == twin
    assert requests.get(f"{url}/v1/memory").json()["size"] == size - 1
    kept = requests.post(f"{url}/v1/neighbors", json={"item_id": twin, "k": 1})
    assert kept.status_code == 200 and kept.json()["neighbours"][0]["id_str"] == twin
    gone = requests.post(f"{url}/v1/neighbors", json={"item_id": original["id_str"], "k": 1})
    assert gone.status_code == 404 and gone.json()["field"] == "item_id"
    assert not errors, errors
    page.close()
