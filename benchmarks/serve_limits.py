"""The server's memory under the worst requests its default limits allow, and whether it stays responsive.

    python -m benchmarks.serve_limits --json      # results/serve-limits-DATE.json

`cellmorphnet serve` (the installed command, every default) on a free local port. A blank 7000x7000 PNG is
about 60 KB on the wire and 49 megapixels (147 MB) decoded. Scenarios, in order:

1. one request of 4 such canvases (196 million pixels: just under the request's default budget of 200);
2. eight such requests at once (decoding is bounded to ``--max-concurrent-sets`` requests at a time);
3. one request of 5 (245 million pixels: over the budget, refused from the headers, 413).

Throughout, a thread asks ``/healthz`` every 100 ms (its slowest answer is reported) and another reads the
server's resident memory from /proc every 50 ms; the peak is the kernel's high-water mark (VmHWM) at the end.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._common import emit, header, serving


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=7000, help="side of the blank PNG canvases")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import httpx
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (args.side, args.side), "white").save(buf, format="PNG")
    canvas = buf.getvalue()
    result = header("python -m benchmarks.serve_limits " + " ".join(sys.argv[1:]))
    result.update(canvas={"side": args.side, "png_bytes": len(canvas), "megapixels": args.side**2 / 1e6},
                  scenarios=[])  # fmt: skip
    pids: list[int] = []
    with serving(pids=pids) as url:
        pid = pids[0]
        result["rss_ready_mb"] = round(_rss(pid) / 1e6)
        stop = threading.Event()
        health: list[float] = []
        samples: list[int] = []

        def watch_health() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    t = time.monotonic()
                    c.get(f"{url}/healthz").raise_for_status()
                    health.append(time.monotonic() - t)
                    time.sleep(0.1)

        def watch_memory() -> None:
            while not stop.is_set():
                samples.append(_rss(pid))
                time.sleep(0.05)

        watchers = [threading.Thread(target=watch_health), threading.Thread(target=watch_memory)]
        for w in watchers:
            w.start()

        def post(n: int) -> tuple[int, float]:
            files = [("files", (f"{i}.png", canvas, "image/png")) for i in range(n)]
            t = time.monotonic()
            r = httpx.post(f"{url}/v1/predict", files=files, timeout=600)
            return r.status_code, time.monotonic() - t

        for name, n, parallel in (("one request, 4 canvases", 4, 1), ("8 such requests at once", 4, 8),
                                  ("one request, 5 canvases (over the budget)", 5, 1)):  # fmt: skip
            health.clear()
            start = time.monotonic()
            with ThreadPoolExecutor(parallel) as pool:
                answers = list(pool.map(post, [n] * parallel))
            row = {"scenario": name, "status": sorted({s for s, _ in answers}),
                   "wall_s": round(time.monotonic() - start, 1),
                   "slowest_healthz_s": round(max(health, default=0.0), 3),
                   "rss_peak_so_far_mb": round(max(samples, default=0) / 1e6)}  # fmt: skip
            result["scenarios"].append(row)
            print(row, file=sys.stderr, flush=True)
        stop.set()
        for w in watchers:
            w.join()
        result["rss_high_water_mb"] = round(_rss(pid, "VmHWM") / 1e6)
    emit(result, args.json)


if __name__ == "__main__":
    main()
