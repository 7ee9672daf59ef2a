"""A ctl write is split into commands at newlines outside quotes only, as
Plan 9's tokenize quotes: '' inside quotes is a quote, a quoted newline is
part of its word.  So a stop string with a newline travels in N/ctl, and a
coordinator hands it to its node intact."""

from __future__ import annotations

import pytest

from styxfs import client
from styxfs.errors import StyxError
from styxfs.llama.settings import Sampling
from styxfs.tree import parse_commands, quote, split_lines

from .support import config_for, deploy, run_turn, session

RAW = frozenset({"system"})


@pytest.mark.parametrize("data, commands", [
    (b"stop '\n'\n", [["stop", "\n"]]),
    (b"stop 'one\ntwo' three\nmaxtokens 3", [["stop", "one\ntwo", "three"], ["maxtokens", "3"]]),
    (b"stop 'it''s\n'\n\nstop ''", [["stop", "it's\n"], ["stop", ""]]),
    (b"stop a'\n'b", [["stop", "a\nb"]]),  # quotes may begin inside a word, as tokenize's do
    (b"stop '\r\n'\r\nmode raw\r\n", [["stop", "\r\n"], ["mode", "raw"]]),
    (b"stop x\nstop y\n", [["stop", "x"], ["stop", "y"]]),
])
def test_a_newline_inside_quotes_is_part_of_the_word(data, commands):
    assert parse_commands(data, RAW) == commands


def test_a_raw_verbs_line_ends_at_its_newline_whatever_its_quotes():
    data = b"system Don't say 'no\nstop '\n'\nsystem\n"
    assert parse_commands(data, RAW) == [["system", "Don't say 'no"], ["stop", "\n"], ["system"]]
    assert split_lines("system it's\nx", RAW) == ["system it's", "x"]


def test_an_unterminated_quote_is_refused_and_swallows_no_line_silently():
    with pytest.raises(StyxError, match="unterminated quote"):
        parse_commands(b"stop 'abc\nmaxtokens 3\n")


@pytest.mark.parametrize("stop", ["\n", "\n\n", "a\nb", "it's\n", "'\n'", " \r\n\t"])
def test_what_a_coordinator_sends_carries_a_stop_with_newlines(stop):
    original = Sampling(stop=(stop, "plain"), temperature=0.5)
    copy = Sampling()
    for verb, *args in parse_commands(original.ctl_text().encode(), RAW):
        copy.set(verb, args)
    assert copy.stop == original.stop and copy.temperature == 0.5
    assert parse_commands(f"stop {quote(stop)}".encode()) == [["stop", stop]]


async def test_a_node_and_a_coordinator_take_a_stop_with_a_newline(nursery, start_fake_node):
    address, node = await start_fake_node(threads=1)
    mgr = await deploy(nursery, config_for([("node-0", None, address)]))
    for at in (address, mgr.address):
        async with client.connect(at) as c:
            number = await session(c, "maxtokens 4\nstop 'a\nb'\nstop '\n'", "stop zz")
            assert "stop 'a\nb'\nstop '\n'\nstop zz\n" in (await c.read_file(f"{number}/params")).decode()
            reply, status = await run_turn(c, number, "hello")
            assert status["state"] == "done" and len(reply) == 4
    # The node's session behind the coordinator's has the stop strings as they were written.
    assert [s.sampling.stop for s in node.tree.table.sessions.values()].count(("a\nb", "\n", "zz")) == 2
