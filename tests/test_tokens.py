"""The root's tokenize, tokenizespecial and detokenize files (tokens.py):
over 9P on the tiny model's real llama.cpp vocabulary, on a node and
through a coordinator; their text read back (pieces, ids) without I/O."""

from __future__ import annotations

import pytest

from styxfs import client, wire
from styxfs.client import ServerError
from styxfs.llama.tokens import format_pieces, parse_ids, parse_pieces

from .support import config_for, deploy
from .test_chat import chat_model  # noqa: F401 (a fixture)

TEXT = "the king's café, 日本\nüber  naïve <|im_start|>"


async def ask(c: client.Client, name: str, text: bytes | str) -> bytes:
    """Write to the file and read the answer on the same fid, as `{echo text; cat} <>name` does."""
    async with await c.open(name, wire.ORDWR) as f:
        await f.write(text)
        return await f.read_all()


# ---- the files' text, without I/O -------------------------------------------------------------


def test_pieces_are_quoted_a_line_each_and_read_back_byte_for_byte():
    pieces = [b" the", b"'", b"\n", b"", b"\xe6", b"\x97\xa5", b"a b", b"''"]
    text = format_pieces(list(range(len(pieces))), pieces)
    assert text.startswith(b"0 ' the'\n1 ''''\n2 '\n'\n3 ''\n4 \xe6\n")
    assert parse_pieces(text) == list(enumerate(pieces))


def test_ids_are_numbers_separated_by_white_space():
    assert parse_ids(b" 1\t22\n333  \r\n") == [1, 22, 333]
    assert parse_ids(b"") == []
    for bad in (b"1 x2", b"1.5", b"\xd9\xa3", b"9" * 40):
        with pytest.raises(Exception, match="^invalid token: not a token id: "):
            parse_ids(bad)


# ---- a node ----------------------------------------------------------------------------------


async def test_tokens_round_trip_and_their_pieces_join_to_the_text(start_node, chat_model):  # noqa: F811
    address, node = await start_node(model=chat_model, threads=1)
    async with client.connect(address) as c:
        answer = await ask(c, "tokenize", TEXT)
        tokens = parse_pieces(answer)
        ids = [token for token, _ in tokens]
        assert len(ids) > 10 and b"'\n'\n" in answer  # the newline's piece, quoted on its line
        # The vocabulary (SentencePiece) puts a space before the first word; detokenize takes it off.
        assert b"".join(piece for _, piece in tokens) == b" " + TEXT.encode()
        assert tokens[-1][1] == b"<|im_start|>"  # a special token written as text is itself
        assert ids == node.engine.tokenize(TEXT.encode(), first=False)
        assert await ask(c, "detokenize", " ".join(map(str, ids))) == TEXT.encode()
        special = parse_pieces(await ask(c, "tokenizespecial", TEXT))
        assert special == [(1, b"<s>")] + tokens  # with the begin-of-text token the model adds
        assert await ask(c, "tokenize", "") == b""


async def test_each_open_is_a_channel_of_its_own(start_node):
    address, _ = await start_node(threads=1)
    async with client.connect(address) as c:
        one, two = await c.open("tokenize", wire.ORDWR), await c.open("tokenize", wire.ORDWR)
        await one.write("the")
        await two.write("king")
        await one.write(" and")
        assert b"".join(p for _, p in parse_pieces(await two.read_all())) == b" king"
        assert b"".join(p for _, p in parse_pieces(await one.read_all())) == b" the and"
        with pytest.raises(ServerError, match="^invalid write: already answered"):
            await one.write("more")
        await one.close()
        await two.close()


async def test_bad_input_is_refused_clearly_and_the_node_serves_on(start_node):
    address, _ = await start_node(threads=1)
    async with client.connect(address) as c:
        vocabulary = int(dict(line.split(" ", 1) for line in (await c.read_file("model")).decode().splitlines())
                         ["vocabulary"])
        cases = [("detokenize", "1 two 3", "invalid token: not a token id: two"),
                 ("detokenize", f"1 {vocabulary}",
                  f"invalid token: {vocabulary} is outside the vocabulary (0 to {vocabulary - 1})"),
                 ("detokenize", "-1", "invalid token: -1 is outside the vocabulary"),
                 ("tokenize", b"caf\xe9", "invalid text: not UTF-8 (byte 3)")]
        for name, text, message in cases:
            with pytest.raises(ServerError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
                await ask(c, name, text)
        assert await ask(c, "detokenize", f"{vocabulary - 2} {vocabulary - 1}") == b"? "  # the last id is in it


async def test_without_a_model_tokenize_says_so(start_node):
    address, _ = await start_node(no_model=True)
    async with client.connect(address) as c:
        for name in ("tokenize", "tokenizespecial", "detokenize"):
            with pytest.raises(ServerError, match="^model not loaded"):
                await ask(c, name, "1")


# ---- a coordinator -------------------------------------------------------------------------


async def test_a_coordinator_answers_as_its_node_does(nursery, start_node):
    started = [await start_node(threads=1) for _ in range(2)]
    mgr = await deploy(nursery, config_for([(f"node-{i}", None, a) for i, (a, _) in enumerate(started)]))
    async with client.connect(started[0][0]) as node, client.connect(mgr.address) as coordinator:
        for name, text in (("tokenize", TEXT), ("tokenizespecial", TEXT), ("detokenize", "1 300 301")):
            assert await ask(coordinator, name, text) == await ask(node, name, text)
        with pytest.raises(ServerError, match="^invalid token: not a token id: x"):  # the node's refusal
            await ask(coordinator, "detokenize", "x")
        mgr.pool.remove("node-0")
        mgr.pool.remove("node-1")
        with pytest.raises(ServerError, match="^no healthy node"):
            await ask(coordinator, "tokenize", "the")
