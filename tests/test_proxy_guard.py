"""The proxy's request guard (``dien.serve.proxy_guard``) as an ASGI middleware around a small ASGI app: what it
refuses, what it lets through, and what the app behind it sees. The same guard in Serve's real proxy is tested
in ``test_serve.py`` (held connections, oversized headers)."""
import asyncio
import json

import pytest

from dien.serve.proxy_guard import PROXY_ENVIRONMENT, REQUEST_ID_CHARS, ProxyLimits, RequestGuard, proxy_middlewares

LIMITS = ProxyLimits(body_timeout_s=0.2, max_header_bytes=200, max_body_bytes=1000, max_requests=3,
                     max_requests_per_client=2)


class App:
    """Answers 200 with what it saw; ``hold`` makes every request wait until released."""

    def __init__(self, hold: bool = False) -> None:
        self.seen: list[tuple[dict, bytes]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.seen.append((scope, message["body"]))
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(headers=(), client="10.0.0.1"):
    return {"type": "http", "method": "POST", "path": "/v1/score", "headers": list(headers),
            "client": (client, 5000)}


def body_in(*chunks: bytes, then_wait: bool = False):
    """An ASGI receive delivering ``chunks`` (the last ends the body unless ``then_wait``), then waiting."""
    messages = [{"type": "http.request", "body": c, "more_body": then_wait or i < len(chunks) - 1}
                for i, c in enumerate(chunks)]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()
    return receive


async def call(guard, request_scope, receive):
    sent = []

    async def send(message):
        sent.append(message)
    await guard(request_scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, dict(sent[0]["headers"]), body


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_app_gets_the_whole_body_with_client_headers_cleaned():
    app = App()
    guard = RequestGuard(app, ProxyLimits())
    headers = [(b"x-request-timeout-seconds", b"0"), (b"x-request-disconnect-disabled", b"?1"),
               (b"x-request-id", b"abc/\r\n<script>" + b"7" * 100), (b"content-type", b"application/json")]
    status, _, answer = run(call(guard, scope(headers), body_in(b'{"user_id":', b' "u1"}')))
    assert (status, answer) == (200, b"ok")
    (seen_scope, seen_body), = app.seen
    assert seen_body == b'{"user_id": "u1"}'
    seen = dict(seen_scope["headers"])
    assert b"x-request-timeout-seconds" not in seen and b"x-request-disconnect-disabled" not in seen
    assert seen[b"x-request-id"] == (b"abcscript" + b"7" * 100)[:REQUEST_ID_CHARS]
    assert seen[b"content-type"] == b"application/json"
    # An id with nothing safe in it is dropped (Serve then makes its own).
    run(call(guard, scope([(b"x-request-id", b"<>\r\n")]), body_in(b"")))
    assert b"x-request-id" not in dict(app.seen[1][0]["headers"])


@pytest.mark.parametrize("case, expected", [
    ("headers", (431, "headers: 217 bytes of headers, more than the limit of 200")),
    ("slow body", (408, "body: not received within 0.2 s of the headers")),
    ("large body", (413, "body: larger than the proxy's limit of 1000 bytes")),
])
def test_refusals_name_the_problem_and_never_reach_the_app(case, expected):
    app = App()
    guard = RequestGuard(app, LIMITS)
    request_scope = scope([(b"x-padding", b"p" * 208)] if case == "headers" else [])
    receive = {"headers": body_in(b"{}"), "slow body": body_in(b'{"user', then_wait=True),
               "large body": body_in(b"x" * 600, b"x" * 600)}[case]
    status, headers, answer = run(call(guard, request_scope, receive))
    assert (status, json.loads(answer)["error"]) == expected
    assert json.loads(answer)["detail"][0]["message"] in expected[1]
    assert headers[b"connection"] == b"close"
    assert app.seen == [] and guard.in_flight == 0 and not guard.per_client


def test_requests_in_progress_are_limited_per_client_and_overall():
    async def scenario():
        app = App(hold=True)
        guard = RequestGuard(app, LIMITS)
        held = [asyncio.create_task(call(guard, scope(client=c), body_in(b"{}"))) for c in ("a", "a", "b")]
        await asyncio.sleep(0.05)
        same_client = await call(guard, scope(client="a"), body_in(b"{}"))
        any_client = await call(guard, scope(client="c"), body_in(b"{}"))
        app.release.set()
        answered = [status for status, _, _ in await asyncio.gather(*held)]
        after = await call(guard, scope(client="a"), body_in(b"{}"))
        return same_client, any_client, answered, after, guard

    same_client, any_client, answered, after, guard = run(scenario())
    assert same_client[0] == 429 and same_client[1][b"retry-after"] == b"1"
    assert "2 requests of this client address are in progress" in json.loads(same_client[2])["error"]
    assert any_client[0] == 503 and "3 requests in progress" in json.loads(any_client[2])["error"]
    assert answered == [200, 200, 200] and after[0] == 200
    assert guard.in_flight == 0 and not guard.per_client


def test_a_client_that_leaves_mid_body_frees_its_place():
    async def receive_then_leave(messages=[{"type": "http.request", "body": b"{", "more_body": True},
                                           {"type": "http.disconnect"}]):
        return messages.pop(0)
    app = App()
    guard = RequestGuard(app, LIMITS)

    async def scenario():
        async def send(message):
            raise AssertionError("nothing is sent to a client that left")
        await guard(scope(), receive_then_leave, send)
    run(scenario())
    assert app.seen == [] and guard.in_flight == 0


def test_limits_come_from_the_environment_with_errors_naming_the_variable(monkeypatch):
    monkeypatch.setenv("DIEN_PROXY_BODY_TIMEOUT_S", "2.5")
    monkeypatch.setenv("DIEN_PROXY_MAX_REQUESTS_PER_CLIENT", "0")
    (middleware,) = proxy_middlewares()
    assert middleware.kwargs["limits"] == ProxyLimits(body_timeout_s=2.5, max_requests_per_client=0)
    with pytest.raises(ValueError, match="DIEN_PROXY_MAX_REQUESTS='many' is not an int"):
        ProxyLimits.from_env({"DIEN_PROXY_MAX_REQUESTS": "many"})
    with pytest.raises(ValueError, match="DIEN_PROXY_BODY_TIMEOUT_S must be positive, got 0.0"):
        ProxyLimits.from_env({"DIEN_PROXY_BODY_TIMEOUT_S": "0"})
    module, _, function = PROXY_ENVIRONMENT["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].partition(":")
    assert getattr(__import__(module, fromlist=[function]), function) is proxy_middlewares
