"""The README's screenshot of the web page: start `cellmorphnet serve`, upload real test JPEGs in Chromium, capture.

    python scripts/screenshot_serve.py [--out docs/images/serve.png] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import serving  # noqa: E402

JPEGS = sorted((ROOT.parent / "shared" / "data" / "bloodmnist-pbc" / "test_images").rglob("*.jpg"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve.png")
    ap.add_argument("--chromium", default=shutil.which("chromium"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with serving() as url:
        picked = JPEGS[3::15][:16]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1360, "height": 980})
            page.goto(url)
            page.wait_for_selector("#card dt")
            page.set_input_files("#pick-files", [str(f) for f in picked])
            done = f"document.getElementById('progress').textContent.startsWith('{len(picked)} of')"
            page.wait_for_function(done)
            page.wait_for_timeout(500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=False)
            browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
