"""HTTP beside 9P, for the web's tools: `/metrics` for Prometheus,
`/api/status` (JSON) and `/` (the dashboard).  A bare ASGI app served by
hypercorn on trio; it reads the tree it shows as a 9P client would, as
the tree's owner, through the same files (styxfs.local.LocalClient: in this
process, without the wire, so that a busy node pays no round trips for
it), so HTTP shows exactly what the files say.  The OpenAI-compatible API
(api.py) answers its own paths, through sessions of the tree.

With a secret, every request but the page's own files (and /health) must
prove it without sending it: `Authorization: Bearer TOKEN` or the cookie
`llamafs_token`, TOKEN being `http_token(secret)`; the API takes only the
bearer token (a cookie would let any page a browser shows spend turns)."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
from importlib import resources
from urllib.parse import unquote

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from styxfs import client, dial
from styxfs.local import LocalClient

from .api import Api
from .settings import HTTP_PORT
from .status import Watcher

STATIC = {"index.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8", "chart.js": "text/javascript; charset=utf-8"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def http_token(secret: bytes) -> str:
    """The bearer token HTTP asks for: the secret's HMAC-SHA256 over "http",
    in hex.  It proves the secret without being it."""
    return hmac.new(secret, b"http", hashlib.sha256).hexdigest()


def static_file(name: str) -> bytes:
    return (resources.files("styxfs.llama") / "dashboard" / name).read_bytes()


class App:
    """The ASGI app.  `watcher` reads the tree; `token` is None without a secret."""

    def __init__(self, watcher: Watcher, token: str | None, show_sessions: bool = True, api: Api | None = None):
        self.watcher = watcher
        self.token = token
        self.show_sessions = show_sessions
        self.api = api

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if self.api is not None and self.api.serves(scope["path"]):
            await self.api(scope, receive, send, self.authorized(scope, cookies=False))
            return
        status, content_type, body = await self.respond(scope)
        headers = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="llamafs"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def respond(self, scope) -> tuple[int, str, bytes]:
        if scope["method"] not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        path = unquote(scope["path"])
        if path == "/":
            path = "/index.html"
        if path.lstrip("/") in STATIC:  # the page itself holds no figures: it asks for the token
            name = path.lstrip("/")
            return 200, STATIC[name], static_file(name)
        if path not in ("/metrics", "/api/status"):
            return 404, "text/plain", b"no such page: try /, /metrics or /api/status\n"
        if not self.authorized(scope):
            return 401, "text/plain", b"permission denied: send the token (llamafs http-token) as a bearer token\n"
        try:
            if path == "/metrics":
                with trio.fail_after(self.watcher.timeout):
                    text = await self.watcher.client.read_file("metrics")
                return 200, METRICS_TYPE, text + (self.api.figures.text().encode() if self.api else b"")
            status = dict(await self.watcher.status(max_age=0.5))
        except (client.Error, trio.TooSlowError) as e:
            return 503, "text/plain", f"cannot read the tree: {e}\n".encode()
        if not self.show_sessions:
            status["sessions"] = None
        return 200, "application/json", json.dumps(status).encode()

    def authorized(self, scope, cookies: bool = True) -> bool:
        if self.token is None:
            return True
        given = ""
        for key, value in scope["headers"]:
            if key == b"authorization" and value.lower().startswith(b"bearer "):
                given = value[7:].decode("latin-1").strip()
            elif key == b"cookie" and cookies and not given:
                for part in value.decode("latin-1").split(";"):
                    name, _, cookie = part.strip().partition("=")
                    if name == "llamafs_token":
                        given = cookie
        return hmac.compare_digest(given.encode(), self.token.encode())


def hypercorn_config(address: dial.Address) -> Config:
    config = Config()
    host = address.host if address.host not in ("*", "") else "0.0.0.0"
    config.bind = [f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.errorlog.setLevel(logging.WARNING)
    return config


async def serve_http(address: dial.Address | str, server, *, secret: bytes | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve HTTP at address (a dial string, tcp only) for the 9P server in
    this process, until cancelled; `started` gives the port."""
    if isinstance(address, str):
        address = dial.parse(address, default_port=HTTP_PORT)
    if address.network != "tcp":
        raise ValueError(f"HTTP listens on tcp only, not {address.network}")
    tree = server.tree
    owner = tree.owner if getattr(tree, "owner", "*") != "*" else getpass.getuser()
    app = App(Watcher(LocalClient(tree, owner)), http_token(secret) if secret else None,
              show_sessions=secret is not None or dial.is_loopback(address), api=Api(tree))
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, app, hypercorn_config(address))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
