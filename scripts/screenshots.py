"""Screenshots of each tab of the app on the generated demo at 1280 x 800, taken in a real browser.

    .venv/bin/python scripts/screenshots.py                 # writes assets/screenshots/*.png
    .venv/bin/python scripts/screenshots.py --out /tmp/shots --width 1500 --height 1000

Starts ``python app.py`` (the bundled checkpoint and demo set) on a free 127.0.0.1 port, drives Debian's
chromium with Playwright (never ``playwright install``; /work/shared/GRADIO_TESTING.md) as a person
would, and saves what each tab shows without scrolling:

- ``rankings.png``: a query whose rank-1 image is wrong under the app's default ranking (the first one,
  worst AP first, that the attention term at the paper's w = 1 would put right, else the worst),
  re-ranked at w = 1 on the default K, so the strip says where its first true match moved;
- ``why.png``: the same query's failure under the default ranking, with the verdict;
- ``upload.png``: the first example pair of generated people, explained;
- ``search.png``: a gallery image used as the query;
- ``dataset.png``: the numbers, the CMC curves and the stored validation curve of w.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT = 120_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 600.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}")
        try:
            if httpx.get(f"{url}config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _settled(page, elem_id: str) -> None:
    """Wait until the component ``elem_id`` has been updated by the event chain under way (its loading
    overlay shown, then hidden): the last links of a re-ranking re-score the pickers."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    overlay = f"document.querySelector('#{elem_id} .wrap.default')"
    try:
        page.wait_for_function(f"() => {overlay} && !{overlay}.classList.contains('hide')", timeout=30_000)
    except PlaywrightTimeout:
        pass  # already updated before we looked
    page.wait_for_function(f"() => !{overlay} || {overlay}.classList.contains('hide')", timeout=WAIT)


def _shoot(page, out: Path, name: str) -> None:
    page.wait_for_timeout(1500)  # let images finish drawing
    path = out / f"{name}.png"
    page.screenshot(path=str(path))  # full colour: 256 colours shifted the legend's and heat maps' colours
    print(f"{path}")


def pick_query(url: str) -> int:
    """The query the pictures show: a failure of the default ranking that w = 1 would put right, if any."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    failures = [q["index"] for q in client.predict(True, "AP: worst first", api_name="/list_queries")]
    for index in failures[:40]:
        verdict = client.predict(index, api_name="/why_wrong")["verdict"]
        if verdict and verdict["attention_puts_true_first"]:
            return index
    return failures[0] if failures else 0


def take(url: str, out: Path, width: int, height: int, chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    query = pick_query(url)
    print(f"query {query}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        expect(page.locator("#ranked-strip").get_by_role("button", name="Thumbnail 1 of 10")).to_be_visible(
            timeout=WAIT)
        page.locator("#query-index input").fill(str(query))
        page.locator("#rank-button").click()
        expect(page.locator("#query-info")).to_contain_text(f"Query q{query}:", timeout=WAIT)
        page.get_by_role("tab", name="Why did a wrong match rank first?").click()
        expect(page.locator("#why-verdict")).to_contain_text("Verdict", timeout=WAIT)
        expect(page.locator("#why-contrastive img")).to_be_visible(timeout=WAIT)
        _shoot(page, out, "why")

        page.get_by_role("tab", name="Rankings").click()
        weight = page.locator("#ranking-weight input[type=number]")
        weight.fill("1")
        weight.press("Enter")
        expect(page.locator("#query-info")).to_contain_text("First true match moved", timeout=WAIT)
        expect(page.locator("#strip-note")).to_contain_text("norm(d_a)", timeout=WAIT)
        _settled(page, "query-gallery")  # the picker's captions are re-scored for the new ranking
        _shoot(page, out, "rankings")

        page.get_by_role("tab", name="Upload a pair").click()
        page.locator("#upload-examples").get_by_text("same_person_a.jpg").click()
        page.wait_for_timeout(1000)
        page.locator("#upload-button").click()
        expect(page.locator("#upload-status")).to_contain_text("Explained", timeout=WAIT)
        expect(page.locator("#upload-overlays img")).to_be_visible(timeout=WAIT)
        page.wait_for_timeout(1500)  # the page's own smooth scroll to the status line ends first
        page.evaluate("window.scrollTo(0, 0)")
        _shoot(page, out, "upload")

        page.get_by_role("tab", name="Search with your image").click()
        page.locator("#search-picker").get_by_role("button").nth(2).click()
        expect(page.locator("#search-status")).to_contain_text("top 10", timeout=WAIT)
        expect(page.locator("#search-distances img")).to_be_visible(timeout=WAIT)
        _shoot(page, out, "search")

        page.get_by_role("tab", name="Dataset").click()
        expect(page.locator("#cmc-plot img")).to_be_visible(timeout=WAIT)
        _shoot(page, out, "dataset")
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "assets" / "screenshots"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=REPO, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_up(url, process)
        take(url, out, args.width, args.height, args.chromium)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
