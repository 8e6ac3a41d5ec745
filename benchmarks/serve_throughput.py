"""Throughput of `cellmorphnet serve` under 16 concurrent single-image clients, against `infer` on the same machine.

    python -m benchmarks.serve_throughput --json      # results/serve-throughput-DATE.json

1. infer: images/s of the library call `infer` makes (``inference.predict_files`` with the run's default
   options), over the 240 real test JPEGs, model already loaded; best of 3.
2. The server, started as `cellmorphnet serve` in its own process, with micro-batching (the defaults)
   and without it (``--max-batch 1``): 16 client threads, each posting one image per request to
   /v1/predict for ``--seconds``; images/s and p50/p99 latency of the requests.

All on the shipped model (the default: 64 px, 8-view average). The clients run on the same machine
and take some of its CPU, as they would on a small lab server.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from benchmarks._common import SHARED, emit, header, serving

JPEGS = sorted((SHARED / "bloodmnist-pbc" / "test_images").rglob("*.jpg"))


def infer_rate(run: str, engine: str = "auto") -> dict:
    from cellmorphnet.inference import inference_options, predict_files
    from cellmorphnet.inference.engine import load_model
    from cellmorphnet.runs import folders as runs

    rm = load_model(runs.resolve_run(run), "best", "cpu", engine=engine)
    o = inference_options(rm.record)
    predict_files(rm, JPEGS[:32], o)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        predict_files(rm, JPEGS, o)
        times.append(time.perf_counter() - start)
    return {"images": len(JPEGS), "seconds": [round(t, 2) for t in times], "images_per_s": len(JPEGS) / min(times)}


def serve_rate(run: str, seconds: float, clients: int, extra: list[str]) -> dict:
    import httpx

    with serving(run, *extra) as url:
        payloads = [(p.name, p.read_bytes()) for p in JPEGS]
        latencies: list[float] = []
        errors = []
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                j = i
                while time.monotonic() < stop:
                    name, data = payloads[j % len(payloads)]
                    j += clients
                    t = time.perf_counter()
                    r = c.post("/v1/predict", files={"files": (name, data, "image/jpeg")})
                    dt = time.perf_counter() - t
                    with lock:
                        latencies.append(dt)
                        if r.status_code != 200:
                            errors.append(r.status_code)

        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1)

    return {"options": extra, "clients": clients, "seconds": round(elapsed, 1), "requests": len(lat),
            "errors": len(errors), "images_per_s": len(lat) / elapsed, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="bloodmnist")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--engine", default="auto", help="serve's and infer's --engine")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = header("python -m benchmarks.serve_throughput " + " ".join(sys.argv[1:]))
    result["infer"] = infer_rate(args.run, args.engine)
    print(f"infer: {result['infer']['images_per_s']:.1f} images/s", file=sys.stderr)
    engine = ["--engine", args.engine]
    result["serve_micro_batching"] = serve_rate(args.run, args.seconds, args.clients, engine)
    print(f"serve (micro-batching): {result['serve_micro_batching']}", file=sys.stderr)
    result["serve_no_batching"] = serve_rate(args.run, args.seconds, args.clients, [*engine, "--max-batch", "1"])
    print(f"serve (no batching): {result['serve_no_batching']}", file=sys.stderr)
    result["serve_one_client"] = serve_rate(args.run, min(args.seconds, 15), 1, engine)  # single-image latency
    print(f"serve (one client): {result['serve_one_client']}", file=sys.stderr)
    for k in ("serve_micro_batching", "serve_no_batching", "serve_one_client"):
        result[k]["ratio_to_infer"] = result[k]["images_per_s"] / result["infer"]["images_per_s"]
    emit(result, args.json)


if __name__ == "__main__":
    main()
