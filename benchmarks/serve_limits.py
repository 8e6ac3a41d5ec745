"""The server's memory under the worst requests its default limits allow, and whether it stays responsive.

    python -m benchmarks.serve_limits --json      # results/serve-limits-DATE.json

`cellmorphnet serve` (the installed command, every default) on a free local port. A blank 7000x7000 PNG is
about 60 KB on the wire and 49 megapixels (147 MB) decoded. Scenarios, in order:

1. one request of 4 such canvases (196 million pixels: just under the request's default budget of 200);
2. eight such requests at once (decoding is bounded to ``--max-concurrent-sets`` requests at a time);
3. one request of 5 (245 million pixels: over the budget, refused from the headers, 413);
4. slow clients: 200 connections sending their headers one byte a second for 20 s, then 1000 sending a
   body the same way (``--slow 0`` skips them). Reported: how many the server answered or closed, and when.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=7000, help="side of the blank PNG canvases")
    ap.add_argument("--slow", type=float, default=20.0, help="seconds of the slow-client scenario (0: skip it)")
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
        for heads, bodies in ((200, 0), (0, 1000)) if args.slow else ():
            health.clear()
            statuses.clear()
            row = _slow_clients(url, args.slow, heads, bodies)
            row.update(slowest_healthz_s=round(max(health, default=0.0), 3),
                       healthz_status={str(k): statuses.count(k) for k in sorted(set(statuses))},
                       rss_peak_so_far_mb=round(max(samples, default=0) / 1e6))  # fmt: skip
            result["scenarios"].append(row)
            print(row, file=sys.stderr, flush=True)
        stop.set()
        for w in watchers:
            w.join()
        result["rss_high_water_mb"] = round(_rss(pid, "VmHWM") / 1e6)
    emit(result, args.json)


if __name__ == "__main__":
    main()
