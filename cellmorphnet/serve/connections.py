"""Deadlines and a cap on the HTTP connections of ``cellmorphnet serve``, where uvicorn has no setting for them.

uvicorn closes a keep-alive connection that stays idle (``timeout_keep_alive``) and answers 503 to a request
that arrives while ``limit_concurrency`` connections are open, but a client that opens a connection and sends
its request line and headers one byte a second keeps it open for ever, and a crowd of them holds every slot.
``protocol_class`` gives uvicorn's own h11 protocol two things more:

- a header deadline: a connection with no request being answered is closed ``header_timeout`` seconds after it
  opened or after its last response, whatever trickles in meanwhile;
- room at the cap: when more than ``max_connections`` are open, a new connection closes the oldest ones that
  hold a slot without using it: idle keep-alive, still sending headers, or uploading slower than
  ``min_upload_rate`` (bytes a second, over a second at least) with no answer begun. Such connections cannot
  keep real requests out; past the cap of busy ones, uvicorn answers 503.

A request's body also has its own deadline in the application, where it is answered with 408.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("cellmorphnet.serve")


def protocol_class(header_timeout: float, max_connections: int, min_upload_rate: float) -> type:
    """uvicorn's h11 protocol class with the header deadline and the room-making above (``uvicorn.run(http=...)``;
    pass ``limit_concurrency=max_connections + 1`` too: uvicorn answers 503 from that many connections on)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _deadline = None
        _opened = 0.0
        _received = 0

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _answering(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _wasting(self, now: float) -> bool:
            """Holds a slot without using it: idle, in its headers, or a slow upload not yet answered."""
            if not self._answering():
                return True
            age = now - self._opened
            return not self.cycle.response_started and age >= 1.0 and self._received < min_upload_rate * age

        def _who(self) -> str:
            return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

        def _close(self) -> None:
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()

        def _expire(self) -> None:
            self._deadline = None
            if self._answering() or self.transport.is_closing():
                return  # the headers came in time: the request's own deadlines apply from here
            log.info("%s sent no complete request within %g s: connection closed", self._who(), header_timeout)
            self._close()

        def _make_room(self) -> None:
            now = time.monotonic()
            live = [c for c in self.connections if not c.transport.is_closing()]
            wasting = sorted((c for c in live if isinstance(c, GuardedH11Protocol) and c is not self
                              and c._wasting(now)), key=lambda c: c._opened)  # fmt: skip
            for c in wasting[: max(0, len(live) - max_connections)]:
                log.info("%s closed to make room (%d connections open)", c._who(), len(live))
                c._close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened = time.monotonic()
            self._arm()
            if len(self.connections) > max_connections:
                self._make_room()

        def data_received(self, data: bytes) -> None:
            self._received += len(data)
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._opened, self._received = time.monotonic(), 0  # the next request's rate counts from here
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


class OverloadNotices(logging.Filter):
    """uvicorn logs "Exceeded concurrency limit." once per request it answers 503; under a burst that is a line
    per request. This filter on the ``uvicorn.error`` logger lets the first through, then at most one every
    ``every`` seconds, saying how many were answered 503 since the last; every other record passes unchanged."""

    MESSAGE = "Exceeded concurrency limit."

    def __init__(self, every: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self.last: float | None = None
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != self.MESSAGE:
            return True
        now = self.clock()
        self.held += 1
        if self.last is not None and now - self.last < self.every:
            return False
        if self.last is None:
            record.msg = "Exceeded concurrency limit: a request was answered 503 (busy); further ones are counted."
        else:
            since = now - self.last
            record.msg = f"Exceeded concurrency limit: {self.held} requests answered 503 in the last {since:.0f} s."
        record.args = ()
        self.last, self.held = now, 0
        return True
