"""The ranking controls, the verdict, refused uploads and paging in a real browser (headless Debian chromium
driven by Playwright), as a person uses them at 1280 x 800.

Skips when Chromium is missing, except under ``CI=true`` where a missing browser fails the run.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

import app.offline  # noqa: F401  (before gradio)
from app_helpers import make_checkpoint, make_dataset, running_app

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT = 30_000


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        message = "Debian's chromium is not installed (bash scripts/setup.sh --test installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser_app(tmp_path_factory):
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    # every wait of this module, not only those given WAIT: under CI the app, Chromium and pytest share two cores,
    # and a chained step (the pair after the strip) can take longer than Playwright's default of 5 s
    sync_api.expect.set_options(timeout=WAIT)
    root = tmp_path_factory.mktemp("app-browser-controls")
    checkpoint, data = make_checkpoint(root / "tiny.pt", seed=1), make_dataset(root / "data", seed=3)
    with running_app(checkpoint, data, root / "cache", topk=10) as (url, service):
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                yield {"url": url, "service": service, "browser": browser, "expect": sync_api.expect, "data": data,
                       "root": root}
            finally:
                browser.close()
                sync_api.expect.set_options()  # back to Playwright's default, for other modules


def _open(env):
    page = env["browser"].new_page(viewport={"width": 1280, "height": 800})
    page.goto(env["url"])
    env["expect"](page.locator("#ranked-strip").get_by_role("button", name="Thumbnail 1 of 10")).to_be_visible(
        timeout=WAIT)
    return page


def _captions(page) -> list[str]:
    return [line for line in page.locator("#ranked-strip").inner_text().splitlines() if line.strip()]


def test_changing_w_re_ranks_the_strip(browser_app):
    """The page opens on the default ranking (K = 10 given, so the paper's w = 1): scores are d. The feature
    ranking shows d_f; typing w = 2 re-ranks live and names the ranking custom; the current query stays
    highlighted in the picker."""
    env, expect = browser_app, browser_app["expect"]
    page = _open(env)
    expect(page.locator("#ranking-note")).to_contain_text("w = 1, K = 10")
    before = _captions(page)
    assert all(re.match(r"★?#\d+ [✓✗] d \d", c) for c in before), before
    page.locator("#ranking-preset").get_by_text("feature (d_f only)").click()
    expect(page.locator("#ranked-strip")).to_contain_text("d_f", timeout=WAIT)
    expect(page.locator("#strip-note")).to_contain_text("the feature ranking")
    feature = _captions(page)
    assert all(" d_f " in c for c in feature), feature
    weight = page.locator("#ranking-weight input[type=number]")
    weight.fill("2")
    weight.press("Enter")
    expect(page.locator("#ranking-note")).to_contain_text("custom (w = 2, K = all)", timeout=WAIT)
    expect(page.locator("#ranked-strip")).not_to_contain_text("d_f", timeout=WAIT)
    expect(page.locator("#strip-note")).to_contain_text("norm(d_f) + 2·norm(d_a)")
    weighted = _captions(page)
    assert weighted != feature
    expect(page.locator("#query-gallery .thumbnail-item.selected")).to_have_count(1)
    # a K that cannot be used: said once, and the strip it would have replaced is cleared, not left standing
    k = page.locator("#ranking-topk input")
    k.fill("abc")
    k.press("Enter")
    expect(page.locator("#query-info")).to_contain_text("Not shown: topk must be a whole number", timeout=WAIT)
    expect(page.locator("#ranked-strip .thumbnail-item")).to_have_count(0)
    expect(page.locator("#pair-overlays img")).to_have_count(0)
    page.close()


def test_the_why_tab_gives_a_verdict(browser_app):
    env, expect = browser_app, browser_app["expect"]
    service = env["service"]
    failures = service.failures()
    if not failures:
        pytest.skip("no query fails at rank 1 with this random checkpoint")
    page = _open(env)
    page.locator("#query-index input").fill(str(failures[0]))
    page.locator("#rank-button").click()
    expect(page.locator("#query-info")).to_contain_text(f"Query q{failures[0]}", timeout=WAIT)
    page.get_by_role("tab", name="Why did a wrong match rank first?").click()
    verdict = page.locator("#why-verdict")
    expect(verdict).to_contain_text("What ranked it first", timeout=WAIT)
    expect(verdict).to_contain_text("Verdict:")
    expect(verdict).to_contain_text("favours the")
    expect(verdict).to_contain_text("The attention term at w = 1")
    expect(page.locator("#why-contrastive img")).to_be_visible()
    expect(page.locator("#why-failures .thumbnail-item.selected")).to_have_count(1)
    # the Why tab's own failure picker sets the query of both tabs
    if len(failures) > 1:
        page.locator("#why-failures").get_by_role("button", name=re.compile(r"Thumbnail 2 of")).click()
        second = service.failures()[1]
        expect(page.locator("#why-info")).to_contain_text(f"q{second}", timeout=WAIT)
        page.get_by_role("tab", name="Rankings").click()
        expect(page.locator("#query-info")).to_contain_text(f"Query q{second}", timeout=WAIT)
    page.close()


def test_a_one_pixel_upload_is_refused_and_clears_the_old_pair(browser_app, tmp_path):
    from PIL import Image

    env, expect = browser_app, browser_app["expect"]
    images = sorted((env["data"] / "query").iterdir())
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(dot)
    page = _open(env)
    page.get_by_role("tab", name="Upload a pair").click()
    page.locator("#upload-1 input[type=file]").set_input_files(str(images[0]))
    page.locator("#upload-2 input[type=file]").set_input_files(str(images[1]))
    page.locator("#upload-button").click()
    expect(page.locator("#upload-status")).to_contain_text("Explained", timeout=WAIT)
    expect(page.locator("#upload-overlays img")).to_be_visible()
    expect(page.locator("#upload-metrics")).to_contain_text("same-person probability")
    expect(page.locator("#upload-preview-2 img")).to_be_visible()
    page.locator("#upload-2").get_by_role("button", name="Clear").click()  # a person replaces the second file
    page.locator("#upload-2 input[type=file]").set_input_files(str(dot))
    page.locator("#upload-button").click()
    expect(page.locator("#upload-status")).to_contain_text("dot.png", timeout=WAIT)
    expect(page.locator("#upload-status")).to_contain_text("1 x 1 pixels, too small to hold a person")
    expect(page.locator("#upload-overlays img")).to_have_count(0)
    expect(page.locator("#upload-metrics")).not_to_contain_text("same-person probability")
    expect(page.locator("#upload-preview-2 img")).to_have_count(0)
    page.close()


def test_paging_past_rank_ten_and_a_click_brings_the_explanation_into_view(browser_app):
    env, expect = browser_app, browser_app["expect"]
    service = env["service"]
    page = _open(env)
    target = next((i for i in range(len(service.state.query)) if (service.ranking(i).first_true_rank or 0) > 10), None)
    if target is not None:
        page.locator("#query-index input").fill(str(target))
        page.locator("#rank-button").click()
        expect(page.locator("#query-info")).to_contain_text(f"Query q{target}", timeout=WAIT)
    page.locator("#strip-next").click()
    expect(page.locator("#strip-page")).to_contain_text("ranks 11–20", timeout=WAIT)
    assert _captions(page)[0].lstrip("★").startswith("#11 ")
    page.locator("#strip-first-true").click()
    rank = service.ranking(target if target is not None else int(page.locator("#query-index input").input_value()))
    rank = rank.first_true_rank
    if rank is not None:
        expect(page.locator("#ranked-strip")).to_contain_text(f"★#{rank} ✓", timeout=WAIT)
    page.locator("#strip-previous").click()
    page.locator("#ranked-strip").get_by_role("button", name=re.compile(r"Thumbnail 3 of")).click()
    expect(page.locator("#pair-metrics")).to_contain_text("rank", timeout=WAIT)
    expect(page.locator("#explain-heading")).to_be_in_viewport(timeout=WAIT)
    page.close()
