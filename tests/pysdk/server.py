"""OAuth authorization server + protected MCP server, built only from the official
MCP Python SDK, for mcpauth's end-to-end tests.

Prints its MCP URL (http://127.0.0.1:PORT/mcp) as the only stdout line once it
accepts connections. Logs go to stderr. Exits on SIGTERM, or when stdin (if it is
a pipe) reaches EOF, so a test that dies leaves no server behind.

Env:
  MCP_TEST_TOKEN_TTL          access-token lifetime in seconds (default 3600)
  MCP_TEST_NO_DEFAULT_SCOPES  "1": register clients that send no `scope` with no
                              scope at all, instead of the SDK's default_scopes
                              fill-in, so a later `scope=mcp:tools` authorization
                              fails with invalid_scope
"""

import asyncio
import json
import logging
import os
import secrets
import socket
import stat
import sys
import threading
import time
from urllib.parse import parse_qs

import uvicorn
from starlette.responses import JSONResponse

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

SCOPE = "mcp:tools"
TOKEN_TTL = int(os.environ.get("MCP_TEST_TOKEN_TTL", "3600"))
CODE_TTL = 300

log = logging.getLogger("pysdk-test-server")


class AutoApproveProvider:
    """In-memory OAuthAuthorizationServerProvider. The SDK's handlers do the
    protocol checks (client auth, redirect_uri, scope, PKCE); this only stores."""

    def __init__(self) -> None:
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        # Revoking either token of a pair revokes both (the SDK's protocol asks for it).
        self.pair: dict[str, str] = {}

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.clients[client_info.client_id] = client_info

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        # No login page: answer at once so a redirect-following "browser" completes the flow.
        code = secrets.token_urlsafe(32)
        scopes = params.scopes if params.scopes is not None else (client.scope or "").split()
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=scopes,
            expires_at=time.time() + CODE_TTL,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
            subject="test-user",
        )
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(self, client: OAuthClientInformationFull, code: str) -> AuthorizationCode | None:
        return self.codes.get(code)

    async def exchange_authorization_code(self, client: OAuthClientInformationFull, code: AuthorizationCode) -> OAuthToken:
        del self.codes[code.code]  # single use
        return self._issue(client.client_id, code.scopes, code.resource, code.subject)

    async def load_refresh_token(self, client: OAuthClientInformationFull, token: str) -> RefreshToken | None:
        return self.refresh.get(token)

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        self._revoke(refresh_token.token)  # rotate: the old refresh token is spent
        return self._issue(client.client_id, scopes, refresh_token.resource, refresh_token.subject)

    async def load_access_token(self, token: str) -> AccessToken | None:
        at = self.access.get(token)
        if at is not None and at.expires_at is not None and at.expires_at <= time.time():
            return None
        return at

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self._revoke(token.token)

    def _issue(self, client_id: str, scopes: list[str], resource: str | None, subject: str | None) -> OAuthToken:
        at, rt = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires_at = int(time.time()) + TOKEN_TTL
        self.access[at] = AccessToken(
            token=at, client_id=client_id, scopes=scopes, expires_at=expires_at, resource=resource, subject=subject
        )
        self.refresh[rt] = RefreshToken(token=rt, client_id=client_id, scopes=scopes, resource=resource, subject=subject)
        self.pair[at], self.pair[rt] = rt, at
        return OAuthToken(access_token=at, expires_in=TOKEN_TTL, scope=" ".join(scopes) or None, refresh_token=rt)

    def _revoke(self, token: str) -> None:
        for t in (token, self.pair.get(token)):
            if t is not None:
                self.access.pop(t, None)
                self.refresh.pop(t, None)
                self.pair.pop(t, None)


class StatsMiddleware:
    """Counts auth-endpoint requests and records the `scope` parameters clients
    send, so tests can assert on what the client under test did. Serves them at
    GET /test/stats. Records scope values only, never tokens or secrets."""

    def __init__(self, app) -> None:
        self.app = app
        self.stats = {
            "register": 0,
            "authorize": 0,
            "token": {"authorization_code": 0, "refresh_token": 0, "other": 0},
            "revoke": 0,
            "register_scopes": [],  # null where the registration carried no scope
            "authorize_scopes": [],
            "refresh_scopes": [],
        }

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/test/stats":
            return await JSONResponse(self.stats)(scope, receive, send)
        if path == "/authorize":
            self.stats["authorize"] += 1
            query = parse_qs(scope["query_string"].decode())
            self.stats["authorize_scopes"].append(query.get("scope", [None])[0])
        if path not in ("/register", "/token", "/revoke"):
            return await self.app(scope, receive, send)

        # Buffer the body to inspect it, then replay it to the SDK's handler.
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if path == "/register":
            self.stats["register"] += 1
            try:
                self.stats["register_scopes"].append(json.loads(body).get("scope"))
            except (ValueError, AttributeError):
                self.stats["register_scopes"].append(None)
        elif path == "/token":
            form = parse_qs(body.decode(errors="replace"))
            grant = form.get("grant_type", [""])[0]
            self.stats["token"][grant if grant in ("authorization_code", "refresh_token") else "other"] += 1
            if grant == "refresh_token":
                self.stats["refresh_scopes"].append(form.get("scope", [None])[0])
        else:
            self.stats["revoke"] += 1
        await self.app(scope, replay, send)


def watch_stdin(server: uvicorn.Server, loop: asyncio.AbstractEventLoop) -> None:
    # Only a pipe means "a parent holds us": /dev/null (CI without stdin) would
    # read EOF at once, and a terminal has Ctrl-C.
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return

    def run() -> None:
        while sys.stdin.buffer.read1(4096):
            pass
        log.info("stdin closed, shutting down")
        loop.call_soon_threadsafe(setattr, server, "should_exit", True)

    threading.Thread(target=run, daemon=True).start()


async def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    # Bind first so the URLs (issuer, resource) carry the real port and nobody can take it meanwhile.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    mcp_url = f"{base}/mcp"

    default_scopes = None if os.environ.get("MCP_TEST_NO_DEFAULT_SCOPES") == "1" else [SCOPE]
    server = MCPServer(
        name="pysdk-test-server",
        auth_server_provider=AutoApproveProvider(),
        auth=AuthSettings(
            issuer_url=base,
            resource_server_url=mcp_url,
            # Tokens are bound to the RFC 8707 `resource` sent at /authorize; a client
            # that omits it gets tokens /mcp refuses.
            validate_token_resource=True,
            required_scopes=[SCOPE],
            client_registration_options=ClientRegistrationOptions(
                enabled=True, valid_scopes=[SCOPE], default_scopes=default_scopes
            ),
            revocation_options=RevocationOptions(enabled=True),
        ),
    )

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return f"echo: {text}"

    app = StatsMiddleware(server.streamable_http_app(host="127.0.0.1"))
    config = uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=2, lifespan="on")
    http = uvicorn.Server(config)
    serving = asyncio.create_task(http.serve(sockets=[sock]))
    while not http.started:
        if serving.done():
            await serving  # startup failed: surface the error
            sys.exit(1)
        await asyncio.sleep(0.02)
    print(mcp_url, flush=True)
    watch_stdin(http, asyncio.get_running_loop())
    await serving


if __name__ == "__main__":
    asyncio.run(main())
