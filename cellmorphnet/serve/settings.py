"""The server's limits, in one typed object: what one request may send and cost, read by the service, the web
application and the command's flags (whose defaults are these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how much decoding the server does at once. Sizes in bytes; pixels decoded.

    A request's images are decoded and held while its set is surveyed and framed (a 62 KB PNG can be a
    49-megapixel canvas, 147 MB decoded): ``max_request_pixels`` bounds what one request holds and
    ``max_concurrent_sets`` how many requests are decoding at once, so the server's memory stays bounded
    whatever arrives (about 3 bytes a pixel x both, plus the model; docs/serve.md measures it).
    """

    max_file_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 100 * 1024 * 1024
    max_files: int = 256
    max_pixels: int = 50_000_000  # per image
    max_request_pixels: int = 200_000_000  # all the images of one request together
    max_concurrent_sets: int = 2  # requests decoding and framing their images at the same time
    # an upload is cut off (408, connection closed) once it falls body_timeout_s behind min_upload_rate (bytes/s)
    body_timeout_s: float = 10.0
    min_upload_rate: float = 50_000.0
    max_json_bytes: int = 64 * 1024  # a JSON body (a review) is a few hundred bytes
    request_timeout_s: float = 120.0  # a request's work (decoding, finding cells, the model) at most; then 503
    # requests of at most this many pixels together (one or a few single-cell images) run in a lane of their own, so
    # a field being searched never makes them wait (it adds one thread holding at most this much decoded)
    light_request_pixels: int = 4_000_000
