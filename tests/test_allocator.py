"""The engine's sequence allocator (styxfs.llama.allocator), sans-I/O: its
decisions checked as plain data, and applied to a list of cells a sequence
(as the worker applies them to llama.cpp) to check that every turn finds
in its sequence exactly the tokens it is told it finds.  No model, no
thread: these run in milliseconds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from styxfs.llama.allocator import Allocator, Clear, Conversation, Copy, Placement, Trim, common_prefix
from styxfs.llama.settings import MIN_SHARED

PREFIX = list(range(1000, 1000 + 3 * MIN_SHARED))  # a system prompt, long enough to share (no letter)


def tokens(*parts) -> list[int]:
    """A history: lists of tokens as they are, strings as one token a letter."""
    out: list[int] = []
    for part in parts:
        out += [ord(c) for c in part] if isinstance(part, str) else part
    return out


class Worker:
    """The engine's side: applies the allocator's decisions to cells, one list
    of tokens per sequence, evaluates what a turn lacks and checks that the
    books agree with the cells."""

    def __init__(self, slots: int = 4, prefix_cache: int = 4096, share_prefixes: bool = False):
        self.alloc = Allocator(slots, prefix_cache, share_prefixes)
        self.cells: dict[int, list[int]] = {seq: [] for seq in range(slots)}

    def apply(self, ops) -> None:
        for op in ops:
            if isinstance(op, Clear):
                self.cells[op.seq] = []
            elif isinstance(op, Trim):
                del self.cells[op.seq][op.keep:]
            else:
                assert isinstance(op, Copy) and not self.cells[op.dst], op
                self.cells[op.dst] = self.cells[op.src][:op.count]

    def start(self, conv: Conversation, history: list[int], waiting=()) -> Placement | None:
        """Place a turn; if placed, its sequence holds what it was told, and
        the rest is left to evaluate()."""
        before = dict(self.alloc.owners)
        placed = self.alloc.place(conv, list(history), waiting)
        if placed is not None:
            self.apply(placed.ops)
            assert conv.busy and conv.history == history
            assert self.cells[conv.seq] == conv.cached == history[:placed.reused]
            assert placed.reused < len(history)  # the last token is evaluated, for its logits
            # Cells come from the turn's own group only (unless sharing is on).
            copies = [before[op.src] for op in placed.ops if isinstance(op, Copy)]
            taken = [before[conv.seq]] if placed.reused and not copies and conv.seq in before else []
            for other in copies + taken:
                assert other is conv or self.alloc.share_prefixes or other.group == conv.group
        self.check()
        return placed

    def leave(self, conv: Conversation) -> list:
        """conv's session is closed."""
        ops = self.alloc.leave(conv)
        self.apply(ops)
        self.check()
        return ops

    def evaluate(self, conv: Conversation, count: int | None = None) -> None:
        """Evaluate count more of the turn's tokens (all, by default)."""
        more = conv.history[len(conv.cached):][:count]
        self.cells[conv.seq] += more
        conv.cached += more

    def turn(self, conv: Conversation, history: list[int], waiting=()) -> Placement:
        """A whole turn: placed, evaluated, finished."""
        placed = self.start(conv, history, waiting)
        assert placed is not None
        self.evaluate(conv)
        self.alloc.finished(conv)
        return placed

    def check(self) -> None:
        """The books are the cells: every owner's cached tokens are its
        sequence's, one owner a sequence, the kept prefixes within bound."""
        owners = self.alloc.owners
        for seq, conv in owners.items():
            assert conv.seq == seq and self.cells[seq] == conv.cached
        assert sum(len(c.cached) for c in owners.values() if c.left) <= max(self.alloc.prefix_cache, 0)


# ---- one conversation ---------------------------------------------------------------------


def test_a_first_turn_takes_a_free_sequence_and_evaluates_everything():
    w = Worker(slots=2)
    a, b = Conversation(), Conversation()
    assert w.turn(a, tokens("hello")) == Placement((), 0, False)
    assert w.turn(b, tokens("world")) == Placement((), 0, False)
    assert (a.seq, b.seq) == (0, 1) and w.alloc.owners == {0: a, 1: b}


def test_a_conversation_keeps_its_cells_between_turns():
    w = Worker()
    a = Conversation()
    w.turn(a, tokens("hello"))
    assert w.turn(a, tokens("hello", " again")) == Placement((), len("hello"), False)


def test_the_last_token_is_evaluated_again_when_all_are_cached():
    w = Worker()
    a = Conversation()
    w.turn(a, tokens("hello"))
    assert w.turn(a, tokens("hello")) == Placement((Trim(0, 4),), 4, False)
    b = Conversation()  # a one-token turn: nothing is reused
    w.turn(b, tokens("x"))
    assert w.turn(b, tokens("x")) == Placement((Trim(1, 0),), 0, False)


def test_a_history_that_differs_trims_the_cells_to_what_is_common():
    w = Worker()
    a = Conversation()
    w.turn(a, tokens("abcdef"))
    assert w.turn(a, tokens("abcxyz")) == Placement((Trim(0, 3),), 3, False)


def test_a_busy_conversations_next_turn_waits():
    w = Worker()
    a = Conversation()
    assert w.start(a, tokens("first")) is not None
    assert w.start(a, tokens("first", "second")) is None
    w.evaluate(a)
    w.alloc.finished(a)
    assert not a.busy and w.start(a, tokens("first", "second")) == Placement((), 5, False)


def test_finished_marks_the_conversation_idle_and_used_now():
    alloc = Allocator(2, 100)
    a, b = Conversation(), Conversation()
    alloc.place(a, tokens("a"))
    alloc.place(b, tokens("b"))
    alloc.finished(b)
    alloc.finished(a)
    assert not a.busy and not b.busy and b.last_used < a.last_used


# ---- shared prefixes --------------------------------------------------------------------


def test_a_prefix_held_by_the_same_users_other_sequence_is_copied():
    w = Worker()
    a, b = Conversation("alice"), Conversation("alice")
    w.turn(a, tokens(PREFIX, "first"))
    used = a.last_used
    placed = w.turn(b, tokens(PREFIX, "second"))
    assert placed == Placement((Clear(1), Copy(0, 1, len(PREFIX))), len(PREFIX), False)
    assert a.last_used > used  # the source counts as used


def test_prefixes_are_shared_between_users_only_when_told():
    w = Worker()
    w.turn(Conversation("alice"), tokens(PREFIX, "x"))
    assert w.turn(Conversation("bob"), tokens(PREFIX, "y")).reused == 0
    shared = Worker(share_prefixes=True)
    shared.turn(Conversation("alice"), tokens(PREFIX, "x"))
    assert shared.turn(Conversation("bob"), tokens(PREFIX, "y")) == Placement(
        (Clear(1), Copy(0, 1, len(PREFIX))), len(PREFIX), False)


def test_a_common_beginning_shorter_than_min_shared_is_not_copied():
    for length, copied in ((MIN_SHARED - 1, False), (MIN_SHARED, True)):
        w = Worker()
        w.turn(Conversation(), tokens(PREFIX[:length], "x"))
        placed = w.turn(Conversation(), tokens(PREFIX[:length], "y"))
        assert placed.reused == (length if copied else 0), length
        assert any(isinstance(op, Copy) for op in placed.ops) == copied


def test_a_copy_must_give_min_shared_more_than_the_conversations_own_cells():
    for more, copied in ((MIN_SHARED - 1, False), (MIN_SHARED, True)):
        w = Worker()
        a, b = Conversation(), Conversation()
        w.turn(b, tokens(PREFIX[:4], "mine"))  # b holds 4 tokens of what it will say
        w.turn(a, tokens(PREFIX[:4 + more], "theirs"))
        placed = w.turn(b, tokens(PREFIX[:4 + more], "next"))
        if copied:
            assert placed == Placement((Clear(b.seq), Copy(a.seq, b.seq, 4 + more)), 4 + more, False)
        else:
            assert placed == Placement((Trim(b.seq, 4),), 4, False)


def test_the_copy_never_reaches_the_last_token():
    w = Worker()
    w.turn(Conversation(), tokens(PREFIX, "question"))
    placed = w.turn(Conversation(), tokens(PREFIX, "question"))  # the same prompt again
    n = len(PREFIX) + len("question")
    assert placed == Placement((Clear(1), Copy(0, 1, n - 1)), n - 1, False)


def test_the_longest_beginning_is_the_one_copied():
    w = Worker()
    w.turn(Conversation(), tokens(PREFIX, "a"))
    w.turn(Conversation(), tokens(PREFIX, "bbbbbbbbbbbb", "1"))
    placed = w.turn(Conversation(), tokens(PREFIX, "bbbbbbbbbbbb", "2"))
    assert placed.ops == (Clear(2), Copy(1, 2, len(PREFIX) + 12))


# ---- a shared beginning on its way --------------------------------------------------------


def test_a_turn_waits_while_its_group_evaluates_the_beginning_it_shares():
    w = Worker(slots=4)
    a, b = Conversation("alice"), Conversation("alice")
    w.start(a, tokens(PREFIX, "alpha?"))
    assert w.start(b, tokens(PREFIX, "beta?")) is None  # alice's first turn evaluates the prefix
    w.evaluate(a, len(PREFIX) - 1)
    assert w.start(b, tokens(PREFIX, "beta?")) is None  # not all of it yet
    w.evaluate(a, 1)
    assert w.start(b, tokens(PREFIX, "beta?")) == Placement((Clear(1), Copy(0, 1, len(PREFIX))), len(PREFIX), False)


def test_another_users_turn_does_not_wait_for_it():
    w = Worker(slots=4)
    w.start(Conversation("alice"), tokens(PREFIX, "x"))
    assert w.start(Conversation("bob"), tokens(PREFIX, "y")) == Placement((), 0, False)


def test_no_wait_for_a_beginning_shorter_than_min_shared_or_already_held():
    w = Worker(slots=4)
    w.start(Conversation(), tokens(PREFIX[:MIN_SHARED - 1], "x"))
    assert w.start(Conversation(), tokens(PREFIX[:MIN_SHARED - 1], "y")) is not None
    w = Worker(slots=4)
    a, b = Conversation(), Conversation()
    w.turn(b, tokens(PREFIX, "b"))  # b holds the prefix itself
    w.start(a, tokens(PREFIX, "a"))
    assert w.start(b, tokens(PREFIX, "b", "more")) == Placement((), len(PREFIX) + 1, False)


# ---- eviction and takeover --------------------------------------------------------------


def test_with_every_sequence_taken_the_least_recently_used_idle_one_is_evicted():
    w = Worker(slots=2)
    a, b, c = Conversation(), Conversation(), Conversation()
    w.turn(a, tokens("alpha"))
    w.turn(b, tokens("beta"))
    w.turn(a, tokens("alpha", "more"))  # now b is the least recently used
    assert w.turn(c, tokens("gamma")) == Placement((Clear(1),), 0, True)
    assert (a.seq, b.seq, c.seq) == (0, None, 1) and b.cached == []
    assert w.turn(b, tokens("beta", "again")) == Placement((Clear(0),), 0, True)  # re-evaluated from scratch


def test_busy_and_waiting_conversations_are_not_evicted():
    w = Worker(slots=2)
    a, b, c = Conversation(), Conversation(), Conversation()
    w.start(a, tokens("running"))
    w.turn(b, tokens("idle"))
    assert w.start(c, tokens("new"), waiting={b, c}) is None  # b has a turn queued too
    assert b.seq == 1 and c.seq is None
    assert w.start(c, tokens("new")) == Placement((Clear(1),), 0, True)
    assert w.start(b, tokens("idle", "next")) is None  # every sequence busy
    assert b.seq is None and w.alloc.owners == {0: a, 1: c}


def test_a_closed_sessions_kept_prefix_goes_before_a_live_idle_conversation():
    w = Worker(slots=2)
    gone, live = Conversation("alice"), Conversation("alice")
    w.turn(gone, tokens(PREFIX, "old"))
    w.turn(live, tokens("something"))
    assert w.leave(gone) == []  # kept, though more recently used than live
    assert w.turn(Conversation("carol"), tokens("else")) == Placement((Clear(0),), 0, False)
    assert live.seq == 1


def test_the_prefix_to_share_is_not_the_one_evicted_if_there_is_a_choice():
    w = Worker(slots=2)
    source, other, new = Conversation("alice"), Conversation("bob"), Conversation("alice")
    w.turn(source, tokens(PREFIX, "x"))  # the least recently used...
    w.turn(other, tokens("bob's"))
    placed = w.turn(new, tokens(PREFIX, "y"))  # ...but new shares its prefix: bob goes
    assert placed == Placement((Clear(1), Clear(1), Copy(0, 1, len(PREFIX))), len(PREFIX), True)
    assert other.seq is None and source.seq == 0


def test_a_same_users_sequence_beginning_as_the_turn_is_taken_over_not_cleared():
    w = Worker(slots=1)
    gone = Conversation("alice")
    w.turn(gone, tokens(PREFIX, "same question"))
    w.leave(gone)
    again = Conversation("alice")
    n = len(PREFIX) + len("same question")
    assert w.turn(again, tokens(PREFIX, "same question")) == Placement((Trim(0, n - 1),), n - 1, False)
    assert w.alloc.owners == {0: again}
    # A live idle one is taken over too (an eviction); another user's is cleared.
    other = Conversation("alice")
    assert w.turn(other, tokens(PREFIX, "another")) == Placement((Trim(0, len(PREFIX)),), len(PREFIX), True)
    assert again.seq is None and again.cached == []
    assert w.turn(Conversation("bob"), tokens(PREFIX, "another")) == Placement((Clear(0),), 0, True)


def test_a_sequence_beginning_alike_for_fewer_than_min_shared_tokens_is_cleared():
    w = Worker(slots=1)
    gone = Conversation("alice")
    w.turn(gone, tokens(PREFIX[:MIN_SHARED - 1], "old"))
    w.leave(gone)
    assert w.turn(Conversation("alice"), tokens(PREFIX[:MIN_SHARED - 1], "new")) == Placement((Clear(0),), 0, False)


# ---- closed sessions, clear ---------------------------------------------------------------


def test_a_closed_sessions_prefix_is_kept_within_the_bound_least_recent_first_out():
    w = Worker(slots=4, prefix_cache=2 * len(PREFIX) + 4)
    first, second, third = (Conversation("alice") for _ in range(3))
    for conv, q in ((first, "1"), (second, "2"), (third, "3")):
        w.turn(conv, tokens(PREFIX, q))
    assert w.leave(first) == [] and w.leave(second) == []
    assert first.seq is None and [c.left for c in w.alloc.owners.values()] == [True, True, False]
    assert w.leave(third) == [Clear(0)]  # three are over the bound: the first left goes
    assert sorted(w.alloc.owners) == [1, 2]


def test_nothing_is_kept_over_the_bound_without_cells_or_while_busy():
    w = Worker(slots=2, prefix_cache=10)
    big = Conversation()
    w.turn(big, tokens(PREFIX))
    assert w.leave(big) == [Clear(0)] and w.alloc.owners == {}
    w = Worker(slots=2, prefix_cache=0)
    conv = Conversation()
    w.turn(conv, tokens("x"))
    assert w.leave(conv) == [Clear(0)]
    w = Worker(slots=2)
    busy = Conversation()
    w.start(busy, tokens("running"))
    assert w.leave(busy) == [Clear(0)] and busy.seq is None
    assert w.leave(Conversation()) == []  # it never had a sequence


def test_release_and_release_all_clear_every_sequence_held():
    w = Worker(slots=3)
    a, b, gone = Conversation(), Conversation(), Conversation()
    for conv in (a, b, gone):
        w.turn(conv, tokens("abc"))
    ops = w.alloc.release(a)
    w.apply(ops)
    assert ops == [Clear(0)] and a.seq is None and a.cached == []
    assert w.alloc.release(a) == []
    w.leave(gone)
    assert w.alloc.release_all() == [Clear(1), Clear(2)]
    assert w.alloc.owners == {} and b.seq is None


# ---- any order of events ----------------------------------------------------------------


def test_common_prefix():
    assert common_prefix([], []) == 0
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix([5], [6]) == 0


EVENTS = st.lists(st.tuples(
    st.sampled_from(["start", "evaluate", "finish", "leave", "release_all"]),
    st.integers(0, 4),  # which conversation
    st.integers(0, 3),  # which beginning
    st.integers(1, 12),  # how many tokens after it
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(events=EVENTS, slots=st.integers(1, 3), prefix_cache=st.sampled_from([0, 40, 4096]),
       share=st.booleans())
def test_in_any_order_of_events_the_books_are_the_cells(events, slots, prefix_cache, share):
    w = Worker(slots, prefix_cache, share)
    convs = [Conversation("alice" if i % 2 else "bob") for i in range(5)]
    beginnings = [[], PREFIX[:MIN_SHARED], PREFIX, PREFIX[:MIN_SHARED - 1]]
    for event, i, b, n in events:
        conv = convs[i]
        if event == "start" and not conv.busy:
            history = beginnings[b] + [i] * n
            w.start(conv, history)
        elif event == "evaluate" and conv.busy:
            w.evaluate(conv, n)
        elif event == "finish" and conv.busy:
            w.evaluate(conv)
            w.alloc.finished(conv)
        elif event == "leave" and not conv.busy:
            w.leave(conv)
            assert conv.seq is None
        elif event == "release_all":  # the engine fails every turn, then loses every sequence
            for c in convs:
                if c.busy:
                    w.alloc.finished(c)
            w.apply(w.alloc.release_all())
            assert w.alloc.owners == {}
        w.check()
        assert len(w.alloc.owners) <= slots
