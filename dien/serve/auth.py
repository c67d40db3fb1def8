"""Authentication of the scoring API: bearer tokens (or the same tokens as API keys), read from a file or an
environment variable by each ingress replica, compared in constant time.

A request carries ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``. Without either it gets a 401
(``WWW-Authenticate: Bearer``), with an unknown token a 403; the paths of ``open_paths`` (``/healthz`` by
default, for load balancers and Kubernetes probes) need none. Tokens are kept only as SHA-256 digests and a
presented token is compared with every one of them, so neither the time taken nor the order of the tokens
tells a client anything about the tokens it does not hold.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dien.serve.config import AuthConfig, resolve_path

MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused at start: a guessable token protects nothing."""
API_KEY_HEADER = b"x-api-key"


def load_tokens(config: AuthConfig) -> list[str]:
    """The tokens of ``config``'s file (one per line; blank lines and ``#`` comments skipped) and environment
    variable (comma-separated); an error naming where it looked when there are none or one is too short."""
    tokens: list[str] = []
    places = []
    if config.tokens_file is not None:
        path = resolve_path(config.tokens_file, "API tokens file")
        tokens += [line.strip() for line in path.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
        places.append(str(path))
    if config.tokens_env is not None:
        tokens += [t.strip() for t in os.environ.get(config.tokens_env, "").split(",") if t.strip()]
        places.append(f"${config.tokens_env}")
    if not tokens:
        raise ValueError(f"auth is on but no API token was found in {' or '.join(places)}: add one (e.g. "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`) or set auth: null")
    short = sum(len(t) < MIN_TOKEN_CHARS for t in tokens)
    if short:
        raise ValueError(f"{short} API token(s) in {' or '.join(places)} are shorter than {MIN_TOKEN_CHARS} "
                         "characters")
    return tokens


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenAuth:
    """ASGI middleware that lets through only requests with a known token (or to an open path).

    reject(status, message) -> the response for a refused request (the API's error format).
    """

    def __init__(self, app: ASGIApp, tokens: list[str], open_paths: tuple[str, ...],
                 reject: Callable[[int, str], Response]) -> None:
        self.app = app
        self.digests = [_digest(t.encode()) for t in tokens]
        self.open_paths = frozenset(open_paths)
        self.reject = reject

    def allows(self, presented: bytes) -> bool:
        digest = _digest(presented)
        known = False
        for stored in self.digests:
            known |= hmac.compare_digest(stored, digest)
        return known

    @staticmethod
    def presented_token(scope: Scope) -> bytes | None:
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"")
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
        return headers.get(API_KEY_HEADER) or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path not in self.open_paths:
            token = self.presented_token(scope)
            if token is None:
                response = self.reject(401, "missing: send Authorization: Bearer <token> or X-API-Key: <token>")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
            if not self.allows(token):
                await self.reject(403, "the token is not one of this API's")(scope, receive, send)
                return
        await self.app(scope, receive, send)
