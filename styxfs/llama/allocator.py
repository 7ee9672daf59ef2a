"""The engine's sequence allocator: which sequence of the shared context a
turn runs in, and which of the cells there it keeps, shares or clears.

Sans-I/O, as h11 is for HTTP: no llama.cpp, no thread, no clock.  The
allocator keeps the books (which conversation owns which sequence, and what
tokens its cells hold) and answers with decisions as plain data: the
operations on the KV cache (`Clear`, `Trim`, `Copy`) that the engine's
worker applies to the model in order, and how many of a turn's tokens are
already in its sequence.  The worker appends to `Conversation.cached` what
it evaluates.

The policy:

- a conversation keeps its sequence between turns; only what its cells lack
  is evaluated again;
- a turn whose beginning another sequence of its group holds, longer by
  MIN_SHARED tokens than its own cells do, copies those cells;
- a turn waits while a running turn of its group still evaluates a shared
  beginning longer than any sequence holds: it copies it once it is there;
- with no sequence free, an idle one is taken: a closed session's kept
  prefix first, then the least recently used.  If its cells begin as the
  turn does and may be shared, the turn takes them over (as llama-server
  reuses a slot's last prompt); else they are cleared;
- a closed session's sequence is kept for its prefix while the kept ones
  hold at most prefix_cache tokens.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .settings import MIN_SHARED


class Conversation:
    """What the engine keeps of a session: its tokens so far and, while it
    holds one, the sequence in the shared context caching them.  group says
    whose cached prefixes it may share (its user's: one user must not learn
    by timing what another's prompt began with)."""

    def __init__(self, group: str = ""):
        self.group = group
        self.history: list[int] = []  # every token of the conversation (worker thread)
        self.seq: int | None = None
        self.cached: list[int] = []  # the tokens in the sequence's KV cache
        self.last_used = 0  # the allocator's clock when it last served a turn or a prefix
        self.busy = False  # a turn of it is running
        self.left = False  # a closed session's sequence, kept for its prefix


# ---- decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Clear:
    """Forget every cell of sequence seq."""

    seq: int


@dataclass(frozen=True)
class Trim:
    """Forget sequence seq's cells from position keep on."""

    seq: int
    keep: int


@dataclass(frozen=True)
class Copy:
    """Sequence dst (empty) holds the first count cells of src too, shared."""

    src: int
    dst: int
    count: int


Op = Clear | Trim | Copy


@dataclass(frozen=True)
class Placement:
    """A turn's sequence is ready once ops are applied, in order: its first
    `reused` tokens are there, the rest are to be evaluated.  evicted: an
    idle live conversation lost its sequence to it."""

    ops: tuple[Op, ...]
    reused: int
    evicted: bool = False


# ---- the allocator --------------------------------------------------------------------------


class Allocator:
    def __init__(self, slots: int, prefix_cache: int, share_prefixes: bool = False):
        self.slots = slots
        self.prefix_cache = prefix_cache  # tokens of closed sessions' prefixes kept, at most
        self.share_prefixes = share_prefixes  # across users, not only within one
        self.owners: dict[int, Conversation] = {}  # sequence -> the conversation holding it
        self.clock = 0  # counts uses: least recently used is least by it

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def may_share(self, conv: Conversation, other: Conversation) -> bool:
        return other is not conv and (self.share_prefixes or other.group == conv.group)

    def place(self, conv: Conversation, history: list[int],
              waiting: Collection[Conversation] = ()) -> Placement | None:
        """Start a turn of conv that is to hold history; None: it waits (its
        last turn runs, its group is evaluating its beginning, or every
        sequence is busy or wanted by waiting conversations, which are not
        evicted).  Placed, conv is busy and its history is history."""
        if conv.busy:
            return None
        source, shared = self._prefix_source(conv, history)
        if self._prefix_coming(conv, history, shared if source is not None else 0):
            return None  # copy it once it is there, rather than evaluate it twice
        ops: list[Op] = []
        evicted = False
        if conv.seq is None:
            taken = self._take_sequence(conv, history, waiting, source, ops)
            if taken is None:
                return None
            evicted = taken
        conv.busy = True
        conv.history = history
        common = min(common_prefix(conv.cached, history), len(history) - 1)  # evaluate the last token at least
        shared = min(shared, len(history) - 1)
        if source is not None and source.seq is not None and shared >= common + MIN_SHARED:
            # Another sequence of the group holds a longer beginning: share its cells.
            ops += [Clear(conv.seq), Copy(source.seq, conv.seq, shared)]
            conv.cached, common = source.cached[:shared], shared
            source.last_used = self._tick()
        elif common < len(conv.cached):
            ops.append(Trim(conv.seq, common))
            conv.cached = conv.cached[:common]
        return Placement(tuple(ops), common, evicted)

    def finished(self, conv: Conversation) -> None:
        """conv's turn is over (done, cancelled or failed)."""
        conv.busy = False
        conv.last_used = self._tick()

    def leave(self, conv: Conversation) -> list[Op]:
        """conv's session is closed: its sequence stays, for another of its
        group to start from, while the kept ones hold at most prefix_cache
        tokens (the least recently used go first)."""
        if conv.seq is None or not conv.cached or self.prefix_cache <= 0 or conv.busy:
            return self.release(conv)
        kept = Conversation(conv.group)
        kept.seq, kept.cached, kept.left, kept.last_used = conv.seq, conv.cached, True, self._tick()
        self.owners[conv.seq] = kept
        conv.seq, conv.cached = None, []
        ops: list[Op] = []
        total = 0
        for c in sorted((c for c in self.owners.values() if c.left), key=lambda c: c.last_used, reverse=True):
            total += len(c.cached)
            if total > self.prefix_cache:
                ops += self.release(c)
        return ops

    def release(self, conv: Conversation) -> list[Op]:
        """conv holds no sequence any more."""
        ops: list[Op] = []
        if conv.seq is not None:
            ops.append(Clear(conv.seq))
            self.owners.pop(conv.seq, None)
        conv.seq, conv.cached = None, []
        return ops

    def release_all(self) -> list[Op]:
        """Every sequence is lost (the model failed or goes)."""
        ops: list[Op] = []
        for conv in list(self.owners.values()):
            ops += self.release(conv)
        return ops

    def _prefix_source(self, conv: Conversation, history: list[int]) -> tuple[Conversation | None, int]:
        """The sequence of the group holding the longest beginning of history,
        if longer by MIN_SHARED than what conv's own holds; and that length."""
        best, source = common_prefix(conv.cached, history) + MIN_SHARED - 1, None
        for other in self.owners.values():
            if self.may_share(conv, other):
                n = common_prefix(other.cached, history)
                if n > best:
                    best, source = n, other
        return source, best

    def _prefix_coming(self, conv: Conversation, history: list[int], held: int) -> bool:
        """Whether a running turn of the group is still evaluating a beginning
        of history (of MIN_SHARED tokens at least) longer than any sequence
        holds: turns that arrive together with a new shared prefix evaluate it
        once.  The wait is short: that turn's prefill is under way."""
        held = max(held, common_prefix(conv.cached, history))
        for other in self.owners.values():
            if other.busy and self.may_share(conv, other):
                coming = common_prefix(other.history, history)
                if coming >= MIN_SHARED and held < coming and len(other.cached) < coming:
                    return True
        return False

    def _take_sequence(self, conv: Conversation, history: list[int], waiting: Collection[Conversation],
                       keep: Conversation | None, ops: list[Op]) -> bool | None:
        """Give conv a free sequence, or the one of a closed session's kept
        prefix, or the least recently used idle one's (not keep's, if there
        is a choice).  A taken sequence whose cells begin as history does,
        and may be shared, is taken over with them, not cleared.  Returns
        whether a live conversation was evicted; None: every sequence is
        busy or wanted by a waiting conversation."""
        free = [seq for seq in range(self.slots) if seq not in self.owners]
        evicted = False
        if not free:
            idle = [c for c in self.owners.values() if not c.busy and c not in waiting]
            idle = [c for c in idle if c is not keep] or idle  # keep the prefix to share, if there is a choice
            if not idle:
                return None
            victim = min(idle, key=lambda c: (not c.left, c.last_used))  # kept prefixes go first
            evicted = not victim.left
            if self.may_share(conv, victim) and common_prefix(victim.cached, history) >= MIN_SHARED:
                conv.seq, conv.cached = victim.seq, victim.cached  # trimmed to the common part by place
                victim.seq, victim.cached = None, []
                self.owners[conv.seq] = conv
                return evicted
            ops += self.release(victim)
            free = [seq for seq in range(self.slots) if seq not in self.owners]
        conv.seq = free[0]
        self.owners[conv.seq] = conv
        return evicted


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens a and b begin with alike."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
