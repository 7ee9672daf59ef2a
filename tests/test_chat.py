"""Chat sessions on a tiny model that carries a ChatML template, against
llama-cpp-python's create_chat_completion; and conversations longer than
the context (why a reply ended, and dropping the oldest turns), on the fake
model (tests/fakemodel.py) where no model's text is checked."""

from __future__ import annotations

import functools

import pytest
import trio

from styxfs import client, wire
from styxfs.client import ServerError
from styxfs.errors import StyxError
from styxfs.llama.chat import Message, compiled, parse_records

from .fakemodel import StepGate
from .support import PROMPT, ask, config_for, deploy, greedy, new_session, run_turn, status_fields
from .tinymodel import write_tiny_model


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory):
    return str(write_tiny_model(tmp_path_factory.mktemp("chat") / "chat.gguf", chat=True))


@pytest.fixture(scope="session")
def talky_model(tmp_path_factory):
    """A chat model whose replies end by themselves now and then."""
    return str(write_tiny_model(tmp_path_factory.mktemp("talky") / "talky.gguf", chat=True, end_of_turn=4.0))


@functools.lru_cache(maxsize=None)
def _llama(model: str):
    from llama_cpp import Llama

    # The model's own template, rendered by Jinja (not a built-in format it may resemble);
    # flash attention as the node has it (llama.cpp's default, auto, turns it on here):
    # the other way gives other rounding, and on this random model a greedy reply can turn.
    return Llama(model, n_ctx=2048, n_threads=2, verbose=False, chat_format="chat_template.default",
                 flash_attn=True)


def chat_completion(model: str, messages: list[tuple[str, str]], maxtokens: int) -> str:
    out = _llama(model).create_chat_completion([{"role": r, "content": t} for r, t in messages], temperature=0,
                                               repeat_penalty=1.0, max_tokens=maxtokens)
    return out["choices"][0]["message"]["content"]


async def expected(model: str, messages: list[tuple[str, str]], maxtokens: int) -> bytes:
    return (await trio.to_thread.run_sync(chat_completion, model, messages, maxtokens)).encode()


async def test_a_chat_turn_by_turn_equals_create_chat_completion(start_node, chat_model):
    address, node = await start_node(model=chat_model)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=12)
        ctl, n = await new_session(c)
        assert "mode auto\n" in (await c.read_file(f"{n}/params")).decode()
        first, status1 = await run_turn(c, n, "What is the meaning of life?")
        assert first == await expected(chat_model, [("user", "What is the meaning of life?")], 12)
        assert status1["reason"] == "length"
        second, status2 = await run_turn(c, n, "And then?")
        history = [("user", "What is the meaning of life?"), ("assistant", first.decode()), ("user", "And then?")]
        assert second == await expected(chat_model, history, 12)
        # The second turn evaluates what its KV cache lacks, not the whole conversation.
        rendered = len(_llama(chat_model).tokenize(
            b"".join(f"<|im_start|>{r}\n{t}<|im_end|>\n".encode() for r, t in history)
            + b"<|im_start|>assistant\n", add_bos=False, special=True))
        assert int(status2["tokens_in"]) < rendered - int(status1["tokens_in"]) + 8
        records = parse_records(await c.read_file(f"{n}/conversation"))
        assert [(m.role, m.text) for m in records] == history + [("assistant", second.decode())]
        await ctl.close()


async def test_a_system_prompt_by_ctl_and_by_file(start_node, chat_model):
    address, node = await start_node(model=chat_model)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=10)
        ctl, n = await new_session(c)
        await ctl.fid.write(b"system You are 'terse';  answer in a word.", 0)
        assert "system You are 'terse';  answer in a word.\n" in (await c.read_file(f"{n}/params")).decode()
        got, _ = await run_turn(c, n, PROMPT)
        assert got == await expected(chat_model, [("system", "You are 'terse';  answer in a word."),
                                                  ("user", PROMPT)], 10)
        await c.write_file(f"{n}/ctl", "reset")
        await c.write_file(f"{n}/system", "Two lines\nof system.")
        assert await c.read_file(f"{n}/system") == b"Two lines\nof system."
        got, _ = await run_turn(c, n, PROMPT)
        assert got == await expected(chat_model, [("system", "Two lines\nof system."), ("user", PROMPT)], 10)
        await c.write_file(f"{n}/ctl", "system")  # bare: cleared
        assert await c.read_file(f"{n}/system") == b""
        await ctl.close()


async def test_root_data_and_raw_sessions(start_node, chat_model):
    address, node = await start_node(model=chat_model)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=10)
        assert await ask(c, "data", PROMPT) == await expected(chat_model, [("user", PROMPT)], 10)
        ctl, n = await new_session(c)
        await ctl.fid.write(b"mode raw", 0)
        raw, _ = await run_turn(c, n, PROMPT)
        want = await trio.to_thread.run_sync(lambda: _llama(chat_model).create_completion(
            PROMPT, max_tokens=10, temperature=0, repeat_penalty=1.0)["choices"][0]["text"])
        assert raw == want.encode()
        await ctl.close()


async def test_a_conversation_given_to_a_session_goes_on_from_there(start_node, chat_model):
    address, node = await start_node(model=chat_model)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=8)
        ctl, n = await new_session(c)
        given = (b"system 9\nBe brief.\nuser 5\nHello\nassistant 8\nHi there\nuser 9\nWhat now?\n")
        await c.write_file(f"{n}/conversation", given)
        assert await c.read_file(f"{n}/conversation") == given
        got, _ = await run_turn(c, n, "Tell me.")
        assert got == await expected(chat_model, [("system", "Be brief."), ("user", "Hello"), ("assistant", "Hi there"),
                                                  ("user", "What now?"), ("user", "Tell me.")], 8)
        for bad, why in [(b"user 99\nshort\n", "is not 99 bytes"), (b"wizard 2\nhi\n", "ROLE one of"),
                         (b"user 2\nhi", "is not 2 bytes and a newline")]:
            with pytest.raises(ServerError, match=f"invalid conversation: .*{why}"):
                await c.write_file(f"{n}/conversation", bad)
        await ctl.close()


async def test_a_reply_ends_at_the_end_of_turn_token(start_node, talky_model):
    address, node = await start_node(model=talky_model)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=200)
        replies = []
        for prompt in ("What is the meaning of life?", "Once upon a time", "the king was", "water"):
            ctl, n = await new_session(c)
            got, status = await run_turn(c, n, prompt)
            assert got == await expected(talky_model, [("user", prompt)], 200)
            assert b"<|im_end|>" not in got
            replies.append(status)
            await ctl.close()
        stopped = [s for s in replies if s["reason"] == "stop"]
        assert stopped and all(int(s["tokens_out"]) < 200 for s in stopped), replies


@pytest.mark.parametrize("template, error", [
    ("{% for m in messages %}{{ m.content }", "invalid chat template: syntax"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}",
     "invalid chat template: it made over"),
    ("{{ raise_exception('no system messages here') }}", "invalid chat template: it raised: no system messages"),
])
async def test_a_bad_template_is_a_clear_error_and_the_node_serves_on(start_fake_node, tmp_path, template, error):
    path = tmp_path / "template.jinja"
    path.write_text(template)
    address, node = await start_fake_node(chat_template_file=str(path))
    async with client.connect(address) as c:
        await greedy(c, maxtokens=4)
        with trio.fail_after(20):
            with pytest.raises(ServerError, match=error):
                await ask(c, "new/data", PROMPT)
        ctl, n = await new_session(c)
        await ctl.fid.write(b"mode raw", 0)
        got, status = await run_turn(c, n, PROMPT)
        assert got and status["state"] == "done"
        await ctl.close()


async def test_chat_on_a_model_without_a_template_is_refused(start_fake_node):
    address, node = await start_fake_node()
    async with client.connect(address) as c:
        ctl, n = await new_session(c)
        with pytest.raises(ServerError, match="^invalid mode chat: the model has no chat template$"):
            await ctl.fid.write(b"mode chat", 0)
        assert "mode auto\n" in (await c.read_file(f"{n}/params")).decode()
        got, status = await run_turn(c, n, PROMPT)  # auto: raw here
        assert got and status["state"] == "done"
        await ctl.close()


async def test_chat_through_a_coordinator(nursery, start_node, chat_model):
    address, node = await start_node(model=chat_model, threads=1)
    mgr = await deploy(nursery, config_for([("node-0", None, address)]))
    async with client.connect(mgr.address) as c:
        await greedy(c, maxtokens=10)
        ctl, n = await new_session(c)
        await ctl.fid.write(b"system Be kind.", 0)
        first, status = await run_turn(c, n, "Hello")
        assert first == await expected(chat_model, [("system", "Be kind."), ("user", "Hello")], 10)
        assert status["reason"] == "length" and status["node"] == "node-0"
        second, _ = await run_turn(c, n, "Again")
        assert second == await expected(chat_model, [("system", "Be kind."), ("user", "Hello"),
                                                     ("assistant", first.decode()), ("user", "Again")], 10)
        await ctl.close()


# ---- conversations longer than the context ------------------------------------------------------


async def test_why_replies_end_stop_length_context_cancelled(start_fake_node):
    gate = StepGate()
    gate.open()
    address, node = await start_fake_node(ctx=256, gate=gate)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=1000)
        ctl, n = await new_session(c)
        prompt = "the king was in the water and " * 6
        reasons = []
        for _ in range(4):
            _, status = await run_turn(c, n, prompt)
            reasons.append(status["reason"])
        assert reasons[0] == "context" and all(r in ("context", "length") for r in reasons), reasons
        await ctl.fid.write(b"maxtokens 5\nstop", 0)
        assert (await run_turn(c, n, PROMPT))[1]["reason"] == "length"
        whole, _ = await run_turn(c, (await new_session(c))[1], PROMPT)
        ctl2, m = await new_session(c)
        await ctl2.fid.write(f"maxtokens 40\nstop '{whole[6:9].decode()}'".encode(), 0)
        assert (await run_turn(c, m, PROMPT))[1]["reason"] == "stop"
        await ctl2.fid.write(b"maxtokens 100000\nstop", 0)
        gate.close()
        async with await c.open(f"{m}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            gate.allow(3)
            await f.read()
            await c.write_file(f"{m}/ctl", "cancel")
            gate.open()
            await f.read_all()
        assert status_fields(await c.read_file(f"{m}/status"))["reason"] == "cancelled"
        metrics = (await c.read_file("metrics")).decode()
        for reason in ("stop", "length", "context", "cancelled"):
            assert f'llamafs_replies_total{{reason="{reason}"}} 0' not in metrics, reason
        await ctl.close()
        await ctl2.close()


async def test_thirty_turns_in_a_small_context_drop_the_oldest(start_fake_node):
    address, node = await start_fake_node(ctx=256)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=32)
        ctl, n = await new_session(c)
        statuses = [(await run_turn(c, n, f"the king was {i} in the water"))[1] for i in range(30)]
        assert all(s["reason"] == "length" for s in statuses), [s["reason"] for s in statuses]
        assert int(statuses[-1]["tokens_dropped"]) > 0
        records = parse_records(await c.read_file(f"{n}/conversation"))
        assert len(records) == 60 and records[0].dropped and not records[-1].dropped
        await ctl.close()


async def test_a_chat_that_outgrows_the_context_keeps_its_system_prompt(start_node, chat_model):
    address, node = await start_node(model=chat_model, ctx=256)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=32)
        ctl, n = await new_session(c)
        await ctl.fid.write(b"system Be brief.", 0)
        for i in range(12):
            reply, status = await run_turn(c, n, f"Tell me about the king {i}.")
            assert status["reason"] == "length", status
        records = parse_records(await c.read_file(f"{n}/conversation"))
        assert records[0].role == "system" and any(r.dropped for r in records)
        # The last reply is what the model gives the conversation the node kept.
        kept = [(r.role, r.text) for r in records[:-1] if not r.dropped]
        _llama.cache_clear()  # a fresh evaluation, no prefix of an earlier call reused
        assert reply == await expected(chat_model, kept, 32)
        await ctl.close()


async def test_refuse_is_a_clear_error_and_the_node_serves_on(start_fake_node):
    address, node = await start_fake_node(ctx=256)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=100)
        ctl, n = await new_session(c)
        await ctl.fid.write(b"overflow refuse", 0)
        with pytest.raises(ServerError, match=r"conversation too long: \d+ tokens > context 256"):
            for i in range(10):
                await run_turn(c, n, f"the king was {i} in the water")
        assert (await ask(c, "data", PROMPT))  # the node serves on
        await ctl.close()


async def test_ask_with_a_system_prompt_says_when_a_reply_was_cut(start_node, chat_model):
    import subprocess

    from .support import LLAMAFS, ROOT

    address, node = await start_node(model=chat_model)
    run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    done = await trio.to_thread.run_sync(lambda: run(
        LLAMAFS + ["ask", "--addr", address, "--temperature", "0", "--maxtokens", "6", "--system", "Be brief.",
                   "Hello"]))
    assert done.returncode == 0, done.stderr
    assert "the reply was cut short (maxtokens: reason=length)" in done.stderr
    async with client.connect(address) as c:
        reference = await session_reply(c, [("system", "Be brief."), ("user", "Hello")])
    assert done.stdout.strip() == reference.strip()
    raw = await trio.to_thread.run_sync(lambda: run(
        LLAMAFS + ["ask", "--addr", address, "--temperature", "0", "--maxtokens", "6", "--raw", "Hello"]))
    assert raw.returncode == 0 and raw.stdout != done.stdout


async def session_reply(c, messages) -> str:
    from styxfs.llama.chat import format_records

    ctl, n = await new_session(c)
    await ctl.fid.write(b"temperature 0\nmaxtokens 6", 0)
    *before, (_, last) = messages
    await c.write_file(f"{n}/conversation", format_records([Message(r, t) for r, t in before]))
    reply, _ = await run_turn(c, n, last)
    await ctl.close()
    return reply.decode()


async def test_a_reply_cut_by_an_error_says_so(start_fake_node):
    gate = StepGate()
    address, node = await start_fake_node(slots=2, gate=gate)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=100_000)
        ctl, n = await new_session(c)
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            gate.allow(3)
            await f.read()  # it is generating
            await c.write_file("ctl", "unload")  # the model goes from under it (the unload opens the gate)
            with pytest.raises(ServerError, match="interrupted: the model was unloaded"):
                await f.read_all()
        status = status_fields(await c.read_file(f"{n}/status"))
        assert status["state"] == "error" and status["reason"] == "error", status
        await ctl.close()


# ---- shared prefixes ------------------------------------------------------------------------------

LONG_SYSTEM = "You are a careful assistant who answers every question about kings and water in one line. " * 3


@pytest.mark.parametrize("mode", ["raw", "chat"])
async def test_a_shared_prefix_gives_the_same_replies_as_none(start_node, tiny_model, chat_model, mode):
    """Two sessions of one user begin alike: the second evaluates only its own
    part, and its replies (two turns) equal those of another user's session,
    which shares nothing.  (Shared cells sit elsewhere in the one KV buffer
    than a sequence's own: attention then adds in another order, and on the
    chat model's raw text that turned a near-tie after ~20 tokens; a
    difference of rounding, as other sessions in the cache can make too.)"""
    address, node = await start_node(model=tiny_model if mode == "raw" else chat_model)
    prefix = LONG_SYSTEM if mode == "raw" else ""
    turns = [prefix + "What is the meaning of life?", " And the king?"]

    async def conversation(c, first: str) -> list[tuple[bytes, dict]]:
        ctl, n = await new_session(c)
        await ctl.fid.write(f"mode {mode}\ntemperature 0\nrepeatpenalty 1\nmaxtokens 12".encode(), 0)
        if mode == "chat":
            await c.write_file(f"{n}/system", LONG_SYSTEM)
        out = [await run_turn(c, n, t) for t in [first] + turns[1:]]
        await ctl.close()
        return out

    async with client.connect(address, uname="alice") as alice, client.connect(address, uname="bob") as bob:
        await conversation(alice, prefix + "Where is the water?")  # leaves its prefix in the cache
        shared = await conversation(alice, turns[0])
        alone = await conversation(bob, turns[0])
    assert [r for r, _ in shared] == [r for r, _ in alone]
    assert int(shared[0][1]["tokens_cached"]) > 100 and "tokens_cached" not in alone[0][1]
    assert int(shared[0][1]["tokens_in"]) < int(alone[0][1]["tokens_in"]) - 100
    metrics = (await ask_metrics(address)).decode()
    assert "llamafs_prompt_tokens_reused_total 0\n" not in metrics


async def ask_metrics(address: str) -> bytes:
    async with client.connect(address) as c:
        return await c.read_file("metrics")


def test_a_template_is_compiled_once_and_a_bad_one_refused_each_time():
    source = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert compiled(source, "<s>") is compiled(source, "<s>")
    assert compiled(source, "<s>") is not compiled(source, "<bos>")
    assert compiled(source).render([Message("user", "hi")]) == "<user>hi"
    for _ in range(2):  # a failure is not kept in place of the template
        with pytest.raises(StyxError, match="invalid chat template: syntax"):
            compiled("{% for m in messages %}")
