"""`hdkd serve` in a real browser: headless Chromium (the system's) driven by Playwright, against uvicorn on
127.0.0.1. A real Brain Tumor MRI test image is uploaded through the page; the class read off the page must be
the one `hdkd predict`'s path gives (`TorchClassifier.probabilities([read_model_image(path, info)])`)."""

import io
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image

import hdkd.models  # noqa: F401 (registers the hdkd models with timm)
from hdkd.deploy.serve import background_server, create_app
from hdkd.evaluation.inference import TorchClassifier, read_model_image
from hdkd.models import save_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
MAX_UPLOAD = 150_000
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    model = timm.create_model("hdkd", num_classes=4, img_size=32, in_chans=3).eval()
    path = save_checkpoint(
        model,
        tmp_path_factory.mktemp("model") / "tiny.safetensors",
        "hdkd",
        {"num_classes": 4, "img_size": 32, "in_chans": 3},
        extra={
            "class_names": list(CLASSES),
            "img_size": 32,
            "in_chans": 3,
            "role": "hdkd",
            "metrics": {"accuracy": 0.5},
        },
    )
    return TorchClassifier.from_checkpoint(path)


def explain_as_png(image: np.ndarray) -> bytes:
    """A stand-in explainer: the model-size image as a PNG, so the page's overlay display is exercised."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no system Chromium at {CHROMIUM} (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.dialogs = []  # an alert() would mean a file name ran as HTML
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.external_requests = []
    page.on(
        "request",
        lambda r: (
            None if r.url.startswith(("http://127.0.0.1:", "data:", "blob:")) else page.external_requests.append(r.url)
        ),
    )
    yield page
    context.close()


@pytest.fixture
def served(classifier):
    with background_server(create_app(classifier, explain_as_png, max_upload_bytes=MAX_UPLOAD)) as url:
        yield url


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("#model-summary:has-text('4 classes')")


def upload_and_wait(page, files):
    """Pick a file in the page and wait until it shows a result or an error."""
    page.evaluate("() => { for (const id of ['result', 'error']) document.getElementById(id).hidden = true; }")
    page.set_input_files("#file-input", files)
    page.wait_for_selector("#result:not([hidden]), #error:not([hidden])")


def expected_probabilities(classifier, path):
    return classifier.probabilities([read_model_image(path, classifier.info)])[0]


def test_page_predicts_as_hdkd_predict(page, served, classifier, brain_mri, tmp_path):
    images = [sorted((brain_mri / "Testing" / c).glob("*.jpg"))[0] for c in ("glioma", "pituitary")]
    open_page(page, served)
    for path in images:
        upload_and_wait(page, str(path))
        assert page.locator("#error").is_hidden(), page.text_content("#error")
        expected = expected_probabilities(classifier, path)
        assert page.text_content("#predicted-class") == CLASSES[int(np.argmax(expected))]
        assert page.text_content("#filename") == path.name
        rows = page.locator("#bars .bar-row")
        assert [rows.nth(i).get_attribute("data-class") for i in range(rows.count())] == list(CLASSES)
        for i, p in enumerate(expected):
            assert rows.nth(i).locator(".bar-label").text_content() == CLASSES[i]
            assert rows.nth(i).locator(".bar-value").text_content() == f"{100 * p:.1f} %"
            width = rows.nth(i).locator(".bar-fill").evaluate("e => e.getBoundingClientRect().width")
            track = rows.nth(i).locator(".bar-track").evaluate("e => e.getBoundingClientRect().width")
            assert width == pytest.approx(p * track, abs=1.5)  # the bar is drawn to scale
        overlay = page.locator("#overlay")
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        assert overlay.evaluate("img => img.complete && img.naturalWidth") == 32
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    assert page.external_requests == [] and page.dialogs == []


def test_bad_files_show_an_error_and_the_server_keeps_serving(page, served, classifier, brain_mri, tmp_path):
    good = sorted((brain_mri / "Testing" / "notumor").glob("*.jpg"))[0]
    hostile_name = "<img src=x onerror=alert(1)>.jpg"
    cases = [
        (
            {"name": hostile_name, "mimeType": "image/jpeg", "buffer": b"not an image at all\n" * 20},
            "Error 415: " + hostile_name + ": not a JPEG, PNG or DICOM file",
        ),
        (
            {"name": "cut.jpg", "mimeType": "image/jpeg", "buffer": good.read_bytes()[:2000]},
            "Error 422: cut.jpg: corrupt or unreadable JPEG",
        ),
        (
            {"name": "huge.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n" + bytes(200_000)},
            "huge.png: 195 KB is over the upload limit of 146 KB",
        ),
    ]
    open_page(page, served)
    for payload, message in cases:
        upload_and_wait(page, payload)
        assert page.locator("#error").is_visible() and page.locator("#result").is_hidden()
        assert page.text_content("#error").startswith(message), page.text_content("#error")
        assert page.locator("#error *").count() == 0  # the name is text, not markup
        upload_and_wait(page, str(good))  # the server still serves
        assert page.locator("#error").is_hidden(), page.text_content("#error")
        expected = expected_probabilities(classifier, good)
        assert page.text_content("#predicted-class") == CLASSES[int(np.argmax(expected))]
    assert page.dialogs == []
    page.screenshot(path=str(tmp_path / "serve_error.png"))


def test_server_size_limit_reaches_the_browser_as_json(page, served):
    """Past the page's own check: a too-large body posted by script gets the server's 413 and its message."""
    open_page(page, served)
    status, detail = page.evaluate(
        """async (size) => {
        const form = new FormData();
        form.append("file", new Blob([new Uint8Array(size)]), "big.png");
        const r = await fetch("api/predict", {method: "POST", body: form});
        return [r.status, (await r.json()).detail];
    }""",
        MAX_UPLOAD * 3,
    )
    assert status == 413 and "over the limit" in detail


def test_page_without_explanations(page, classifier, brain_mri):
    path = sorted((brain_mri / "Testing" / "meningioma").glob("*.jpg"))[0]
    with background_server(create_app(classifier)) as url:
        open_page(page, url)
        upload_and_wait(page, str(path))
        assert page.text_content("#predicted-class") in CLASSES
        assert page.locator("#overlay").is_hidden()
        assert "No explanation overlay" in page.text_content("#overlay-caption")
