"""The server's memory under the worst requests its default limits allow, and whether it stays responsive.

    python -m benchmarks.serve_limits --json      # results/serve-limits-DATE.json

`cellmorphnet serve` (the installed command, every default) on a free local port. A blank 7000x7000 PNG is
about 60 KB on the wire and 49 megapixels (147 MB) decoded. Scenarios, in order:

1. one request of 4 such canvases (196 million pixels: just under the request's default budget of 200);
2. eight such requests at once (decoding is bounded to ``--max-concurrent-sets`` requests at a time);
3. one request of 5 (245 million pixels: over the budget, refused from the headers, 413);
4. slow clients: 200 connections sending their headers one byte a second for 20 s, then 1000 sending a
   body the same way (``--slow 0`` skips them). Reported: how many the server answered or closed, and when.

5. the worst Grad-CAM the limits allow: a 7000x7000 canvas with the largest red-cell diameter the server accepts
   for it (1400 px: a 7000x7000 cell crop), and ``rbc=4000`` (refused, 422);
6. JSON bodies: three 300 MB review bodies at once, declared (refused from the header) and streamed without a
   length (cut off at ``--max-json-kb``);
7. a single-cell ``/v1/predict`` (one PBC JPEG) asked again and again while two 7000x7000 fields (mosaics of
   BCCD's fields, JPEG) are being classified: its latencies (p50, p99, max) against the same requests alone.

``--only bounds`` runs 5 to 7 alone. Throughout, a thread asks ``/healthz`` every 100 ms (its slowest answer is
reported) and another reads the server's resident memory from /proc every 50 ms; the peak is the kernel's
high-water mark (VmHWM) at the end. Linux only (/proc).
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


def _slow_clients(url: str, seconds: float, heads: int = 200, bodies: int = 1000) -> dict:
    """``heads`` connections sending a request's headers and ``bodies`` sending a 1 MB body, one byte a second
    each; how the server dealt with them within ``seconds``."""
    import selectors
    import socket

    host, port = url.removeprefix("http://").split(":")
    start, conns = time.monotonic(), []
    for i in range(heads + bodies):
        c = socket.create_connection((host, int(port)), timeout=10)
        if i < heads:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        else:
            c.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=b\r\nContent-Length: 1000000\r\n\r\n--b")  # fmt: skip
        c.setblocking(False)
        conns.append(c)
    opened_s = time.monotonic() - start
    sel = selectors.DefaultSelector()
    for i, c in enumerate(conns):
        sel.register(c, selectors.EVENT_READ, i)
    ended: dict[int, tuple[float, str]] = {}
    next_byte = time.monotonic()
    while time.monotonic() - start < seconds and len(ended) < len(conns):
        for key, _ in sel.select(timeout=0.2):
            i = key.data
            try:
                got = conns[i].recv(65536)
            except OSError:
                got = b""
            answer = got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/1.1 ") else "closed"
            ended[i] = (time.monotonic() - start, answer)
            sel.unregister(conns[i])
        if time.monotonic() >= next_byte:  # one more byte from each connection still open
            next_byte += 1.0
            for i, c in enumerate(conns):
                if i not in ended:
                    try:
                        c.send(b"s" if i < heads else b"x")
                    except OSError:
                        pass
    for c in conns:
        c.close()

    def summary(indices: range) -> dict:
        done = [ended[i] for i in indices if i in ended]
        answers = [a for _, a in done]
        return {"connections": len(indices), "still_open": len(indices) - len(done),
                "answers": {a: answers.count(a) for a in sorted(set(answers))},
                "last_ended_s": round(max((t for t, _ in done), default=0.0), 1)}  # fmt: skip

    return {"scenario": f"{heads} slow-header and {bodies} slow-body clients, 1 byte/s, {seconds:g} s",
            "opened_in_s": round(opened_s, 1), "slow_headers": summary(range(heads)),
            "slow_bodies": summary(range(heads, heads + bodies))}  # fmt: skip


def _mosaic(side: int = 7000) -> bytes:
    """A ``side`` x ``side`` JPEG of BCCD's fields side by side: a smear field as large as the limits take."""
    import zipfile

    from PIL import Image

    from benchmarks.fields import BCCD_ZIP

    big = Image.new("RGB", (side, side))
    with zipfile.ZipFile(BCCD_ZIP) as z:
        names = sorted(n for n in z.namelist() if "/JPEGImages/" in n and n.endswith(".jpg"))
        k = 0
        for y in range(0, side, 480):
            for x in range(0, side, 640):
                big.paste(Image.open(io.BytesIO(z.read(names[k % len(names)]))).convert("RGB"), (x, y))
                k += 1
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _bounds(url: str, canvas: bytes, health: list[float], samples: list[int]) -> list[dict]:
    """Scenarios 5 to 7 (see the module's docstring)."""
    import socket

    import httpx
    import numpy as np

    from benchmarks._common import SHARED

    rows = []
    for rbc in (1400, 4000):
        health.clear()
        t = time.monotonic()
        r = httpx.post(f"{url}/v1/gradcam?x0=3000&y0=3000&x1=3400&y1=3400&rbc={rbc}",
                       files=[("file", ("c.png", canvas, "image/png"))], timeout=600)  # fmt: skip
        rows.append({"scenario": f"gradcam of a 7000x7000 canvas, rbc={rbc}", "status": [r.status_code],
                     "wall_s": round(time.monotonic() - t, 1), "slowest_healthz_s": round(max(health, default=0), 3),
                     "rss_peak_so_far_mb": round(max(samples, default=0) / 1e6)})  # fmt: skip

    host, port = url.removeprefix("http://").split(":")

    def json_body(declared: bool) -> str:
        size = 300 * 1024 * 1024
        with socket.create_connection((host, int(port)), timeout=60) as c:
            length = f"Content-Length: {size}\r\n" if declared else "Transfer-Encoding: chunked\r\n"
            c.sendall(f"POST /v1/cells/1/review HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"{length}\r\n".encode())  # fmt: skip
            chunk = b"x" * (1 << 20)
            try:
                for _ in range(300):
                    c.sendall(chunk if declared else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                pass  # the server answered and closed: what it should do
            try:
                return c.recv(200).split(b"\r\n", 1)[0].decode()
            except OSError as e:
                return f"closed ({e.strerror})"

    for declared in (True, False):
        health.clear()
        t = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(json_body, [declared] * 3))
        rows.append({"scenario": f"3 JSON bodies of 300 MB at once, {'declared' if declared else 'streamed'}",
                     "status": sorted(set(answers)), "wall_s": round(time.monotonic() - t, 1),
                     "rss_peak_so_far_mb": round(max(samples, default=0) / 1e6)})  # fmt: skip

    field = _mosaic()
    one = sorted((SHARED / "bloodmnist-pbc" / "test_images" / "neutrophil").glob("*.jpg"))[0].read_bytes()

    def single(n: int, stop: threading.Event | None = None) -> list[float]:
        times = []
        with httpx.Client(timeout=600) as c:
            while len(times) < n and not (stop is not None and stop.is_set()):
                t = time.monotonic()
                c.post(f"{url}/v1/predict", files=[("files", ("cell.jpg", one, "image/jpeg"))]).raise_for_status()
                times.append(time.monotonic() - t)
        return times

    alone = single(40)
    stop = threading.Event()
    busy: list[float] = []

    def fields_then_stop() -> list[int]:
        with ThreadPoolExecutor(2) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{url}/v1/predict", files=[("files", ("f.jpg", field,
                                                                                            "image/jpeg"))],
                                                       timeout=600).status_code, range(2)))  # fmt: skip
        stop.set()
        return codes

    t = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        heavy = pool.submit(fields_then_stop)
        time.sleep(1.0)  # the fields are being decoded and searched
        busy = pool.submit(single, 10_000, stop).result()
        codes = heavy.result()

    def pct(xs: list[float], q: float) -> float:
        return round(float(np.percentile(xs, q)), 3) if xs else 0.0

    rows.append({"scenario": "single-cell /v1/predict while two 7000x7000 fields are classified",
                 "fields_status": codes, "fields_wall_s": round(time.monotonic() - t, 1),
                 "field_jpeg_mb": round(len(field) / 1e6, 1), "requests": len(busy),
                 "p50_s": pct(busy, 50), "p99_s": pct(busy, 99), "max_s": round(max(busy, default=0), 3),
                 "alone_p50_s": pct(alone, 50), "alone_p99_s": pct(alone, 99),
                 "rss_peak_so_far_mb": round(max(samples, default=0) / 1e6)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=7000, help="side of the blank PNG canvases")
    ap.add_argument("--slow", type=float, default=20.0, help="seconds of the slow-client scenario (0: skip it)")
    ap.add_argument("--only", choices=["bounds"], help="run scenarios 5 to 7 alone")
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
        statuses: list[int] = []
        samples: list[int] = []

        def watch_health() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    t = time.monotonic()
                    try:
                        statuses.append(c.get(f"{url}/healthz").status_code)
                    except httpx.HTTPError:
                        statuses.append(0)
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

        first = () if args.only else (("one request, 4 canvases", 4, 1), ("8 such requests at once", 4, 8),
                                      ("one request, 5 canvases (over the budget)", 5, 1))  # fmt: skip
        for name, n, parallel in first:
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
        for heads, bodies in ((200, 0), (0, 1000)) if args.slow and not args.only else ():
            health.clear()
            statuses.clear()
            row = _slow_clients(url, args.slow, heads, bodies)
            row.update(slowest_healthz_s=round(max(health, default=0.0), 3),
                       healthz_status={str(k): statuses.count(k) for k in sorted(set(statuses))},
                       rss_peak_so_far_mb=round(max(samples, default=0) / 1e6))  # fmt: skip
            result["scenarios"].append(row)
            print(row, file=sys.stderr, flush=True)
        for row in _bounds(url, canvas, health, samples):
            result["scenarios"].append(row)
            print(row, file=sys.stderr, flush=True)
        stop.set()
        for w in watchers:
            w.join()
        result["rss_high_water_mb"] = round(_rss(pid, "VmHWM") / 1e6)
    emit(result, args.json)


if __name__ == "__main__":
    main()
