"""The session table's policy at the cap, without a model or a server."""

from __future__ import annotations

import pytest

from styxfs.errors import StyxError
from styxfs.llama.reply import Reply
from styxfs.llama.sessions import Session, SessionTable
from styxfs.llama.settings import Sampling


def table_of(*owners: str, cap: int = 3) -> SessionTable:
    table = SessionTable(cap, idle_timeout=600)
    for i, owner in enumerate(owners):
        session = table.add(Session(table.allocate(), owner, Sampling()))
        session.last_active = float(i)
    return table


def test_the_callers_own_idle_session_goes_first_least_recently_used():
    table = table_of("alice", "bob", "alice")
    assert table.full
    assert table.reclaimable("alice").number == 1
    assert table.reclaimable("bob").number == 2
    assert table.reclaimable("carol").number == 1  # none of carol's: anyone's, oldest first


def test_busy_sessions_are_never_chosen():
    table = table_of("alice", "alice", "bob")
    table.sessions[1].open_files = 1  # a file open
    table.sessions[2].reply = Reply()  # generating (queued)
    assert table.reclaimable("alice").number == 3  # alice has none idle: bob's
    table.sessions[3].open_files = 2
    assert table.reclaimable("alice") is None
    with pytest.raises(StyxError, match="too many sessions: all busy, the cap is 3"):
        table.allocate()
    table.sessions[2].reply.set_state("done")
    assert table.reclaimable("bob").number == 2
