"""The OpenAI-compatible HTTP API, on the listener that serves /metrics and
the dashboard (web.py routes here): GET /v1/models and /health, POST
/v1/chat/completions and /v1/completions (streamed as server-sent events
or whole), /tokenize and /detokenize; each also without /v1, as
llama-server serves them.

The tree stays the truth: a request is a session of user `http`, made,
written, read and closed through the tree's files as a 9P client would
(api_session.TreeTurn), so it is balanced, failed over, counted and shown
as any other, on a node and a coordinator alike.  A client that goes away
cancels its turn as a Tflush does.  Fields a request omits take
llama-server's defaults (api_models), not the node's session defaults."""

from __future__ import annotations

import codecs
import json
import logging
import time
from collections import Counter
from pathlib import Path

import trio

from styxfs import client, wire
from styxfs.local import LocalClient
from styxfs.metrics import Histogram, exposition
from styxfs.trioutil import unwrapped

from . import api_models as models
from . import errors
from .api_session import TreeTurn
from .api_shapes import ChatShape, CompletionShape, Shape, error
from .chat import Message
from .reply import parse_status
from .status import parse_keyed
from .tokens import parse_pieces

log = logging.getLogger("styxfs.llama.api")

USER = "http"  # who the API's sessions belong to
MAX_BODY = 4 << 20  # bytes of a request: a prompt is at most 1 MB (settings.MAX_PROMPT_BYTES)
MODEL_MAX_AGE = 5.0  # seconds the model file's reading is reused
LATENCY_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# path without /v1 → (methods, endpoint label, handler)
ROUTES = {
    "/models": (("GET", "HEAD"), "/v1/models", "models"),
    "/health": (("GET", "HEAD"), "/health", "health"),
    "/chat/completions": (("POST",), "/v1/chat/completions", "chat"),
    "/completions": (("POST",), "/v1/completions", "completions"),
    "/tokenize": (("POST",), "/tokenize", "tokenize"),
    "/detokenize": (("POST",), "/detokenize", "detokenize"),
}
PUBLIC = ("/health",)  # as llama-server's: it tells nothing but up or down

# The tree's errors are worded for 9pfuse's keyword table (styxfs/errors.py):
# the same words say which HTTP status fits.  The first match wins.
STATUS_WORDS = (("timed out", 504), ("temporar", 503), ("busy", 503), ("not loaded", 503), ("no such", 503),
                ("unloaded", 503), ("permission", 403), ("too long", 400), ("invalid", 400))


def route(path: str) -> str | None:
    """The route a path names, with or without /v1; None: not the API's."""
    path = path.removeprefix("/v1") if path.startswith("/v1/") else path
    return path if path in ROUTES else None


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def tree_error(e: client.Error) -> ApiError:
    text = str(e)
    status = next((code for words, code in STATUS_WORDS if words in text), 500)
    return ApiError(status, text)


def parse(model: type, body: bytes):
    try:
        return model.model_validate_json(body or b"{}")
    except models.ValidationError as e:
        message, field = models.describe(e)
        raise ApiError(400, message, field) from None


class HttpFigures:
    """llamafs_http_requests_total{endpoint,code} and a latency histogram by endpoint."""

    def __init__(self):
        self.requests: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, Histogram] = {}

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests[(endpoint, str(code))] += 1
        self.latency.setdefault(endpoint, Histogram(LATENCY_BOUNDS)).observe(seconds)

    def text(self) -> str:
        samples = [("llamafs_http_requests_total", "counter", "API requests answered, by endpoint and status",
                    {"endpoint": e, "code": c}, n) for (e, c), n in sorted(self.requests.items())]
        for endpoint, histogram in sorted(self.latency.items()):
            samples += histogram.samples("llamafs_http_request_seconds",
                                         "API requests' time to their last byte", {"endpoint": endpoint})
        return exposition(samples) if samples else ""


class Response:
    """One response: JSON, or a stream of server-sent events."""

    def __init__(self, send):
        self.send = send
        self.status: int | None = None  # once started
        self.ended = False  # its last byte sent

    async def start(self, status: int, content_type: bytes, headers: list = ()) -> None:
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", content_type), (b"cache-control", b"no-store"), *headers]})

    async def json(self, status: int, body: dict, headers: list = ()) -> None:
        await self.start(status, b"application/json", headers)
        await self.end(json.dumps(body).encode())

    async def event(self, body: dict | None) -> None:
        if body is not None:
            data = json.dumps(body, ensure_ascii=False)
            await self.send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})

    async def done(self) -> None:
        await self.end(b"data: [DONE]\n\n")

    async def end(self, body: bytes) -> None:
        self.ended = True  # first: hypercorn may tell of the stream's end before send returns
        await self.send({"type": "http.response.body", "body": body})


async def read_body(receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(499, "the client is gone")
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise ApiError(413, f"request too long: over {MAX_BODY} bytes")
        if not message.get("more_body"):
            return bytes(body)


class Api:
    """The API's routes over a tree served in this process."""

    def __init__(self, tree):
        self.tree = tree
        self.figures = HttpFigures()
        self.model = (0.0, {})  # (when read, the model file's keys)

    def serves(self, path: str) -> bool:
        return route(path) is not None

    def files(self) -> LocalClient:
        """A client of the tree as user http, one per request (as one 9P connection)."""
        return LocalClient(self.tree, USER)

    async def __call__(self, scope, receive, send, authorized: bool) -> None:
        path = route(scope["path"])
        methods, endpoint, handler = ROUTES[path]
        started = time.monotonic()
        response = Response(send)
        try:
            if scope["method"] not in methods:
                raise ApiError(405, f"{scope['method']} {scope['path']}: use {' or '.join(methods)}")
            if not authorized and path not in PUBLIC:
                raise ApiError(401, "permission denied: send the token (llamafs http-token) as a bearer token")
            body = await read_body(receive) if scope["method"] == "POST" else b""
            if await self.watched(receive, getattr(self, handler)(body, response), response):
                response.status = 499  # as nginx counts a client that closed first
        except ApiError as e:
            await self.fail(response, e)
        except Exception as e:  # noqa: BLE001 - never a traceback to the client; the server serves on
            log.exception("%s %s", scope["method"], scope["path"])
            await self.fail(response, ApiError(500, f"internal error: {type(e).__name__}"))
        finally:
            self.figures.observe(endpoint, response.status or 499, time.monotonic() - started)

    async def fail(self, response: Response, e: ApiError) -> None:
        if e.status == 499 or response.ended:
            return  # nobody to tell, or nothing more may be said
        if response.status is None:
            headers = [(b"www-authenticate", b'Bearer realm="llamafs"')] if e.status == 401 else []
            await response.json(e.status, error(e.status, e.message, e.param, e.code), headers)
        else:  # mid-stream: an error event, as llama-server sends, then the end
            await response.event(error(e.status, e.message, e.param))
            await response.done()

    @staticmethod
    async def watched(receive, work, response: Response) -> bool:
        """Run work; a client that disconnects before the response's end
        cancels it (its turn is cancelled as a flushed read's is, and its
        session closed).  Whether it did."""
        gone = False
        async with unwrapped(), trio.open_nursery() as nursery:
            async def watch():
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not response.ended:  # else hypercorn says the stream is over: it is
                    gone = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await work
            nursery.cancel_scope.cancel()
        return gone

    # -- the model ---------------------------------------------------------------

    async def model_keys(self) -> dict[str, str]:
        """The model file's `key value` lines, read again after MODEL_MAX_AGE."""
        when, keys = self.model
        if time.monotonic() - when > MODEL_MAX_AGE:
            try:
                keys = parse_keyed((await self.files().read_file("model")).decode(errors="replace"))
            except client.Error as e:
                raise tree_error(e) from None
            self.model = (time.monotonic(), keys)
        return keys

    async def model_id(self) -> str:
        """The model's name (a node's --model name, else its file's stem)."""
        keys = await self.model_keys()
        return keys.get("name") or (Path(keys["path"]).stem if keys.get("path") else "none")

    async def model_names(self) -> list[str]:
        """The tree's models/, the default first; [] on a tree without it."""
        try:
            return [d.name for d in await self.files().listdir("models")]
        except client.Error:
            return []

    async def pick_model(self, asked: str | None) -> tuple[str, str]:
        """A request's `model`: where its session is made, and the id its answer names.
        With one model any name is it (as llama-server); with several an unknown one is 404."""
        names = await self.model_names()
        if len(names) <= 1:
            return "clone", await self.model_id()
        if asked is None or asked == names[0]:
            return "clone", names[0]
        if asked not in names:
            raise ApiError(404, errors.NO_SUCH_MODEL.format(model=asked, models=", ".join(names)), "model",
                           "model_not_found")
        return f"models/{asked}/clone", asked

    async def models(self, body: bytes, response: Response) -> None:
        names = await self.model_names()
        if len(names) > 1:
            await response.json(200, {"object": "list", "data": [await self.model_entry(n) for n in names]})
            return
        keys = await self.model_keys()
        data = []
        if keys.get("path"):
            facts = {"n_ctx": "context", "n_ctx_train": "traincontext", "n_params": "parameters", "size": "size",
                     "n_vocab": "vocabulary"}
            meta = {name: int(keys[key]) for name, key in facts.items() if keys.get(key, "").isdigit()}
            data.append({"id": await self.model_id(), "object": "model", "created": int(time.time()),
                         "owned_by": "llamafs", "context_length": meta.get("n_ctx"), "meta": meta})
        await response.json(200, {"object": "list", "data": data})

    async def model_entry(self, name: str) -> dict:
        """One of several models, as models/NAME/status says it is."""
        try:
            _, fields = parse_status((await self.files().read_file(f"models/{name}/status")).decode())
        except client.Error:
            fields = {}
        context = int(fields["context"]) if fields.get("context", "").isdigit() else None
        return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "llamafs",
                "context_length": context, "meta": {"n_ctx": context, "mode": fields.get("mode"),
                                                    "nodes": fields.get("nodes")}}

    async def health(self, body: bytes, response: Response) -> None:
        try:
            state = parse_keyed((await self.files().read_file("ctl")).decode(errors="replace")).get("state")
        except client.Error as e:
            raise tree_error(e) from None
        if state != "loaded":
            raise ApiError(503, f"unavailable: the model is {state or 'not loaded'} (no healthy node, on a "
                                "coordinator)")
        await response.json(200, {"status": "ok"})

    # -- turns -------------------------------------------------------------------

    async def chat(self, body: bytes, response: Response) -> None:
        request = parse(models.ChatRequest, body)
        messages = request.messages
        lead = next(i for i, m in enumerate(messages) if m.kind != "system")  # the validator left one
        system = "\n\n".join(m.text for m in messages[:lead]) or None
        rest = [Message(m.kind, m.text) for m in messages[lead:]]
        # The user's last message is the turn; an assistant's last is continued (an empty turn).
        history, prompt = (rest[:-1], rest[-1].text) if rest[-1].role == "user" else (rest, "")
        clone, model = await self.pick_model(request.model)
        await self.turn(request, ChatShape(model), {"mode": "chat", **request.settings()},
                        prompt, history, system, response, clone)

    async def completions(self, body: bytes, response: Response) -> None:
        request = parse(models.CompletionRequest, body)
        clone, model = await self.pick_model(request.model)
        await self.turn(request, CompletionShape(model), {"mode": "raw", **request.settings()},
                        request.text, [], None, response, clone)

    async def turn(self, request: models.Request, shape: Shape, settings: dict, prompt: str,
                   history: list[Message], system: str | None, response: Response, clone: str = "clone") -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a piece may end mid-character
        try:
            async with TreeTurn(self.files(), clone) as turn:
                await turn.start(settings, prompt.encode(), history, system, request.constraint())
                pieces = turn.pieces()
                first = await anext(pieces, b"")  # before the response starts: an error gets its status
                if not request.stream:
                    text = decoder.decode(first + b"".join([p async for p in pieces]), final=True)
                    await response.json(200, shape.whole(text, await turn.status()))
                    return
                await response.start(200, b"text/event-stream", [(b"x-accel-buffering", b"no")])
                await response.event(shape.opening())
                piece = first
                while piece:
                    if text := decoder.decode(piece):
                        await response.event(shape.chunk(text))
                    piece = await anext(pieces, b"")
                if text := decoder.decode(b"", final=True):
                    await response.event(shape.chunk(text))
                status = await turn.status()
                await response.event(shape.last(status))
                if request.include_usage:
                    await response.event(shape.usage_chunk(status))
                await response.done()
        except client.Error as e:
            raise tree_error(e) from None

    # -- tokens ------------------------------------------------------------------

    async def ask(self, name: str, text: bytes) -> bytes:
        """Write text to the root file name and read its answer on the same fid (tokens.py)."""
        try:
            async with await self.files().open(name, wire.ORDWR) as f:
                await f.write(text)
                return await f.read_all()
        except client.Error as e:
            raise tree_error(e) from None

    async def tokenize(self, body: bytes, response: Response) -> None:
        request = parse(models.TokenizeRequest, body)
        answer = await self.ask("tokenizespecial" if request.add_special else "tokenize", request.content.encode())
        tokens = parse_pieces(answer)
        if not request.with_pieces:
            await response.json(200, {"tokens": [token for token, _ in tokens]})
            return
        await response.json(200, {"tokens": [{"id": token, "piece": shown_piece(piece)} for token, piece in tokens]})

    async def detokenize(self, body: bytes, response: Response) -> None:
        request = parse(models.DetokenizeRequest, body)
        text = await self.ask("detokenize", " ".join(map(str, request.tokens)).encode())
        await response.json(200, {"content": text.decode(errors="replace")})


def shown_piece(piece: bytes) -> str | list[int]:
    """A piece as llama-server shows it: its text, or its bytes where they are not UTF-8."""
    try:
        return piece.decode()
    except UnicodeDecodeError:
        return list(piece)
