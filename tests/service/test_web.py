"""The web page at `/`: its assets, and a real headless Chromium using it against a live server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imgzoo.manifest import MANIFEST_FILENAME, Composition, EnsembleMember, load_manifest
from service.routers.web import STATIC_DIR
from tests.conftest import SHARED_DATA, SubsetFactory, require_tool
from tests.service.conftest import LiveServer, Repository, copy_version, serve

KEY = "browser-key-0123456789"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
)


# --------------------------------------------------------------------------- without a browser


def test_the_page_and_its_assets_are_served_offline(server: LiveServer) -> None:
    with server.client() as client:
        page = client.get("/")
        assets = {name: client.get(f"/static/{name}") for name in ("app.css", "app.js")}
        config = client.get("/ui/config").json()
        missing = client.get("/static/nope.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text and 'href="/static/app.css"' in page.text
    assert assets["app.js"].headers["content-type"].split(";")[0] in (
        "text/javascript",
        "application/javascript",
    )
    assert assets["app.css"].headers["content-type"].startswith("text/css")
    for text in (page.text, *(a.text for a in assets.values())):
        # No CDN, no web font, no remote anything: every URL is relative to the service.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text)
        assert "@import" not in text
    assert config == {"version": config["version"], "api_key_required": False, "default_top_k": 3}
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_static_files_are_package_data() -> None:
    assert {p.name for p in STATIC_DIR.iterdir()} >= {"index.html", "app.css", "app.js"}


def test_the_page_can_be_turned_off(model_repository: Repository, tmp_path: Path) -> None:
    copy_version(tmp_path, model_repository.gray)
    with serve(tmp_path, web_ui=False) as live, live.client() as client:
        assert client.get("/").status_code == 404
        assert client.get("/static/app.js").status_code == 404
        assert client.get("/models").status_code == 200


# --------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def zoo_server(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Two CIFAR-10 models to compare (the same weights under two names) and a gray one.

    `fastnet_b`'s manifest describes it as a two-network graph with TTA, which is all the page
    reads of a composition (the graph itself stays the plain one).
    """
    root = tmp_path_factory.mktemp("zoo")
    copy_version(root, model_repository.fastnet)
    composite = copy_version(root, model_repository.fastnet, model="fastnet_b")
    manifest = load_manifest(composite)
    member = EnsembleMember(
        recipe=manifest.training.recipe, architecture="fastnet", seed=0, epochs=1, seconds=1.0,
        checkpoint_sha256="0" * 64,
    )  # fmt: skip
    composition = Composition(
        tta=2, views=12, combine="mean_log_softmax", members=[member, member.model_copy()]
    )
    with_composition = manifest.model_copy(update={"composition": composition})
    (composite / MANIFEST_FILENAME).write_text(with_composition.to_json())
    copy_version(root, model_repository.gray)
    with serve(root, api_keys=(KEY,), max_batch_size=4) as live:
        yield live


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def upload(shared_subset: SubsetFactory, sample_images: list[bytes], tmp_path: Path) -> Path:
    """A real CIFAR-10 training PNG as it is in the data set (a sample image without it)."""
    if (SHARED_DATA / "cifar10-train-a.tar.gz").is_file():
        root = shared_subset("cifar10-train-a.tar.gz", 4, ("train",))
        return sorted((root / "train" / "cat").glob("*.png"))[0]
    path = tmp_path / "upload.png"
    path.write_bytes(sample_images[0])
    return path


def _shown(driver: Any, model: str) -> list[tuple[str, float, str]]:
    """(label, probability, text shown) of each prediction in the card of `model`."""
    from selenium.webdriver.common.by import By

    card = driver.find_element(By.CSS_SELECTOR, f'.result-card[data-model="{model}"]')
    return [
        (
            row.get_attribute("data-label"),
            float(row.get_attribute("data-probability")),
            row.find_element(By.CLASS_NAME, "prob").text,
        )
        for row in card.find_elements(By.CLASS_NAME, "prediction")
    ]


def _api(server: LiveServer, model: str, image: bytes, top_k: int) -> dict[str, Any]:
    with server.client(headers={"X-API-Key": KEY}) as client:
        response = client.post(
            f"/predict/{model}", files={"file": ("x.png", image)}, params={"top_k": top_k}
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _assert_same(shown: list[tuple[str, float, str]], api: dict[str, Any]) -> None:
    expected = api["predictions"]
    assert [label for label, _, _ in shown] == [p["label"] for p in expected]
    for (_, probability, text), prediction in zip(shown, expected, strict=True):
        assert probability == pytest.approx(prediction["probability"], abs=1e-6)
        assert text == f"{prediction['probability'] * 100:.2f}%"


def test_a_real_browser_classifies_an_upload_like_the_api(
    zoo_server: LiveServer, browser: Any, upload: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    def wait_for(condition: Any, timeout: float = 60) -> Any:
        return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)

    def finished(_: Any) -> bool:
        state = browser.find_element(By.ID, "results").get_attribute("data-state")
        return state in ("done", "failed")

    browser.get(f"{zoo_server.url}/")
    wait_for(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    zoo_rows = browser.find_elements(By.CSS_SELECTOR, "#zoo tr[data-model]")
    assert {row.get_attribute("data-model") for row in zoo_rows} == {
        "cifar10/fastnet",
        "cifar10/fastnet_b",
        "gray/tiny",
    }
    # A composite graph says what a request costs it; a plain network has no such line.
    notes = {
        row.get_attribute("data-model"): [g.text for g in row.find_elements(By.CLASS_NAME, "graph")]
        for row in zoo_rows
    }
    assert notes == {
        "cifar10/fastnet": [],
        "cifar10/fastnet_b": ["2× fastnet · TTA 2 · 12 passes / image"],
        "gray/tiny": [],
    }
    assert browser.find_element(By.ID, "auth").is_displayed()  # the service has API keys

    Select(browser.find_element(By.ID, "dataset")).select_by_value("cifar10")
    models = Select(browser.find_element(By.ID, "model"))
    assert [o.get_attribute("value") for o in models.options] == [
        "fastnet",
        "fastnet_b",
        "__all__",
    ]
    models.select_by_value("fastnet")
    top_k = int(browser.find_element(By.ID, "top-k").get_attribute("value"))

    # Without the key: the upload is refused and the page says so.
    browser.find_element(By.ID, "file-input").send_keys(str(upload))
    wait_for(finished)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "missing API key" in error.text

    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "classify").click()
    wait_for(finished)
    assert browser.find_element(By.ID, "results").get_attribute("data-state") == "done"
    assert not browser.find_element(By.ID, "error").is_displayed()
    image = upload.read_bytes()
    _assert_same(
        _shown(browser, "cifar10/fastnet"), _api(zoo_server, "cifar10/fastnet", image, top_k)
    )

    # Compare every model of the data set, side by side.
    models.select_by_value("__all__")
    browser.find_element(By.ID, "classify").click()
    wait_for(finished)
    cards = browser.find_elements(By.CSS_SELECTOR, ".result-card")
    assert [c.get_attribute("data-model") for c in cards] == [
        "cifar10/fastnet",
        "cifar10/fastnet_b",
    ]
    for card in cards:
        model = card.get_attribute("data-model")
        _assert_same(_shown(browser, model), _api(zoo_server, model, image, top_k))
        latency = card.find_element(By.CLASS_NAME, "latency").text
        assert re.search(r"[\d.]+ ms total · inference [\d.]+ ms", latency), latency
        bars = card.find_elements(By.CLASS_NAME, "bar")
        widths = [float(b.value_of_css_property("width").removesuffix("px")) for b in bars]
        assert widths == sorted(widths, reverse=True) and widths[0] > 0

    screenshot = tmp_path / "web.png"
    assert browser.save_screenshot(str(screenshot))
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.width >= 1000 and shot.height >= 800
        assert len(shot.convert("L").getcolors(1 << 16) or []) > 50  # not a blank page


def test_the_key_field_stays_hidden_when_the_service_needs_no_key(
    server: LiveServer, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    browser.get(f"{server.url}/")
    WebDriverWait(browser, 60, poll_frequency=0.05).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
    )
    assert not browser.find_element(By.ID, "auth").is_displayed()
