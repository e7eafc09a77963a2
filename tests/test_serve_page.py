"""The page of `resnetlab serve` in a real browser: headless Chromium driven by Playwright."""

import httpx
import pytest
from playwright.sync_api import sync_playwright

from test_serve import Server, png_bytes, run_dir  # noqa: F401 (run_dir is a fixture)

CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by `make setup`

pytestmark = pytest.mark.slow


def test_dropping_an_image_shows_the_top5_as_bars(run_dir, tmp_path, predictor_classes):  # noqa: F811
    server = Server(tmp_path, str(run_dir), "--device", "cpu")
    try:
        server.wait_ready()
        image = tmp_path / "upload.png"
        image.write_bytes(png_bytes(3))
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox"]
            )
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function(
                "!document.getElementById('info').textContent.startsWith('loading')"
            )
            assert "resnet20" in page.inner_text("#info")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#result .row", timeout=30_000)
            labels = page.locator("#result .label").all_inner_texts()
            probs = page.locator("#result .prob").all_inner_texts()
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
        assert len(labels) == 4 and set(labels) == set(predictor_classes)  # 4 classes, top-5
        answer = httpx.post(server.url + "/predict", content=image.read_bytes(), timeout=30)
        assert labels == [t["class"] for t in answer.json()["predictions"][0]["topk"]]
        assert all(p.endswith("%") for p in probs) and (tmp_path / "page.png").stat().st_size > 0
        assert page.is_closed()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def predictor_classes(run_dir):  # noqa: F811
    import json

    return json.loads((run_dir / "model.json").read_text())["class_names"]
