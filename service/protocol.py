"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for a request's headers.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with
``limit_concurrency``, how many connections are open, but not how long a client may take to
send a request's headers: a connection that sends half a header line, or nothing, is held
forever (measured: still open after minutes), so a few hundred such clients fill every slot.
This subclass closes a connection whose request headers have begun (or not yet begun, on a new
connection) and are not complete within ``header_timeout_s``. The body has its own deadline
(``service.middleware.BodyTimeout``).

It relies on three attributes of uvicorn's ``H11Protocol`` (``conn``, the h11 connection whose
``their_state`` is ``IDLE`` until a request's headers are complete; ``loop``; ``transport``),
which ``tests/test_slow_clients.py`` exercises against the installed uvicorn.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout_s: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # a request's headers have begun and are not complete yet
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to hand ``uvicorn.run(http=...)``, with its deadline set."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": seconds})
