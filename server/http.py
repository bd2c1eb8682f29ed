"""Serve the locked tools over streamable HTTP at `/mcp`, refusing anything that is not clearly a legitimate client.

Secure by default, because an open port is reachable by more than the agent it was opened for:
- a bind to any address other than loopback requires a bearer token; when none is given one is generated and shown once
  on stderr (never stdout, never server.log);
- every request is checked before the SDK sees it: the Host header must name the bound address (a browser tricked by DNS
  rebinding sends the attacker's name), a browser's Origin must be this server, the token must match (compared in
  constant time) and the body must fit in `MAX_BODY_BYTES`;
- each refusal is a JSON-RPC error body whose message says what to fix, with the HTTP status a client expects. A
  missing or wrong token is answered 403 without a `WWW-Authenticate` challenge, not 401: MCP clients (the Inspector,
  Claude Code) answer a 401 by starting an OAuth flow this server does not offer, and the person never sees the
  message about the token;
- Host and Origin are compared without regard to letter case (DNS names and URL schemes are case-insensitive), and
  the request is passed on with both lower-cased, so the SDK's exact-match check behind ours agrees with ours;
- a connection must finish sending a request's headers within `HEADER_TIMEOUT_S` of opening (or of the previous
  response), or it is answered 408 and closed: a client that never finishes cannot hold a connection open for ever.

The SDK's own `TransportSecuritySettings` check is kept behind ours with the same allowed names, as a second line.
All tool calls run in uvicorn's one event loop, so the engine's per-run lock still refuses a second concurrent
experiment exactly as it does on stdio.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import h11
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.app import EngineSlot, build_server
from server.engine import Engine

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
MAX_BODY_BYTES = 1024 * 1024  # a tool call is a few hundred bytes; 1 MiB leaves room and bounds memory per request
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
GRACEFUL_SHUTDOWN_S = 5  # then open streams are cut, so an experiment in flight is killed and recorded
HEADER_TIMEOUT_S = 10.0  # a real client sends its headers in one packet; 10 s covers a slow link


class HttpSetupError(ValueError):
    """The HTTP server cannot start as asked (bad address or token); the message says what to change."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and the name localhost."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """True for 0.0.0.0 and ::, which listen on every interface under names this process cannot know."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _authority(host: str, port: int) -> str:
    name = host.strip("[]").lower()
    if ":" in name:  # an IPv6 literal is bracketed in Host headers and URLs
        name = f"[{name}]"
    return f"{name}:{port}"


@dataclass(frozen=True)
class TokenDecision:
    token: str | None
    generated: bool


def decide_token(host: str, token: str | None) -> TokenDecision:
    """The token to enforce: the one given; else a fresh one when `host` is reachable from other machines; else none.

    An empty string counts as not given (an unset environment variable often arrives as ""). A given token shorter
    than `MIN_TOKEN_CHARS` is refused: it could be guessed.
    """
    if token:
        if len(token) < MIN_TOKEN_CHARS:
            raise HttpSetupError(
                f"the bearer token is {len(token)} characters; use at least {MIN_TOKEN_CHARS} (for example the output "
                "of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or pass none to have one made"
            )
        return TokenDecision(token, generated=False)
    if is_loopback(host):
        return TokenDecision(None, generated=False)
    return TokenDecision(secrets.token_urlsafe(32), generated=True)


@dataclass(frozen=True)
class HttpPolicy:
    """What every request must satisfy. `allowed_hosts` is None for a wildcard bind, where the token is the guard."""

    token: str | None
    allowed_hosts: frozenset[str] | None
    max_body_bytes: int = MAX_BODY_BYTES

    @classmethod
    def for_bind(cls, host: str, port: int, token: str | None, max_body_bytes: int = MAX_BODY_BYTES) -> "HttpPolicy":
        if is_wildcard(host):
            if not token:
                raise HttpSetupError(f"binding {host} listens on every interface and needs a bearer token")
            return cls(token, None, max_body_bytes)
        names = {_authority(host, port)}
        if is_loopback(host):
            names.update(f"{alias}:{port}" for alias in LOOPBACK_NAMES)
        elif not token:
            raise HttpSetupError(f"binding {host} makes the server reachable from other machines and needs a token")
        if port == 80:  # clients leave the default port out of Host
            names.update(name.rsplit(":", 1)[0] for name in list(names))
        return cls(token, frozenset(names), max_body_bytes)

    def sdk_settings(self) -> TransportSecuritySettings:
        """The same Host/Origin rule for the SDK's own check, so the two never disagree."""
        if self.allowed_hosts is None:
            return TransportSecuritySettings(enable_dns_rebinding_protection=False)
        hosts = sorted(self.allowed_hosts)
        return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=[f"http://{h}" for h in hosts])


@dataclass(frozen=True)
class Rejection:
    status: int
    message: str

    def body(self) -> bytes:
        # JSON-RPC shaped, so MCP clients show the message instead of a bare status line
        return json.dumps({"jsonrpc": "2.0", "id": None,
                           "error": {"code": -32600, "message": self.message}}).encode()

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body())).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body()})


def check_headers(policy: HttpPolicy, headers: Headers) -> Rejection | None:
    """Host, then Origin, then the token: the first failed check, or None when the request may proceed."""
    host = (headers.get("host") or "").lower()
    if policy.allowed_hosts is not None and host not in policy.allowed_hosts:
        return Rejection(421, f"Host header {host!r} does not name this server; connect to one of "
                              f"{', '.join(sorted(policy.allowed_hosts))} (requests through another name are refused "
                              "to stop DNS rebinding)")
    origin = headers.get("origin")
    if origin is not None and origin.lower() != f"http://{host}":
        return Rejection(403, f"Origin {origin!r} is not this server (http://{host}); browsers on other sites may not "
                              "call these tools. Non-browser clients should send no Origin header")
    if policy.token is None:
        return None
    scheme, _, given = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return Rejection(403, "missing bearer token: this autoresearch server needs the header 'Authorization: "
                              "Bearer <token>' with the token printed when the server started (or the one passed "
                              "with --token); it does not offer OAuth")
    if not hmac.compare_digest(given.strip().encode(), policy.token.encode()):
        return Rejection(403, "wrong bearer token: use the token printed when the server started (or the one passed "
                              "with --token) in 'Authorization: Bearer <token>'; this server does not offer OAuth")
    return None


def _normalized(scope: Scope) -> Scope:
    """The scope with Host and Origin lower-cased, so every check after ours sees the names ours accepted."""
    headers = [(k, v.lower() if k in (b"host", b"origin") else v) for k, v in scope.get("headers", [])]
    return {**scope, "headers": headers}


def _too_large(limit: int) -> Rejection:
    return Rejection(413, f"request body exceeds {limit} bytes; a tool call needs far less: send smaller arguments")


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


class HttpGuard:
    """ASGI middleware applying `HttpPolicy` to every HTTP request before the MCP app sees it."""

    def __init__(self, app: ASGIApp, policy: HttpPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan events carry no request
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rejection = check_headers(self.policy, headers)
        if rejection is None:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.policy.max_body_bytes:
                rejection = _too_large(self.policy.max_body_bytes)
        if rejection is not None:
            await self._refuse(scope, rejection, send)
            return
        # Read the body up front (it is bounded), so a chunked upload cannot exceed the limit either.
        body = bytearray()
        pending: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                pending.append(message)
                break
            body.extend(message.get("body", b""))
            if len(body) > self.policy.max_body_bytes:
                await self._refuse(scope, _too_large(self.policy.max_body_bytes), send)
                return
            if not message.get("more_body", False):
                break
        pending.insert(0, {"type": "http.request", "body": bytes(body), "more_body": False})
        log.debug("%s %s from %s", scope.get("method"), scope.get("path"), _peer(scope))

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        await self.app(_normalized(scope), replay, send)

    @staticmethod
    async def _refuse(scope: Scope, rejection: Rejection, send: Send) -> None:
        log.warning("refused %s %s from %s: %d %s", scope.get("method"), scope.get("path"), _peer(scope),
                    rejection.status, rejection.message)
        await rejection.send(send)


# Given the policy in force, an ASGI app for every path outside /mcp; it must apply the policy itself (HttpGuard).
MountFactory = Callable[[HttpPolicy], ASGIApp]


class _MountBesideMcp:
    """`/mcp` (and lifespan events) to the guarded tools, every other path to the mounted app."""

    def __init__(self, mcp: ASGIApp, other: ASGIApp) -> None:
        self.mcp, self.other = mcp, other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path == MCP_PATH or path.startswith(MCP_PATH + "/"):
            await self.mcp(scope, receive, send)
        else:
            await self.other(scope, receive, send)


def build_http_app(engine: Engine | EngineSlot, *, host: str, port: int, token: str | None,
                   max_body_bytes: int = MAX_BODY_BYTES, mount: MountFactory | None = None) -> ASGIApp:
    """The MCP app at `/mcp` behind `HttpGuard`; `token` is enforced as given (see `decide_token` for the default).
    `mount` serves another app (the harness's dashboard) at the other paths, built from the same policy."""
    policy = HttpPolicy.for_bind(host, port, token, max_body_bytes)
    server = build_server(engine)
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, transport_security=policy.sdk_settings(),
                                     max_request_body_size=max_body_bytes, host=host)
    guarded = HttpGuard(app, policy)
    return guarded if mount is None else _MountBesideMcp(guarded, mount(policy))


def display_url(host: str, port: int) -> str:
    name = socket.gethostname() if is_wildcard(host) else host
    return f"http://{_authority(name, port)}{MCP_PATH}"


def announce_token(url: str, token: str, stream: TextIO | None = None) -> None:
    """The one place a generated token is ever written: a single line on stderr."""
    print(f"autoresearch MCP server at {url} requires a bearer token; clients must send the header "
          f"'Authorization: Bearer {token}'", file=stream or sys.stderr, flush=True)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers (uvicorn itself waits for them for ever).

    The timer runs from the moment the connection opens, and again from the end of each response, until h11 has
    parsed a whole request line and headers; when it fires first, the client gets a 408 and the connection closes.
    """

    header_timeout_s: float = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout_s,
                                                                               self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's headers arrived (or the connection is over)
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.warning("closed a connection from %s that sent no complete request headers within %.0f s",
                    "%s:%s" % self.client if self.client else "unknown", self.header_timeout_s)
        body = Rejection(408, f"request headers not complete within {self.header_timeout_s:g} s; send the whole "
                              "request at once").body()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()


def uvicorn_config(app: ASGIApp, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn as the server runs it: our logging (stderr and server.log), no access log, bounded shutdown, a
    deadline on request headers."""
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return uvicorn.Config(app, host=host.strip("[]"), port=port, log_config=None, access_log=False,
                          lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False,
                          http=HeaderTimeoutProtocol)


def serve_http(engine: Engine | EngineSlot, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
               mount: MountFactory | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status (2 when the address or token is unusable)."""
    try:
        decision = decide_token(host, token)
        app = build_http_app(engine, host=host, port=port, token=decision.token, mount=mount)
    except HttpSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = display_url(host, port)
    if decision.generated and decision.token:
        announce_token(url, decision.token)
    else:  # the console handler shows warnings only, and whoever started the server needs the address
        print(f"autoresearch MCP server at {url} "
              f"({'bearer token required' if decision.token else 'loopback only, no token'})",
              file=sys.stderr, flush=True)
    log.info("serving streamable HTTP at %s (%s)", url,
             "bearer token required" if decision.token else "loopback only, no token")
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port))
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind; its log line above gives the OS error
        print(f"error: could not listen on {_authority(host, port)}; choose another --port or --host",
              file=sys.stderr)
        return 1
    return 0
