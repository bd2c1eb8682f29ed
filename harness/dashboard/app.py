"""The dashboard's web app: one read-only page, its JSON views, and a server-sent event stream of changes.

Security follows `serve --http` and reuses its guard (`server.http.HttpGuard`): the Host header must name this server,
a browser's Origin must be this server, and beyond loopback every data request needs the bearer token. The page itself
(HTML, script, style, the vendored chart library) holds no run data and is served without the token, so a browser can
load it; the script reads the token from the address's fragment (`#token=...`, never sent to any server), keeps it
in the tab's sessionStorage and sends it as `Authorization: Bearer` on every data request, the event stream included
(read with `fetch`, since `EventSource` cannot send headers). Only GET and HEAD exist: any other method is refused
with 405 before routing, so nothing on the page, or anyone else, can change the run through it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from server.http import (MCP_PATH, HttpGuard, HttpPolicy, HttpSetupError, decide_token, display_url,
                         uvicorn_config)

from harness.dashboard.data import RunData

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
API_PREFIX = "/api/"
POLL_S = 0.5  # how often the event stream looks at the run's files (a few stat calls)
PING_S = 15  # keeps proxies from closing a quiet stream
READ_METHODS = frozenset({"GET", "HEAD"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
]


class ReadOnly:
    """Refuses every method but GET and HEAD with 405, and adds headers that keep the page from being framed or
    fed foreign scripts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        if method not in READ_METHODS:
            log.warning("refused %s %s: the dashboard is read-only", method, scope.get("path"))
            body = json.dumps({"error": f"method {method} is not allowed: the dashboard is read-only "
                                        "(GET and HEAD); change a run with the autoresearch commands"}).encode()
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"content-type", b"application/json"), (b"allow", b"GET, HEAD"),
                                    (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


class _PageOrData:
    """`/api/...` to the data (token required), everything else to the page's fixed files (Host/Origin only)."""

    def __init__(self, page: ASGIApp, data: ASGIApp) -> None:
        self.page, self.data = page, data

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.data if scope.get("path", "").startswith(API_PREFIX) else self.page
        await target(scope, receive, send)


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"query parameter {name}={raw!r} is not an integer; pass a whole number") from None


def build_dashboard_app(data: RunData, policy: HttpPolicy, poll_s: float = POLL_S) -> ASGIApp:
    """The whole dashboard for one run, guarded by `policy` (see the module docstring for what needs the token)."""

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def summary(_: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(data.summary))

    async def chart(_: Request) -> Response:
        result = await anyio.to_thread.run_sync(data.chart)
        return JSONResponse(result.to_json())

    async def experiments(request: Request) -> Response:
        q = request.query_params
        try:
            offset, limit = _int(request, "offset", 0), _int(request, "limit", 100)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        page = await anyio.to_thread.run_sync(lambda: data.rows(
            offset=offset, limit=limit, status=q.get("status") or None, decision=q.get("decision") or None,
            query=q.get("q") or None, newest_first=q.get("order", "newest") != "oldest"))
        return JSONResponse(page)

    async def experiment(request: Request) -> Response:
        raw = request.path_params["experiment_id"]
        if not raw.isdigit():
            return JSONResponse({"error": f"experiment id {raw!r} is not a number; use an id from the table"},
                                status_code=400)
        detail = await anyio.to_thread.run_sync(data.detail, int(raw))
        if detail is None:
            return JSONResponse({"error": f"no experiment {raw} in run {data.meta.tag}; it may not have finished yet"},
                                status_code=404)
        return JSONResponse(detail)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[dict[str, str]]:
            last: dict[str, Any] | None = None
            while True:
                stamps = await anyio.to_thread.run_sync(data.stamps)
                if stamps != last or await anyio.to_thread.run_sync(data.verdict_due):
                    last = stamps
                    body = await anyio.to_thread.run_sync(data.summary)
                    yield {"event": "summary", "data": json.dumps(body, separators=(",", ":"))}
                if await request.is_disconnected():
                    return
                await anyio.sleep(poll_s)

        return EventSourceResponse(stream(), ping=PING_S, headers={"cache-control": "no-store"})

    api = Starlette(routes=[
        Route("/api/summary", summary), Route("/api/chart", chart), Route("/api/experiments", experiments),
        Route("/api/experiments/{experiment_id}", experiment), Route("/api/events", events),
    ])
    page = Starlette(routes=[Route("/", index), Mount("/static", StaticFiles(directory=STATIC), name="static")])
    page_policy = dataclasses.replace(policy, token=None)  # fixed files only: Host and Origin still checked
    return ReadOnly(_PageOrData(HttpGuard(page, page_policy), HttpGuard(GZipMiddleware(api, minimum_size=1024),
                                                                           policy)))


def page_url(host: str, port: int, token: str | None) -> str:
    """The address to open; the token travels in the fragment, which the browser never sends to a server."""
    base = display_url(host, port).removesuffix(MCP_PATH) + "/"
    return base + (f"#token={token}" if token else "")


def serve_dashboard(data: RunData, *, host: str = "127.0.0.1", port: int = 8780, token: str | None = None) -> int:
    """Serve the dashboard until SIGINT/SIGTERM; returns the exit status (2 when the address or token is unusable)."""
    try:
        decision = decide_token(host, token)
        policy = HttpPolicy.for_bind(host, port, decision.token)
    except HttpSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = page_url(host, port, decision.token)
    note = "loopback only, no token" if not decision.token else (
        "token generated for this start" if decision.generated else "bearer token required")
    print(f"autoresearch dashboard of run {data.meta.tag} at {url} ({note}; read-only)", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn_config(build_dashboard_app(data, policy), host=host, port=port))
    try:
        server.run()
    except SystemExit:
        print(f"error: could not listen on {host}:{port}; choose another --port or --host", file=sys.stderr)
        return 1
    return 0
