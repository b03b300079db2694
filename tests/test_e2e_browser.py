"""End to end in a real headless Chromium: launch ``app.py``, compare, move the budget.

Needs the distro's Chromium (/usr/bin/chromium) and the ``playwright`` package (no browser download):
``.ci/run`` installs both. The app is launched exactly as the README says, ``python app.py``, on the
embedded model, so the answers are real and their object mentions are marked against the scene's
ground truth.
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.serving import serve_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium is not installed")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with serve_app(tmp_path_factory.mktemp("app")) as url:
        yield url


def test_compare_in_the_browser(app_url, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(app_url)
        page.wait_for_selector("#run", timeout=60_000)
        page.locator("[data-testid='dataset-cell-3-0']").click()  # the first complex scene (app.launch)
        for method in ("attention", "diversity", "adaptive"):
            page.wait_for_selector(f"#overlay-{method} img", timeout=60_000)
        page.wait_for_selector("#heatmap .js-plotly-plot", timeout=60_000)
        page.wait_for_selector("#complexity-plot .js-plotly-plot", timeout=60_000)
        assert "Image complexity" in page.inner_text("#complexity")
        before = page.get_attribute("#overlay-adaptive img", "src")
        stats_before = page.inner_text("#stats-attention")

        page.locator("#run").click()
        page.wait_for_function(
            "() => document.querySelector('#answer-attention') && "
            "document.querySelector('#answer-attention').innerText.replace('answer', '').trim().length > 0",
            timeout=90_000,
        )
        # the full model's answer names shapes that are in the scene, marked against the ground truth
        page.wait_for_function(
            "() => document.querySelector('#answer-full').innerText.toLowerCase().includes('correct')",
            timeout=60_000,
        )

        number = page.locator("#budget input[type='number']")
        number.fill("12")
        number.press("Enter")
        page.wait_for_function(
            "(old) => { const img = document.querySelector('#overlay-adaptive img'); return img && img.src !== old; }",
            arg=before,
            timeout=60_000,
        )
        assert page.inner_text("#stats-attention") != stats_before
        assert "**" not in page.inner_text("#stats-attention")  # markdown rendered, not raw
        shot = Path(os.environ.get("PRUNELENS_SCREENSHOT_DIR", tmp_path)) / "prunelens-e2e.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        browser.close()


def test_careless_user_in_the_browser(app_url, tmp_path):
    """Stale answers are cleared, exports work, bad files and typed HTML come back as plain text."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(app_url)
        page.wait_for_selector("#run", timeout=60_000)
        page.locator("[data-testid='dataset-cell-1-0']").click()  # the simple scene
        page.wait_for_selector("#overlay-adaptive img", timeout=60_000)
        page.locator("#run").click()
        page.wait_for_function(
            "() => document.querySelector('#answer-summary').innerText.includes('Answers for')", timeout=90_000
        )
        # moving the budget clears the answers instead of leaving them under the new budget
        number = page.locator("#budget input[type='number']")
        number.fill("20")
        number.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#answer-summary').innerText.includes('Answers cleared')", timeout=60_000
        )
        # editing the prompt after an answer clears it once; the keystrokes after that change nothing
        number.fill("64")
        number.press("Enter")
        page.locator("#run").click()
        page.wait_for_function(
            "() => document.querySelector('#answer-summary').innerText.includes('Answers for')", timeout=90_000
        )
        page.locator("#prompt textarea").press_sequentially(" now", delay=100)
        page.wait_for_timeout(1500)
        summary = page.inner_text("#answer-summary")
        assert "the prompt or ground truth changed" in summary and "Error" not in summary
        # PNG export of what the page shows
        page.get_by_text("Export", exact=True).click()
        page.locator("#export-png").click()
        page.wait_for_selector("#export-file a", timeout=60_000)
        assert page.locator("#export-file a").first.get_attribute("href").endswith("prunelens-overlays.png")
        # typed HTML in the ground truth is shown as text in the error pop-up
        page.locator("#truth textarea").fill("<a id='injected' href='https://example.com'>dog</a>")
        page.locator("#run").click()
        page.wait_for_selector("text=unknown object name", timeout=60_000)
        assert page.locator("#injected").count() == 0
        # a file that is not an image: the page says so and clears the old image's results
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"these are notes, not pixels")
        page.locator("#image input[type='file']").set_input_files(str(bad))
        page.wait_for_function(
            "() => document.querySelector('#complexity').innerText.includes('cannot be used')", timeout=60_000
        )
        assert "not an image" in page.inner_text("#complexity")
        page.wait_for_function("() => !document.querySelector('#overlay-adaptive img')", timeout=60_000)
        browser.close()
