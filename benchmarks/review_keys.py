"""Reviewing 100 cells by keyboard in a real browser: keys pressed per cell, and the page's time per action.

    python -m benchmarks.review_keys --json      # results/review-keys-DATE.json

``cellmorphnet serve`` (the installed command) in a temporary home; 100 of PBC's test JPEGs are added to a case
through the API; the review page is opened in Chromium (Debian's, through Playwright), the first tile focused, and
each cell is confirmed with one key (Enter). Each action is timed from the key press until the page shows the
cell as reviewed (the review saved on the server and the focus moved on). Then 20 cells are reassigned with one
digit each and timed the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

from benchmarks._common import SHARED, emit, header, serving

PBC_TEST_IMAGES = SHARED / "bloodmnist-pbc" / "test_images"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def main() -> None:
    import httpx
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = header("python -m benchmarks.review_keys " + " ".join(sys.argv[1:]))
    files = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))[: args.cells]
    chromium = os.environ.get("CELLMORPHNET_CHROMIUM") or shutil.which("chromium")
    with serving() as url:
        for i in range(0, len(files), 16):
            part = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in files[i : i + 16]]
            httpx.post(f"{url}/v1/cases/bench/cells", files=part, timeout=300).raise_for_status()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/review")
            page.wait_for_selector("#model-name:not(:empty)")
            page.fill("#case", "bench")
            page.click("#case-form button[type=submit]")
            page.wait_for_function(f"document.querySelectorAll('.cell-tile').length === {len(files)}", timeout=60_000)
            page.locator(".cell-tile").first.focus()
            keys, confirm = 0, []
            for done in range(1, len(files) + 1):
                t = time.perf_counter()
                page.keyboard.press("Enter")
                keys += 1
                page.wait_for_function(f"document.querySelectorAll('.cell-tile.done').length >= {done}")
                confirm.append(time.perf_counter() - t)
            page.locator(".cell-tile").first.focus()
            reassign = []
            for _ in range(min(20, len(files))):
                before = page.evaluate("document.activeElement.dataset.id")
                t = time.perf_counter()
                page.keyboard.press("1")
                keys += 1
                page.wait_for_function(f"document.activeElement.dataset.id !== '{before}'")
                reassign.append(time.perf_counter() - t)
            browser.close()
        reviewed = httpx.get(f"{url}/v1/cases/bench").json()["reviewed"]

    def summary(xs: list[float]) -> dict:
        ms = sorted(1000 * x for x in xs)
        return {"n": len(ms), "median_ms": round(statistics.median(ms), 1),
                "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1), "max_ms": round(ms[-1], 1)}  # fmt: skip

    result.update(cells=len(files), reviewed=reviewed, keys=keys, keys_per_cell=round(keys / (len(files) + 20), 2),
                  confirm=summary(confirm), reassign=summary(reassign))  # fmt: skip
    print(f"{len(files)} cells confirmed and 20 reassigned with {keys} keys; per action median "
          f"{result['confirm']['median_ms']} ms (p95 {result['confirm']['p95_ms']}), reassign median "
          f"{result['reassign']['median_ms']} ms", file=sys.stderr)  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
