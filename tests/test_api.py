"""The OpenAI-compatible HTTP API through the real `openai` package, against
a node and against a coordinator over two nodes: real llama.cpp on the tiny
chat model, real TCP on 127.0.0.1.  Each request is a session of the tree,
so what it answers is held to what the same turns answer through 9P."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import openai
import pytest
import trio

from styxfs import client, wire
from styxfs.llama.chat import Message, format_records
from styxfs.llama.models import NAMED
from styxfs.llama.status import parse_keyed
from styxfs.llama.tokens import parse_pieces
from styxfs.llama.web import http_token

from .support import SlowEngine, config_for, deploy, prompt_tokens, run_turn, session
from .test_chat import chat_model  # noqa: F401 (a fixture)
from .test_web import families, get

SYSTEM = "You are terse."
TURNS = ["What is the meaning of life?", "And then?", "Why so?"]
GREEDY = {"temperature": 0, "max_tokens": 12}


@dataclass
class Target:
    """What a test talks to: HTTP at base, 9P at address, and the in-process
    nodes that run the turns (one, or the two behind a coordinator)."""

    kind: str
    base: str
    address: str
    nodes: list
    token: str = "none"
    mgr: object = None
    ai: openai.OpenAI = field(init=False)

    def __post_init__(self):
        self.ai = self.openai()

    def openai(self, key: str | None = None, prefix: str = "/v1") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + prefix, api_key=key or self.token, max_retries=0, timeout=60)

    async def call(self, fn, *args, **kwargs):
        """A blocking call of the SDK, in a thread."""
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))

    async def chat(self, messages: list[dict], **options):
        return await self.call(self.ai.chat.completions.create, model="anything", messages=messages, **options)

    async def streamed(self, fn, **options) -> list:
        """Every chunk of a streamed reply."""
        return await self.call(lambda: list(fn(model="anything", stream=True, **options)))


@pytest.fixture
def serve(nursery, start_node, chat_model, tmp_path):  # noqa: F811
    """serve(kind, engine=None, secret=False) -> Target: a node with HTTP, or a
    coordinator (prefix-affinity, HTTP) over two nodes."""

    async def start(kind: str, engine=None, secret: bool = False) -> Target:
        options = {"model": chat_model, "threads": 1}
        token = "none"
        if secret:
            (tmp_path / "secret").write_text("an API secret\n")
            options["auth_secret_file"] = str(tmp_path / "secret")
            token = http_token(b"an API secret")
        if kind == "node":
            address, node = await start_node(engine=engine and engine(), http="tcp!127.0.0.1!0", **options)
            return Target(kind, f"http://127.0.0.1:{node.http_port}", address, [node], token)
        started = [await start_node(engine=engine and engine(), **options) for _ in range(2)]
        config = config_for([(f"node-{i}", None, address) for i, (address, _) in enumerate(started)],
                            "prefix-affinity", http="tcp!127.0.0.1!0")
        if secret:
            config["authSecretFile"] = options["auth_secret_file"]
        mgr = await deploy(nursery, config)
        return Target(kind, f"http://127.0.0.1:{mgr.http_port}", mgr.address, [n for _, n in started], token, mgr)

    return start


KINDS = pytest.mark.parametrize("kind", ["node", "coordinator"])


def post(url: str, body: bytes | str, headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body.encode() if isinstance(body, str) else body, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def apost(url: str, body, headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    return await trio.to_thread.run_sync(post, url, body if isinstance(body, (str, bytes)) else json.dumps(body),
                                         headers, method)


def text_of(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---- models, health ------------------------------------------------------------------------


@KINDS
async def test_models_and_health(serve, kind):
    t = await serve(kind)
    for prefix in ("/v1", ""):
        [model] = (await t.call(t.openai(prefix=prefix).models.list)).data
        assert model.id == "chat" and model.object == "model" and model.owned_by == "llamafs"
        assert model.context_length == 2048 and model.meta["n_ctx"] == 2048
    assert await apost(t.base + "/health", b"", method="GET") == (200, {"status": "ok"})


async def test_the_model_id_is_the_nodes_model_name_else_its_files_stem(nursery, start_node, tiny_model,
                                                                        monkeypatch):
    monkeypatch.setitem(NAMED, "little", lambda: Path(tiny_model))  # a name, as smollm2 is one
    address, node = await start_node(model="little", http="tcp!127.0.0.1!0")
    mgr = await deploy(nursery, config_for([("node-0", None, address)], http="tcp!127.0.0.1!0"))
    for port in (node.http_port, mgr.http_port):
        ai = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert [m.id for m in (await trio.to_thread.run_sync(ai.models.list)).data] == ["little"]
    async with client.connect(address) as c:
        assert parse_keyed((await c.read_file("model")).decode())["name"] == "little"
        await c.write_file("ctl", "load tiny.gguf")  # by its path: its name is the file's stem
        assert parse_keyed((await c.read_file("model")).decode())["name"] == "tiny"


async def test_health_is_503_in_the_error_shape_without_a_model(start_node):
    _, node = await start_node(no_model=True, http="tcp!127.0.0.1!0")
    code, body = await apost(f"http://127.0.0.1:{node.http_port}/health", b"", method="GET")
    assert code == 503 and body["error"]["type"] == "unavailable_error" and "unloaded" in body["error"]["message"]


# ---- chat ------------------------------------------------------------------------------------


@KINDS
async def test_a_greedy_chat_equals_the_same_chat_through_9p_turn_for_turn(serve, kind):
    t = await serve(kind)
    async with client.connect(t.address) as c:
        number = await session(c, "temperature 0", "repeatpenalty 1", "maxtokens 12", f"system {SYSTEM}")
        want = [await run_turn(c, number, turn) for turn in TURNS]
    messages = [{"role": "system", "content": SYSTEM}]
    for turn, (reply, status) in zip(TURNS, want):
        messages.append({"role": "user", "content": turn})
        got = await t.chat(messages, **GREEDY)
        [choice] = got.choices
        assert choice.message.content == reply.decode() and choice.message.role == "assistant"
        assert choice.finish_reason == "length" and got.object == "chat.completion" and got.model == "chat"
        assert got.usage.completion_tokens == 12 == int(status["tokens_out"])
        assert got.usage.prompt_tokens == prompt_tokens(status)
        assert got.usage.total_tokens == got.usage.prompt_tokens + 12
        messages.append({"role": "assistant", "content": choice.message.content})
        # Streamed, the same reply: the role first, then the text, the finish, the usage.
        chunks = await t.streamed(t.ai.chat.completions.create, messages=messages[:-1], **GREEDY)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert text_of(chunks) == reply.decode()
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
        assert len({c.id for c in chunks}) == 1


@KINDS
async def test_a_conversation_sent_again_costs_only_its_new_tokens(serve, kind):
    """Each request is a new session, yet its prompt comes from the KV cache
    as far as the previous request's did, and it evaluates what a 9P
    session's turn does (the tiny model's replies tokenize afresh otherwise
    than they were generated, so the reply itself is evaluated again, there as here)."""
    t = await serve(kind)
    turns = [f"{TURNS[i % 3]} Tell me more, turn {i}." for i in range(5)]
    async with client.connect(t.address) as c:
        number = await session(c, "temperature 0", "repeatpenalty 1", "maxtokens 12", f"system {SYSTEM}")
        over_9p = [(await run_turn(c, number, turn))[1] for turn in turns]
    messages = [{"role": "system", "content": SYSTEM}]
    before = 0
    for turn, status in zip(turns, over_9p):
        messages.append({"role": "user", "content": turn})
        got = await t.chat(messages, **GREEDY)
        messages.append({"role": "assistant", "content": got.choices[0].message.content})
        cached = got.usage.prompt_tokens_details.cached_tokens
        assert cached >= before and got.usage.prompt_tokens - cached == int(status["tokens_in"]), (got.usage, status)
        before = got.usage.prompt_tokens
    assert before > 400 and cached > 0.75 * before  # turn 5: most of its prompt came from the cache


@KINDS
async def test_content_as_parts_and_max_completion_tokens(serve, kind):
    t = await serve(kind)
    plain = await t.chat([{"role": "user", "content": TURNS[0]}], temperature=0, max_tokens=6)
    parts = await t.chat([{"role": "user", "content": [{"type": "text", "text": TURNS[0][:7]},
                                                       {"type": "text", "text": TURNS[0][7:]}]}],
                         temperature=0, max_completion_tokens=6)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.completion_tokens == 6 and parts.choices[0].finish_reason == "length"


@KINDS
async def test_an_assistant_message_last_is_continued(serve, kind):
    t = await serve(kind)
    messages = [{"role": "user", "content": TURNS[0]}]
    start = "The meaning"
    rest = await t.chat(messages + [{"role": "assistant", "content": start}], temperature=0, max_tokens=9)
    async with client.connect(t.address) as c:  # as a conversation given, then read on from
        number = await session(c, "temperature 0", "repeatpenalty 1", "maxtokens 9")
        await c.write_file(f"{number}/conversation", format_records([Message("user", TURNS[0]),
                                                                     Message("assistant", start)]))
        want, _ = await run_turn(c, number, "")
    assert rest.choices[0].message.content == want.decode() and rest.usage.completion_tokens == 9


@KINDS
async def test_stop_and_max_tokens(serve, kind):
    t = await serve(kind)
    messages = [{"role": "user", "content": TURNS[0]}]
    whole = (await t.chat(messages, **GREEDY)).choices[0].message.content
    stop = whole.split()[3]
    cut = await t.chat(messages, stop=[stop, "nonesuch"], **GREEDY)
    assert cut.choices[0].message.content == whole[: whole.find(stop)]
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 12
    assert (await t.chat(messages, stop=stop, **GREEDY)).choices[0].message.content == whole[: whole.find(stop)]
    short = await t.chat(messages, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert whole.startswith(short.choices[0].message.content)


@KINDS
async def test_a_stop_string_may_hold_a_newline(serve, kind):
    """The tiny model never writes a newline (its byte tokens are never
    chosen): a stop list holding one travels to the node intact and the
    other stop string in the list still cuts the reply."""
    t = await serve(kind)
    messages = [{"role": "user", "content": TURNS[1]}]
    whole = (await t.chat(messages, **GREEDY)).choices[0].message.content
    stop = whole.split()[2]
    for stops in (["\n", stop], [f"{stop}\n", "\n\n", stop]):
        cut = await t.chat(messages, stop=stops, **GREEDY)
        assert cut.choices[0].message.content == whole[: whole.find(stop)] and "\n" not in whole
        assert cut.choices[0].finish_reason == "stop"
    alone = await t.chat(messages, stop="\n", **GREEDY)
    assert alone.choices[0].message.content == whole and alone.choices[0].finish_reason == "length"


async def test_with_no_cap_a_reply_runs_to_the_end_of_the_context_and_is_length(start_node, chat_model):  # noqa: F811
    _, node = await start_node(model=chat_model, ctx=96, http="tcp!127.0.0.1!0")
    ai = openai.OpenAI(base_url=f"http://127.0.0.1:{node.http_port}/v1", api_key="none", max_retries=0)
    got = await trio.to_thread.run_sync(partial(ai.chat.completions.create, model="x", temperature=0,
                                                messages=[{"role": "user", "content": TURNS[0]}]))
    assert got.choices[0].finish_reason == "length" and got.usage.total_tokens >= 95, got.usage


@KINDS
async def test_a_seeded_sampled_reply_is_the_same_twice(serve, kind):
    t = await serve(kind)
    messages = [{"role": "user", "content": TURNS[0]}]
    replies = [(await t.chat(messages, seed=4242, max_tokens=16)).choices[0].message.content for _ in range(2)]
    assert replies[0] == replies[1] and replies[0]
    others = {(await t.chat(messages, seed=seed, max_tokens=16)).choices[0].message.content for seed in (1, 2, 3)}
    assert len(others | {replies[0]}) > 1  # sampled (temperature 0.8 by default), not greedy


# ---- completions -------------------------------------------------------------------------------


@KINDS
async def test_completions_equal_a_raw_session_through_9p(serve, kind):
    t = await serve(kind)
    async with client.connect(t.address) as c:
        number = await session(c, "mode raw", "temperature 0", "repeatpenalty 1", "maxtokens 10")
        reply, status = await run_turn(c, number, "Once upon a time")
    got = await t.call(t.ai.completions.create, model="x", prompt="Once upon a time", temperature=0, max_tokens=10)
    assert got.choices[0].text == reply.decode() and got.choices[0].finish_reason == "length"
    assert got.object == "text_completion" and got.usage.prompt_tokens == prompt_tokens(status)
    chunks = await t.streamed(t.ai.completions.create, prompt=["Once upon a time"], temperature=0, max_tokens=10)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.decode()
    assert chunks[-1].usage.completion_tokens == 10
    stop = reply.decode().split()[2]
    cut = await t.call(t.ai.completions.create, model="x", prompt="Once upon a time", temperature=0,
                       max_tokens=10, stop=stop)
    assert cut.choices[0].text == reply.decode()[: reply.decode().find(stop)]
    assert cut.choices[0].finish_reason == "stop"


# ---- tokens ----------------------------------------------------------------------------------


@KINDS
async def test_tokenize_and_detokenize_answer_as_the_trees_files(serve, kind):
    t = await serve(kind)
    text = "The king's café,\n日本 <|im_start|>"
    async with client.connect(t.address) as c:
        async with await c.open("tokenize", wire.ORDWR) as f:
            await f.write(text)
            want = parse_pieces(await f.read_all())
    ids = [token for token, _ in want]
    assert await apost(t.base + "/tokenize", {"content": text}) == (200, {"tokens": ids})
    assert await apost(t.base + "/tokenize", {"content": text, "add_special": True}) == (200, {"tokens": [1] + ids})
    code, body = await apost(t.base + "/tokenize", {"content": text, "with_pieces": True})
    pieces = [p["piece"] for p in body["tokens"]]
    assert code == 200 and [p["id"] for p in body["tokens"]] == ids and "<|im_start|>" in pieces
    assert any(isinstance(p, list) for p in pieces)  # part of a character: its bytes, as llama-server shows it
    assert b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in pieces) == b" " + text.encode()
    # The openai SDK has no tokenize, but its client posts to any path.
    got = await t.call(t.ai.post, "/detokenize", body={"tokens": ids}, cast_to=object)
    assert got == {"content": text}
    assert await apost(t.base + "/detokenize", {"tokens": []}) == (200, {"content": ""})


async def test_tokenize_without_a_model_is_503(start_node):
    _, node = await start_node(no_model=True, http="tcp!127.0.0.1!0")
    for path, body in (("/tokenize", {"content": "a"}), ("/detokenize", {"tokens": [1]})):
        code, answer = await apost(f"http://127.0.0.1:{node.http_port}{path}", body)
        assert code == 503 and "not loaded" in answer["error"]["message"], answer


# ---- auth, errors --------------------------------------------------------------------------------


@KINDS
async def test_without_the_token_401_and_with_it_the_api_answers(serve, kind):
    t = await serve(kind, secret=True)
    for key in ("none", "0" * 64):
        with pytest.raises(openai.AuthenticationError) as raised:
            await t.call(t.openai(key).models.list)
        assert raised.value.status_code == 401 and raised.value.body["type"] == "authentication_error"
        assert "llamafs http-token" in raised.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        await t.call(t.openai("none").chat.completions.create, model="x", messages=[{"role": "user", "content": "hi"}])
    code, body = await apost(t.base + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]},
                             {"Cookie": f"llamafs_token={t.token}"})
    assert code == 401 and body["error"]["code"] == 401  # the API takes the bearer token only
    assert (await t.chat([{"role": "user", "content": "hi"}], max_tokens=2)).usage.completion_tokens == 2
    assert (await apost(t.base + "/health", b"", method="GET"))[0] == 200  # public, as llama-server's


MALFORMED = [  # (path, body, words the message must hold)
    ("/v1/chat/completions", "{", "Invalid JSON"),
    ("/v1/chat/completions", "[]", "object"),
    ("/v1/chat/completions", {"messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                                           {"role": "assistant", "content": "b"}]}, "two assistant messages"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, "last message"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_p": 2}, "top_p"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_schema"}}, "json_schema"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "xml"}}, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "grammar": "root ::= x"},
     "bad grammar: "),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "json_schema": {"type": 5}},
     "bad schema: "),
    ("/v1/completions", {"prompt": "a", "grammar": 'root ::= "a"', "json_schema": {}}, "give one"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": "sometimes"}, "stream"),
    ("/v1/completions", {}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"prompt": "a", "echo": True}, "echo"),
    ("/completions", {"prompt": "a", "seed": "x"}, "seed"),
    ("/tokenize", {"content": 5}, "content"),
    ("/detokenize", {"tokens": ["a"]}, "tokens.0"),
    ("/tokenize", {"content": "a", "parse_special": False}, "parse_special"),
    ("/detokenize", {"tokens": [1, 1 << 20]}, "invalid token: 1048576 is outside the vocabulary"),
    ("/detokenize", {"tokens": [1 << 40]}, "invalid token: not a token id: 1099511627776"),
]


@KINDS
async def test_malformed_requests_are_400_in_openais_shape_and_it_serves_on(serve, kind):
    t = await serve(kind)
    for path, body, words in MALFORMED:
        code, answer = await apost(t.base + path, body)
        assert code == 400, (path, body, answer)
        assert set(answer) == {"error"} and answer["error"]["type"] == "invalid_request_error", answer
        assert answer["error"]["code"] == 400 and words in answer["error"]["message"], (body, answer)
    with pytest.raises(openai.BadRequestError) as raised:
        await t.chat([{"role": "user", "content": "hi"}], n=3)
    assert "n: " in raised.value.body["message"] and raised.value.body["param"] == "n"
    assert (await apost(t.base + "/v1/models", {}, method="PUT"))[0] == 405
    assert (await t.chat([{"role": "user", "content": "hi"}], max_tokens=2)).choices[0].message.content


# ---- a client that goes away, many at once, the figures ---------------------------------------


@KINDS
async def test_a_client_that_disconnects_mid_stream_cancels_its_turn(serve, kind):
    t = await serve(kind, engine=SlowEngine)
    closed = trio.Event()
    chunks = []

    def stream_then_close():
        stream = t.ai.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], stream=True)
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 4:
                trio.from_thread.run(engine_busy)
                break
        stream.close()  # the connection with it: the response was not read to its end
        trio.from_thread.run_sync(closed.set)

    async def engine_busy():
        assert sum(n.engine.generating() for n in t.nodes) == 1  # no cap: it would run to the context's end
        async with client.connect(t.address) as c:
            assert " http " in (await c.read_file("sessions")).decode()  # an HTTP turn is a session like any

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, stream_then_close)
        with trio.fail_after(30):
            await closed.wait()
        # The node stops within a token or so of the disconnect, and the session is gone.
        tree = t.mgr.tree if t.mgr else t.nodes[0].tree
        with trio.fail_after(1):
            while sum(n.engine.generating() for n in t.nodes) or tree.table.sessions:
                await trio.sleep(0.01)
    assert sum(n.engine.stats.reasons.get("cancelled", 0) for n in t.nodes) == 1
    assert not any(c.choices and c.choices[0].finish_reason for c in chunks)


async def test_32_streaming_requests_at_once_through_the_coordinator_all_complete(serve):
    t = await serve("coordinator")
    results = {}

    async def one(i: int):
        chunks = await t.streamed(t.ai.chat.completions.create, max_tokens=8,
                                  messages=[{"role": "user", "content": f"Tell me about {i} kings."}])
        results[i] = chunks

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(32):
                nursery.start_soon(one, i)
    assert len(results) == 32
    for chunks in results.values():
        assert text_of(chunks) and chunks[-1].usage.completion_tokens == 8
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    served = [n.engine.stats.requests for n in t.nodes]
    assert sum(served) == 32 and min(served) > 0, served  # balanced over both nodes


@KINDS
async def test_http_requests_are_counted_in_metrics(serve, kind):
    t = await serve(kind)
    await t.chat([{"role": "user", "content": "hi"}], max_tokens=2)
    await t.call(t.ai.models.list)
    await apost(t.base + "/v1/chat/completions", {"messages": []})
    code, _, body = await trio.to_thread.run_sync(get, t.base + "/metrics")
    found = families(body.decode())
    counted = {(s.labels["endpoint"], s.labels["code"]): s.value for s in found["llamafs_http_requests"]}
    assert counted == {("/v1/chat/completions", "200"): 1, ("/v1/chat/completions", "400"): 1,
                       ("/v1/models", "200"): 1}
    [latency] = [s for s in found["llamafs_http_request_seconds"]
                 if s.name.endswith("_count") and s.labels["endpoint"] == "/v1/chat/completions"]
    assert latency.value == 2

