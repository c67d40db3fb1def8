"""What Serve's HTTP proxy enforces before a request reaches any replica: limits a client cannot lift.

Serve's proxy hands a request to the ingress replica as soon as its headers are in, and the replica waits
for the body in one of its ``max_ongoing_requests`` slots. A few hundred clients that send headers and a few
body bytes, then wait, would hold every slot, and a client header (``x-request-timeout-seconds: 0``) switches
Serve's request timeout off. This ASGI middleware runs in the proxy itself (installed through Ray's
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, see :data:`PROXY_ENVIRONMENT`) and, for every HTTP request:

- refuses headers larger than ``max_header_bytes`` (431);
- reads the whole body within ``body_timeout_s`` of the headers (else 408) and up to ``max_body_bytes``
  (else 413) before the request goes on, so a slow client holds a proxy coroutine, never a replica slot;
- limits the requests being read or answered at once, from one client address (429) and overall (503, both
  with ``Retry-After``);
- drops Serve's per-request control headers, which only the operator may set, and cuts a client's
  ``X-Request-ID`` to :data:`REQUEST_ID_CHARS` safe characters (it is echoed and written to logs).

Refusals use the API's error format and are counted in ``dien_proxy_refused`` (tag ``reason``). The limits
come from ``DIEN_PROXY_*`` environment variables of the cluster (:meth:`ProxyLimits.from_env`). A client that
never finishes its headers is not seen here (uvicorn reads headers before the ASGI app runs): it holds one
socket of the proxy and nothing of the API; a load balancer's header deadline closes it.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dien.serve.schemas import FieldError, error_response_body

PROXY_ENVIRONMENT = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "dien.serve.proxy_guard:proxy_middlewares"}
"""What the environment of ``ray start`` (or of a driver that starts an embedded Ray) holds so that Serve's
proxies run :class:`RequestGuard`: ``platform/cluster-up.sh``, the KubeRay and cluster launcher configs, the
benchmarks and the tests set it."""
ENV_PREFIX = "DIEN_PROXY_"
REQUEST_ID_CHARS = 64
OPERATOR_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})
"""Serve's per-request switches (timeout, disconnect handling): the operator's settings, not a client's."""
_UNSAFE_ID_CHARS = re.compile(rb"[^A-Za-z0-9._:-]")
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ProxyLimits:
    """Per request and per proxy; each field is read from ``DIEN_PROXY_<FIELD>`` (e.g.
    ``DIEN_PROXY_BODY_TIMEOUT_S=5``)."""

    body_timeout_s: float = 10.0
    """The whole body must arrive within this many seconds of the headers."""
    max_header_bytes: int = 16_384
    """Request line excluded: the sum over headers of name and value lengths."""
    max_body_bytes: int = 8 << 20
    """The proxy's bound on a buffered body; each application's own ``limits.max_body_bytes`` is smaller."""
    max_requests: int = 1024
    """Requests being read or answered at once by this proxy."""
    max_requests_per_client: int = 128
    """The same, from one client address; 0: no per-client limit (behind a load balancer that connects from
    one address, leave the limit to the balancer)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0 or (value == 0 and f.name != "max_requests_per_client"):
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be positive, got {value}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ProxyLimits:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"{ENV_PREFIX}{f.name.upper()}"
            if name in environ:
                kind = float if f.type == "float" else int
                try:
                    values[f.name] = kind(environ[name])
                except ValueError:
                    raise ValueError(f"{name}={environ[name]!r} is not a{'' if kind is float else 'n'} "
                                     f"{kind.__name__}") from None
        return cls(**values)


class _BodyTooLarge(Exception):
    pass


class _ClientLeft(Exception):
    pass


def _error(status: int, field: str, message: str, retry_after: bool = False) -> tuple[Message, bytes]:
    """The start message and body of a refusal in the API's error format."""
    body = json.dumps(error_response_body([FieldError(field=field, message=message)])).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if retry_after:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}, body


def sanitized_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without Serve's operator headers and with a safe, short ``x-request-id`` (dropped when
    nothing safe is left: Serve then makes one)."""
    kept = []
    for name, value in headers:
        if name in OPERATOR_HEADERS:
            continue
        if name == b"x-request-id":
            value = _UNSAFE_ID_CHARS.sub(b"", value)[:REQUEST_ID_CHARS]
            if not value:
                continue
        kept.append((name, value))
    return kept


class RequestGuard:
    """ASGI middleware of the proxy: see the module's docstring."""

    def __init__(self, app: ASGIApp, limits: ProxyLimits | None = None) -> None:
        self.app = app
        self.limits = limits or ProxyLimits.from_env()
        self.in_flight = 0
        self.per_client: Counter[str] = Counter()
        self._refused = None

    def refused(self, reason: str) -> None:
        if self._refused is None:
            try:
                from ray.util.metrics import Counter as RayCounter
                self._refused = RayCounter("dien_proxy_refused", "Requests the proxy refused before any replica",
                                           tag_keys=("reason",))
            except Exception:  # outside a Ray worker (unit tests, a plain ASGI server): no metrics
                self._refused = False
        if self._refused:
            self._refused.inc(tags={"reason": reason})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > self.limits.max_header_bytes:
            await self.refuse(send, "headers", 431, "headers",
                              f"{header_bytes} bytes of headers, more than the limit of {self.limits.max_header_bytes}")
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        per_client = self.limits.max_requests_per_client
        if per_client and self.per_client[client] >= per_client:
            await self.refuse(send, "client", 429, "client",
                              f"{per_client} requests of this client address are in progress, its limit; retry", True)
            return
        if self.in_flight >= self.limits.max_requests:
            await self.refuse(send, "busy", 503, "server",
                              f"{self.in_flight} requests in progress, the limit of this proxy; retry", True)
            return
        self.in_flight += 1
        self.per_client[client] += 1
        try:
            await self.guarded(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]

    async def guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = {**scope, "headers": sanitized_headers(scope["headers"])}
        try:
            body = await asyncio.wait_for(self.read_body(receive), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            await self.refuse(send, "slow_body", 408, "body",
                              f"not received within {self.limits.body_timeout_s:g} s of the headers")
            return
        except _BodyTooLarge:
            await self.refuse(send, "large_body", 413, "body",
                              f"larger than the proxy's limit of {self.limits.max_body_bytes} bytes")
            return
        except _ClientLeft:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body only a disconnect can come

        await self.app(scope, replay, send)

    async def read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def refuse(self, send: Send, reason: str, status: int, field: str, message: str,
                     retry_after: bool = False) -> None:
        self.refused(reason)
        start, body = _error(status, field, message, retry_after)
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})


def proxy_middlewares() -> list[Middleware]:
    """What Serve's proxy calls (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the guard, with the limits of
    the proxy's environment."""
    return [Middleware(RequestGuard, limits=ProxyLimits.from_env())]
