"""Request bodies: refusals with an HTTP status, multipart uploads read into memory under the limits and their
deadline, and every other body bounded before a route sees it (``BodyLimit``). Nothing uploaded touches the disk."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from cellmorphnet.serve.security import SAFE_METHODS
from cellmorphnet.serve.settings import Limits

log = logging.getLogger("cellmorphnet.serve")


class Refused(Exception):
    """A request refused with an HTTP status: 413 over a limit, 400 malformed, 408 too slow (``close``: the
    connection is closed after the answer, whatever of the body is still coming)."""

    def __init__(self, message: str, status: int = 400, *, close: bool = False) -> None:
        self.message = message
        self.status = status
        self.close = close


def too_large(message: str) -> Refused:
    return Refused(message, 413)


async def read_files(request: Request, field: str, limits: Limits) -> list[tuple[str, bytes]]:
    """The uploaded files of a multipart request, in order, as ``(name, bytes)``; the limits enforced on the way."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise too_large(f"The request is larger than {limits.max_request_bytes:,} bytes.")
    body = bytearray()
    who = f"{request.client.host}:{request.client.port}" if request.client else "a client"

    async def receive() -> None:
        # every byte buys time: the upload may lag ``body_timeout_s`` behind ``min_upload_rate`` at most
        loop = asyncio.get_running_loop()
        start, chunks = loop.time(), request.stream().__aiter__()
        while True:
            deadline = start + limits.body_timeout_s + len(body) / limits.min_upload_rate
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                return
            body.extend(chunk)
            if len(body) > limits.max_request_bytes:
                raise too_large(f"The request is larger than {limits.max_request_bytes:,} bytes.")

    try:
        await receive()
    except ClientDisconnect:  # an everyday event, not an error of the server: one line, no traceback
        log.info("%s disconnected during its upload (%s bytes received)", who, f"{len(body):,}")
        raise Refused("The client disconnected during the upload.") from None
    except asyncio.TimeoutError:  # a slow (or slowloris) client: cut off, its connection closed
        log.info("%s uploaded too slowly (%s bytes received): cut off", who, f"{len(body):,}")
        rate = f"{limits.min_upload_rate / 1000:g} KB/s"
        raise Refused(f"The upload was too slow (it fell {limits.body_timeout_s:g} s behind {rate}).", 408,
                       close=True) from None  # fmt: skip
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise Refused("Send the images as multipart/form-data.")

    async def once():
        yield bytes(body)

    parser = MultiPartParser(request.headers, once(), max_files=limits.max_files + 1, max_fields=100)
    parser.spool_max_size = len(body) + 1  # keep every part in memory (the body is already bounded)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "Too many files" in e.message:
            raise too_large(f"At most {limits.max_files} files per request.") from None
        raise Refused(f"Malformed multipart body ({e.message}).") from None
    files = []
    try:
        for key, value in form.multi_items():
            if key != field or not isinstance(value, UploadFile):
                continue
            data = await value.read()
            if len(data) > limits.max_file_bytes:
                raise too_large(f"{value.filename}: larger than {limits.max_file_bytes:,} bytes.")
            files.append((value.filename or "", data))
    finally:
        await form.close()
    if len(files) > limits.max_files:
        raise too_large(f"At most {limits.max_files} files per request.")
    if not files:
        raise Refused(f"No files: send the images as multipart form field '{field}'.")
    return files


def multipart_body(field: str, many: bool) -> dict[str, Any]:
    """The OpenAPI request body of an upload route (the body is parsed by hand, so it is declared here)."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else binary
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [field], "properties": {field: schema}}}}}}  # fmt: skip


UPLOAD_ROUTES = re.compile(r"^/v1/(predict|gradcam|cases/.+/cells)$")  # they read their own bodies


class _BodyRefused(Exception):
    def __init__(self, message: str, status: int) -> None:
        self.message, self.status = message, status


class BodyLimit:
    """Every request body under a size limit and a read deadline, before any route sees it.

    The upload routes (``UPLOAD_ROUTES``) read their multipart bodies themselves, bounded and timed as they come
    (``read_files``). Every other body (a review is a few hundred bytes of JSON; anything else sent there) is
    read here whole, at most ``max_json_bytes`` (413), and cut off (408, connection closed) once it falls
    ``body_timeout_s`` behind ``min_upload_rate``, as uploads are, so no slow body holds a connection for ever.
    """

    def __init__(self, app, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        if UPLOAD_ROUTES.match(scope["path"]):  # read, bounded and timed by ``read_files`` as it comes
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self.limits.max_json_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, f"The request body is larger than {limit:,} bytes.", 413)
            return
        loop = asyncio.get_running_loop()
        start, received = loop.time(), 0

        async def limited_receive():
            nonlocal received
            deadline = start + self.limits.body_timeout_s + received / self.limits.min_upload_rate
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyRefused("The request body came too slowly.", 408) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyRefused(f"The request body is larger than {limit:,} bytes.", 413)
            return message

        body = bytearray()
        try:
            while True:
                message = await limited_receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        except _BodyRefused as e:
            log.info("a request body was refused: %s", e.message)
            await self._refuse(scope, receive, send, e.message, e.status)
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # (a disconnect, once the answer is on its way)

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, message: str, status: int) -> None:
        response = JSONResponse({"detail": message}, status_code=status, headers={"Connection": "close"})
        await response(scope, receive, send)
