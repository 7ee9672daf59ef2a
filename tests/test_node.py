"""The node's /n/llama tree through the styxfs client: on the tiny model
where a test looks at what llama.cpp makes (text, the KV cache, sampling,
loading), else on the fake model (tests/fakemodel.py)."""

from __future__ import annotations

import os
import time

import pytest
import trio
import trio.testing

from styxfs import client, wire
from styxfs.client import ServerError

from .fakemodel import StepGate
from .support import PROMPT, ask, greedy, new_session, prompt_tokens, status_fields, wait_until

def expected_completion(model: str, prompt: str, maxtokens: int) -> str:
    from llama_cpp import Llama

    llm = Llama(model, n_ctx=512, n_threads=2, verbose=False)
    out = llm.create_completion(prompt, max_tokens=maxtokens, temperature=0, repeat_penalty=1.0)
    return out["choices"][0]["text"]


async def test_greedy_reply_equals_llama_cpp_python(start_node, tiny_model):
    address, _ = await start_node()
    async with client.connect(address) as c:
        await greedy(c, maxtokens=32)
        got = (await ask(c, "data", PROMPT)).decode()
    want = await trio.to_thread.run_sync(expected_completion, tiny_model, PROMPT, 32)
    assert got == want and len(want) > 20


async def test_clone_open_becomes_session_ctl(start_fake_node):
    address, node = await start_fake_node()
    async with client.connect(address) as c:
        ctl, number = await new_session(c)
        assert number.isdigit()
        assert (await c.stat(f"{number}")).qid.is_dir
        await ctl.fid.write(b"temperature 0.25\nmaxtokens 7\n", 0)
        params = (await c.read_file(f"{number}/params")).decode()
        assert "temperature 0.25\n" in params and "maxtokens 7\n" in params
        names = {d.name for d in await c.listdir("")}
        assert {"ctl", "data", "reply", "clone", "new", "model", "metrics", number} <= names
        assert {d.name for d in await c.listdir(number)} == {"ctl", "params", "data", "reply", "status", "system",
                                                             "conversation", "grammar", "schema"}
        await ctl.close()


async def test_new_data_then_reply(start_fake_node):
    address, node = await start_fake_node()
    async with client.connect(address) as c:
        await greedy(c, maxtokens=16)
        # Walking new/ allocates nothing; opening does.
        fid = await c.walk("new/data")
        await fid.clunk()
        assert len(node.tree.table.sessions) == 0
        # echo prompt > new/data; cat reply
        await c.write_file("new/data", PROMPT)
        reply = await c.read_file("reply")
        assert len(reply) > 0
        [number] = [s for s in node.tree.table.sessions]
        assert await c.read_file(f"{number}/reply") == reply
        status = status_fields(await c.read_file(f"{number}/status"))
        assert status["state"] == "done" and status["tokens_out"] == "16"


async def test_root_data_is_private_per_open(start_fake_node):
    address, node = await start_fake_node()
    async with client.connect(address) as c:
        await greedy(c, maxtokens=12)
        a = await c.open("data", wire.ORDWR)
        b = await c.open("data", wire.ORDWR)
        await a.write("Once upon")
        await b.write("the king was")
        reply_b = await b.read_all()
        reply_a = await a.read_all()
        await a.close(), await b.close()
        assert reply_a != reply_b
        assert await ask(c, "data", "Once upon") == reply_a
        # root reply: the latest prompt submitted on this connection
        assert await c.read_file("reply") == reply_a


async def test_reply_streams_while_generating(start_fake_node):
    gate = StepGate()
    address, node = await start_fake_node(gate=gate)
    async with client.connect(address) as c:
        _, number = await new_session(c)
        await c.write_file(f"{number}/ctl", "maxtokens 50")
        async with await c.open(f"{number}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            gate.allow(3)  # the prompt and two tokens, then the model waits
            first = await f.read()
            status = status_fields(await c.read_file(f"{number}/status"))
            assert first and status["state"] == "generating", status
            gate.open()
            rest = await f.read_all()
        assert len(first) < len(first + rest)
        # Any number of readers of N/reply, each from the first byte.
        assert await c.read_file(f"{number}/reply") == first + rest


async def test_flushed_read_cancels_its_generation(start_fake_node):
    gate = StepGate()
    address, node = await start_fake_node(gate=gate)
    async with client.connect(address) as c:
        _, number = await new_session(c)
        await c.write_file(f"{number}/ctl", "maxtokens 1000")
        f = await c.open(f"{number}/data", wire.ORDWR)
        await f.write(PROMPT)
        read = await c.start(wire.Tread(0, f.fid.num, 0, 8192))  # submits the turn, waits for its text
        await trio.testing.wait_all_tasks_blocked()  # the read waits: the model is held at its gate
        await read.abandon()  # the client flushes the read it gives up on
        gate.open()
        await f.close()
        with trio.fail_after(2):
            await node.tree.table.sessions[int(number)].reply.wait()
        status = status_fields(await c.read_file(f"{number}/status"))
        assert status["state"] == "cancelled" and int(status["tokens_out"]) < 50, status
        # The session works again.
        await c.write_file(f"{number}/ctl", "maxtokens 5")
        assert await ask(c, f"{number}/data", " and then")
        assert status_fields(await c.read_file(f"{number}/status"))["state"] == "done"


async def test_cancel_in_ctl_stops_the_generation(start_fake_node):
    gate = StepGate()
    address, node = await start_fake_node(gate=gate)
    async with client.connect(address) as c:
        ctl, number = await new_session(c)
        await ctl.fid.write(b"maxtokens 1000", 0)
        async with await c.open(f"{number}/data", wire.ORDWR) as f:
            await f.write(PROMPT)
            gate.allow(3)
            assert await f.read()
            await ctl.fid.write(b"cancel", 0)
            gate.open()
            with trio.fail_after(2):
                await f.read_all()  # EOF soon after
        status = status_fields(await c.read_file(f"{number}/status"))
        assert status["state"] == "cancelled" and int(status["tokens_out"]) < 100


async def test_conversation_keeps_its_kv_cache(start_node):
    address, node = await start_node()
    async with client.connect(address) as c:
        await greedy(c, maxtokens=20)
        ctl, number = await new_session(c)
        first = await ask(c, f"{number}/data", PROMPT)
        turn1 = status_fields(await c.read_file(f"{number}/status"))
        second = await ask(c, f"{number}/data", " and the king")
        turn2 = status_fields(await c.read_file(f"{number}/status"))
        # The second turn evaluates only its own tokens (and the last reply token).
        assert int(turn2["tokens_in"]) < int(turn1["tokens_in"]) + 20
        assert int(turn2["tokens_in"]) <= len(" and the king") + 1
        # The same two turns on a fresh session give the same text: the cache is the conversation.
        _, other = await new_session(c)
        assert await ask(c, f"{other}/data", PROMPT) == first
        assert await ask(c, f"{other}/data", " and the king") == second
        # reset forgets: the next turn starts over (and equals a fresh first turn).
        await ctl.fid.write(b"reset", 0)
        assert await ask(c, f"{number}/data", PROMPT) == first
        assert prompt_tokens(status_fields(await c.read_file(f"{number}/status"))) == prompt_tokens(turn1)


async def test_sampling_settings(start_node):
    address, node = await start_node()
    async with client.connect(address) as c:
        await greedy(c, maxtokens=24)
        base = (await ask(c, "data", PROMPT)).decode()
        ctl, n = await new_session(c)

        async def reply(*settings):
            await ctl.fid.write(("reset\n" + "\n".join(settings)).encode(), 0)
            return (await ask(c, f"{n}/data", PROMPT)).decode()

        assert await reply() == base
        # maxtokens
        await reply("maxtokens 5")
        assert status_fields(await c.read_file(f"{n}/status"))["tokens_out"] == "5"
        # stop: the reply ends before the stop string; several may be set; bare stop clears
        word = base.split()[3]
        assert await reply("maxtokens 24", f"stop '{word}'") == base[: base.index(word)]
        assert await reply("stop zzz") == base[: base.index(word)]
        assert await reply("stop") == base
        # seed: same seed, same text; topk 1 is greedy whatever the temperature
        hot = ("temperature 1.5", "topk 100", "topp 1", "minp 0")
        a = await reply(*hot, "seed 42")
        assert a == await reply(*hot, "seed 42")
        assert a != await reply(*hot, "seed 43")
        assert await reply("temperature 1.5", "topk 1", "seed 7") == base
        # repeatpenalty changes greedy text on this model
        assert await reply("temperature 0", "repeatpenalty 1.5") != base
        params = (await c.read_file(f"{n}/params")).decode()
        for line in ("temperature 0.0", "repeatpenalty 1.5", "seed 7", "topk 1", "maxtokens 24"):
            assert line + "\n" in params


async def test_four_sessions_at_once_equal_their_solo_replies(start_node):
    address, node = await start_node()
    prompts = [PROMPT, "the king was", "water and people", "café über"]
    async with client.connect(address) as c:
        await greedy(c, maxtokens=40)
        solo = [await ask(c, "data", p) for p in prompts]
        together = [b""] * 4

        async def one(i):
            together[i] = await ask(c, "data", prompts[i])

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)
    assert together == solo


@pytest.mark.parametrize("command, error", [
    ("frobnicate", "invalid ctl request: frobnicate"),
    ("temperature abc", "invalid ctl request: temperature: 'abc' is not a number"),
    ("temperature nan", "not a finite number"),
    ("maxtokens -5", "out of range"),
    ("topk", "invalid ctl request: usage: topk VALUE"),
    ("temperature 'unterminated", "unterminated quote"),
])
async def test_bad_session_ctl(start_fake_node, command, error):
    address, node = await start_fake_node()
    async with client.connect(address) as c:
        ctl, n = await new_session(c)
        with pytest.raises(ServerError, match=error):
            await ctl.fid.write(command.encode(), 0)
        await ctl.fid.write(b"maxtokens 3", 0)  # and the session carries on
        assert await ask(c, f"{n}/data", PROMPT)


async def test_bad_input_gets_clear_errors(start_fake_node):
    address, node = await start_fake_node(max_sessions=3, ctx=256)
    async with client.connect(address, uname="alice") as c:
        with pytest.raises(ServerError, match=r"prompt too long: \d+ tokens > context 256"):
            await ask(c, "data", "the king " * 100)
        with pytest.raises(ServerError, match="invalid prompt: not UTF-8"):
            await ask(c, "data", b"\xff\xfe bad")
        with pytest.raises(ServerError, match="no such session"):
            await c.stat("999/ctl")
        files = [await c.open("clone", wire.ORDWR) for _ in range(3)]
        with pytest.raises(ServerError, match="too many sessions: all busy, the cap is 3"):
            await c.open("clone", wire.ORDWR)
        with pytest.raises(ServerError, match="too many sessions"):
            await c.open("new/data", wire.OWRITE)
        number = (await files[0].read()).decode().strip()
        async with client.connect(address, uname="bob") as bob:
            with pytest.raises(ServerError, match="permission denied"):
                await bob.read_file(f"{number}/params")
            assert number not in {d.name for d in await bob.listdir("")}
        await files[0].fid.write(b"close", 0)
        # a session closed: one more may be made
        (await c.open("clone", wire.ORDWR))
        with pytest.raises(ServerError, match="prompt too long: over 1048576 bytes"):
            await ask(c, f"{(await files[1].read()).decode().strip()}/data", "x" * (1 << 20 | 1))


async def test_idle_sessions_expire(start_fake_node, monkeypatch):
    address, node = await start_fake_node(session_timeout=0.3)
    table = node.tree.table
    async with client.connect(address) as c:
        ctl, n = await new_session(c)
        session = table.sessions[int(n)]
        overdue = trio.Event()  # the node has looked for expired sessions with this one past its timeout
        expired = table.expired

        def looking():
            if time.monotonic() - session.last_active > table.idle_timeout:
                overdue.set()
            return expired()

        monkeypatch.setattr(table, "expired", looking)
        await c.stat(n)  # alive while its ctl is open
        with trio.fail_after(5):
            await overdue.wait()
        await c.stat(n)
        await ctl.close()
        await wait_until(lambda: int(n) not in table.sessions, f"session {n} to expire")
        with pytest.raises(ServerError, match="no such session"):
            await c.stat(n)


async def test_load_and_unload(start_node, tiny_model, tmp_path):
    address, node = await start_node()
    models = os.path.dirname(tiny_model)
    corrupt = os.path.join(models, "corrupt.gguf")
    with open(corrupt, "wb") as f:
        f.write(b"GGUF" + os.urandom(200))
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(open(tiny_model, "rb").read())
    os.symlink(outside, os.path.join(models, "link.gguf"))
    async with client.connect(address) as c:
        assert "state loaded" in (await c.read_file("ctl")).decode()
        for command, error in [
            ("load missing.gguf", "no such model file: missing.gguf"),
            ("load corrupt.gguf", "invalid model corrupt.gguf: corrupt or unsupported"),
            ("load ../outside.gguf", "outside the models directory"),
            ("load /etc/passwd", "outside the models directory"),
            ("load link.gguf", "outside the models directory"),
            ("load tiny.gguf ctx", "usage: load PATH"),
            ("load tiny.gguf ctx many", "'many' is not an integer"),
            ("load tiny.gguf frob 3", "unknown option 'frob'"),
        ]:
            with pytest.raises(ServerError, match=error):
                await c.write_file("ctl", command)
            assert "state loaded" in (await c.read_file("ctl")).decode(), command
        await c.write_file("ctl", "unload")
        assert "state unloaded" in (await c.read_file("ctl")).decode()
        assert "state unloaded" in (await c.read_file("model")).decode()
        with pytest.raises(ServerError, match="model not loaded"):
            await ask(c, "data", PROMPT)
        await c.write_file("ctl", "load tiny.gguf ctx 256 batch 64")
        ctl = (await c.read_file("ctl")).decode()
        assert "state loaded" in ctl and "ctx 256" in ctl and "batch 64" in ctl
        assert "context 256" in (await c.read_file("model")).decode()
        assert await ask(c, "data", PROMPT)


async def test_metrics(start_fake_node):
    address, node = await start_fake_node()
    async with client.connect(address) as c:
        await greedy(c, maxtokens=8)
        await ask(c, "data", PROMPT)
        text = (await c.read_file("metrics")).decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert values["llamafs_model_loaded"] == 1
    assert values["llamafs_requests_total"] == 1
    assert values["llamafs_tokens_out_total"] == 8
    assert values["llamafs_tokens_in_total"] >= 5
    assert values["llamafs_queue_length"] == 0
    assert values['llamafs_time_to_first_token_seconds_bucket{le="+Inf"}'] == 1  # the one reply
    assert 0 < values["llamafs_time_to_first_token_seconds_sum"] < 30
    assert values["llamafs_reply_tokens_per_second_count"] == 1
    for name in ("llamafs_sessions", "llamafs_tokens_per_second"):
        assert f"# TYPE {name} gauge" in text


async def test_evicted_session_is_reevaluated_transparently(start_node):
    turns = [PROMPT, " and the king", " then water"]

    async def conversations(address):
        """Three sessions, interleaved turn by turn; their replies and the last turn's tokens_in.
        Each begins differently: none can start from another's cached prefix."""
        async with client.connect(address) as c:
            await greedy(c, maxtokens=12)
            numbers = [(await new_session(c))[1] for _ in range(3)]
            replies = {n: [] for n in numbers}
            for turn in turns:
                for k, n in enumerate(numbers):
                    replies[n].append(await ask(c, f"{n}/data", ("water ", "king ", "time ")[k] + turn
                                                if turn is turns[0] else turn))
            last = status_fields(await c.read_file(f"{numbers[0]}/status"))
            metrics = (await c.read_file("metrics")).decode()
        return list(replies.values()), int(last["tokens_in"]), metrics

    roomy, roomy_in, _ = await conversations((await start_node(slots=4))[0])
    tight, tight_in, metrics = await conversations((await start_node(slots=2))[0])
    assert tight == roomy  # eviction changes nothing a reader can see...
    assert tight_in > roomy_in  # ...but the evicted session's whole history was evaluated again
    assert "llamafs_evictions_total 0" not in metrics


async def test_sessions_past_the_slots_queue(start_fake_node):
    gate = StepGate()
    address, node = await start_fake_node(slots=1, gate=gate)
    async with client.connect(address) as c:
        _, a = await new_session(c)
        _, b = await new_session(c)
        await c.write_file(f"{a}/ctl", "maxtokens 30")
        await c.write_file(f"{b}/ctl", "maxtokens 3")
        await c.write_file(f"{a}/data", PROMPT)
        await c.write_file(f"{b}/data", PROMPT)
        await gate.held()  # a holds the one slot, in its prefill
        assert status_fields(await c.read_file(f"{b}/status"))["state"] == "queued"
        assert "llamafs_queue_length 1\n" in (await c.read_file("metrics")).decode()
        gate.open()
        assert len(await c.read_file(f"{b}/reply")) > 0  # it runs once a is done
        assert status_fields(await c.read_file(f"{a}/status"))["state"] == "done"


async def test_every_file_has_a_qid_path_of_its_own(start_fake_node):
    address, _ = await start_fake_node()
    async with client.connect(address) as c:
        _, n = await new_session(c)
        paths = ["", "ctl", "data", "reply", "clone", "new", "model", "metrics",
                 "tokenize", "tokenizespecial", "detokenize", "new/ctl", "new/data", "new/reply", "new/status", n,
                 *(f"{n}/{name}" for name in ("ctl", "params", "data", "reply", "status"))]
        qids = {path: (await c.stat(path)).qid.path for path in paths}
    assert len(set(qids.values())) == len(qids), qids
    assert max(qids.values()) < 1 << 31  # the upper half is a coordinator's, for nodes/


@pytest.mark.parametrize("name", ["²", "٣", "0001", "01"])
async def test_a_session_is_named_by_its_number_in_plain_digits_only(start_fake_node, name):
    address, _ = await start_fake_node()
    async with client.connect(address) as c:
        _, n = await new_session(c)
        assert n == "1"
        with pytest.raises(ServerError, match="^no such session$"):
            await c.stat(name)
        with pytest.raises(ServerError, match="^no such session$"):
            await c.read_file(f"{name}/status")


async def test_root_reply_waits_for_a_prompt_written_on_its_connection(start_fake_node):
    """As through 9pfuse: `echo prompt > new/data; cat reply`, where the clunk
    that submits the prompt reaches the node after the read of reply."""
    address, _ = await start_fake_node()
    async with client.connect(address) as c:
        await greedy(c, maxtokens=8)
        first = await ask(c, "data", "the king was")  # the connection's reply before
        data = await c.open("new/data", wire.OWRITE | wire.OTRUNC)
        await data.write(PROMPT)
        reply = await c.open("reply")
        read = await reply.fid.start_read(8192, 0)
        await data.close()  # the clunk comes after the read was sent
        got = (await read.result()).data
        reply.offset = len(got)
        got += await reply.read_all()
        assert got == await ask(c, "data", PROMPT) != first
        await reply.close()


async def test_a_loop_of_new_data_and_reply_runs_on_past_the_cap(start_fake_node):
    """As on Plan 9: `echo prompt > new/data; cat reply` over and over,
    never writing close, through one connection to a node with a cap of 8."""
    address, node = await start_fake_node(max_sessions=8)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=4)
        want = {i: await ask(c, "data", f"{PROMPT} {i}") for i in range(3)}
        for i in range(40):
            await c.write_file("new/data", f"{PROMPT} {i % 3}")
            assert await c.read_file("reply") == want[i % 3], i
        assert len(node.tree.table.sessions) == 8
        assert node.tree.table.reclaimed >= 32
        metrics = (await c.read_file("metrics")).decode()
        assert f"llamafs_sessions_reclaimed_total {node.tree.table.reclaimed}\n" in metrics


async def test_a_reclaimed_session_is_gone_and_the_root_reply_stays_whole(start_fake_node):
    address, node = await start_fake_node(max_sessions=2)
    async with client.connect(address) as a, client.connect(address) as b:
        await greedy(a, maxtokens=12)
        ctl, n = await new_session(a)
        await ctl.close()  # nothing of it held open
        await a.write_file(f"{n}/data", PROMPT)
        whole = await a.read_file(f"{n}/reply")
        for i in range(4):  # b's loop reclaims a's idle session
            await b.write_file("new/data", f"the king was {i}")
            await b.read_file("reply")
        with pytest.raises(ServerError, match="^no such session$"):
            await a.read_file(f"{n}/status")
        assert await a.read_file("reply") == whole  # a's root reply still refers to it, whole


async def test_busy_sessions_are_never_reclaimed(start_fake_node):
    gate = StepGate()
    address, node = await start_fake_node(max_sessions=3, gate=gate)
    async with client.connect(address) as c:
        await greedy(c, maxtokens=100_000)
        held, n = await new_session(c)  # a file of it open
        generating = await new_session(c)
        await generating[0].close()
        await c.write_file(f"{generating[1]}/data", PROMPT)  # generating, no file open
        reader = await c.open(f"{(await new_session(c))[1]}/status")  # only a status file open
        for _ in range(5):
            with pytest.raises(ServerError, match="too many sessions: all busy, the cap is 3"):
                await c.open("new/data", wire.OWRITE)
        assert node.tree.table.reclaimed == 0
        await c.write_file(f"{generating[1]}/ctl", "cancel")
        gate.open()
        with trio.fail_after(5):
            await node.tree.table.sessions[int(generating[1])].reply.wait()
        assert status_fields(await c.read_file(f"{generating[1]}/status"))["state"] == "cancelled"
        await c.write_file("new/data", PROMPT)  # now the cancelled one, idle, makes room
        assert node.tree.table.reclaimed == 1
        with pytest.raises(ServerError, match="^no such session$"):
            await c.stat(generating[1])
        assert await c.stat(n) and reader
        await held.close()
        await reader.close()
