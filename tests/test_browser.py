"""The app in a real headless Chromium: what a person sees after one upload and one click.

Proves that the page served by ``python app.py`` loads, accepts a real dev face through its
image input, and after "Analyse" shows the verdict card (GAN-generated, with the threshold set
in the Advanced panel), the attributed GAN and the class-probability bar chart, with the numbers
the library gives for that file, the crop attribution saw; then "Explain" shows the heat map and
the frequency view. Saves full-page screenshots to ``artifacts/app.png`` and ``app-explain.png``.
Skips only when Debian's ``chromium`` is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from app_server import ROOT, main_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOT = ROOT / "artifacts" / "app.png"
EXPLAIN_SCREENSHOT = ROOT / "artifacts" / "app-explain.png"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_upload_analyse_and_see_verdict_attribution_and_chart(browser, weights_env, hub, model, dev_images):
    server = main_server(weights_env, hub)
    face = sorted(dev_images["stylegan2"])[0]
    expected = model.predict(face, threshold=0.0)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url)
    page.get_by_text("Model ready").wait_for()

    page.locator("#face-image input[type=file]").set_input_files(str(face))
    page.locator("#face-image img").first.wait_for()
    page.get_by_text("Advanced").click()
    threshold = page.get_by_label("number input for Decision threshold")
    threshold.fill("0")
    threshold.press("Enter")
    # The slider follows once the app has taken the value; clicking earlier (a loaded machine) would
    # analyse with the old threshold.
    expect(page.get_by_label("range slider for Decision threshold")).to_have_value("0", timeout=WAIT_MS)
    page.get_by_role("button", name="Analyse").click()

    card = page.locator("#verdict-card.fake")
    card.wait_for()
    assert "GAN-generated" in card.inner_text()
    assert f"{expected.fake_probability:.3f}" in card.inner_text() and "threshold 0.00" in card.inner_text()
    page.get_by_text(f"Attributed to {expected.attribution}").wait_for()
    attribution = page.locator("#attribution")
    for gan in expected.attribution_probabilities:
        assert gan in attribution.inner_text()
    chart = page.locator("#class-chart")
    for name in ("Real", "ProGAN", "StyleGAN2", "StyleGAN3"):
        chart.locator("svg text", has_text=name).first.wait_for()
    assert chart.locator("svg .mark-rect path").count() == 4, "one bar per class"
    block, plot = chart.bounding_box(), chart.locator("svg").first.bounding_box()
    assert plot["height"] > 150, "the chart is drawn at a readable size"
    for name in ("StyleGAN2", "probability"):
        label = chart.locator("svg text", has_text=name).first.bounding_box()
        assert label["y"] + label["height"] <= block["y"] + block["height"], f"axis text {name!r} is clipped"

    page.locator("#attributed-crop img").first.wait_for()  # the crop e4e saw
    page.get_by_text(expected.alignment_note).first.wait_for()

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"screenshot: {SCREENSHOT}")

    page.get_by_text("Why this verdict?").click()
    page.get_by_role("button", name="Explain").click()
    page.locator("#heat-map img").first.wait_for()
    page.locator("#frequency-view img").first.wait_for()
    page.get_by_text("Heat map (input × gradient").wait_for()
    page.screenshot(path=str(EXPLAIN_SCREENSHOT), full_page=True)
    print(f"screenshot: {EXPLAIN_SCREENSHOT}")
    page.close()
