"""A small local HTTP server for download tests: serves bytes with Range support and scripted faults."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serve ``routes[path] = (body, options)`` on 127.0.0.1.

    Options: ``cut_at`` (close the connection after this many body bytes, once), ``content_type``,
    ``status`` (e.g. 404), ``ignore_range``.
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, dict]] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path not in server.routes:
                    self.send_error(404, "Not Found")
                    return
                body, opts = server.routes[self.path]
                if opts.get("status"):
                    self.send_error(opts["status"])
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not opts.get("ignore_range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Type", opts.get("content_type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                cut = opts.pop("cut_at", None)
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
