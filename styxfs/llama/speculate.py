"""Speculative decoding without a draft model: drafts from n-grams of a
sequence's own tokens (prompt lookup).

A reply often repeats what its conversation holds: a quoted passage, code
being edited, fields of given data.  When the last few tokens occurred
before, the tokens that followed them then are a likely continuation.  The
engine decodes such a draft in the same step as the token it sampled,
samples each drafted position in turn and keeps the drafted tokens while
they equal what was sampled.  Every token of the reply is still sampled
from the model, from the same tokens before it, so a greedy reply is the
greedy one and a sampled reply has the distribution it had (a draft token
d is kept with probability p(d); when not, the token is drawn from p
without d: the standard acceptance rule for a draft that is one token).

Drafting costs a step more tokens, and on a CPU a few more tokens cost
nearly as much again each (SmolLM2 135M, 2 threads: a step of 4 tokens
takes 2.5-2.9 times one of 1, of 33 tokens 15 times), so a draft pays only
where it is mostly kept, and most where it is long and kept.
Under `speculate auto` a turn drafts only what follows a long n-gram match
(AUTO_MATCH tokens), and only as far as pays: the j-th drafted token is
kept with probability p^j, and the draft's length is the one that makes
the step's expected tokens per second highest, a step's seconds by its
number of tokens as this node measured them (StepCosts).  p is the lower
of the turn's recent rate and the node's rate after matches as long as
this one (KeptRates): the longer the tokens before agree, the likelier
what followed them follows again; a reply caught in a loop drafts the
loop on, far ahead.  An n-gram that was followed by different tokens at
different places ("mixed") is trusted less, with rates of its own: where
the reply went one way once and another way since, either may come.  A
full batch hence drafts little, and a turn whose drafts keep failing
stops drafting (its rate recovers slowly towards PRIOR, so that it tries
again later).  `speculate N` drafts up to N tokens wherever any n-gram
matches: what the user asked for, whatever it costs.

Where a turn's own tokens have no match, its user's earlier turns may
(Memory): a reply often says again what an earlier one said, a list's
layout or a stock phrase, as llama-server's `ngram-mod` drafts from
every request it has seen.  The memory is per user, as shared prefixes
are, so that no one can tell by timing what another's turns said.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

from .settings import (
    SPECULATE_AUTO,
    SPECULATE_MATCH_PRIORS,
    SPECULATE_MEMORY_FOLLOW,
    SPECULATE_MEMORY_NGRAMS,
    SPECULATE_MEMORY_USERS,
    SPECULATE_MIXED_PRIOR,
    SPECULATE_PRIOR,
    SPECULATE_TOKEN_COST,
    SPECULATE_WINDOW,
)

NGRAMS = (8, 6, 5, 4, 3, 2)  # n-gram sizes looked up, longest first: a longer match predicts better
# The shortest match `auto` drafts from: on the benchmark's replies (bench_speculate.py),
# drafts after a 2- or 3-gram were kept about half the time, after 5 or more about 0.9.
AUTO_MATCH = 5
PRIOR = SPECULATE_PRIOR  # acceptance rate assumed before any draft was tried
RATE_WEIGHT = 0.1  # of each drafted token's outcome in a turn's rate (an exponential average)
NODE_RATE_WEIGHT = 0.05  # ... in the node's rate after matches of its length (every turn's outcomes)
LONGEST_MATCH = SPECULATE_MATCH_PRIORS[-1][0]  # a match is measured back this far at most
RECOVER = 1 / 32  # of the way back to PRIOR for each token sampled without a draft
COST_WEIGHT = 0.1  # of each measured step in its size's average
# A size not measured in this many steps is forgotten: a step's price changes with the
# context (attention), and a size measured dear at a long context would never be tried again.
COST_STALE = 256


def mode_limit(mode: str, greedy: bool, constrained: bool) -> tuple[int, bool]:
    """The most tokens a turn may draft, and whether it drafts only as far
    as pays: `speculate off`, `auto` (greedy turns without a constraint:
    a sampled reply stays the same whatever else the node decodes), or N."""
    if mode == "off":
        return 0, False
    if mode == "auto":
        return (SPECULATE_AUTO if greedy and not constrained else 0), True
    return int(mode), False


def ngrams_after(tokens: list[int], start: int):
    """(n-gram, end) for every n-gram of tokens that ends at end >= start
    with a token after it (tokens[end])."""
    for end in range(max(start, 1), len(tokens)):
        for n in NGRAMS:
            if end >= n:
                yield tuple(tokens[end - n:end]), end


def longest_match(table: dict, tokens: list[int], shortest: int):
    """What table holds for the longest n-gram (of at least shortest
    tokens) that ends tokens, and that n-gram's length; or None."""
    for n in NGRAMS:
        if n < shortest:
            break
        found = table.get(tuple(tokens[-n:])) if n <= len(tokens) else None
        if found is not None:
            return found, n
    return None


def agreeing(tokens: list[int], end: int) -> int:
    """How many tokens before end agree with the last ones of tokens (at
    most LONGEST_MATCH): how long a match the tokens after end follow."""
    length, last = 0, len(tokens) - 1
    while length < LONGEST_MATCH and end - 1 - length >= 0 and tokens[end - 1 - length] == tokens[last - length]:
        length += 1
    return length


def copy_on(tokens: list[int], start: int, count: int) -> list[int]:
    """count tokens from tokens[start:] on, going on past the end as a
    loop does: where what followed the match runs into the latest tokens,
    it repeats with the period it had."""
    out = tokens[start:start + count]
    period = len(tokens) - start
    while len(out) < count:
        out.append(out[len(out) - period])
    return out


def averaged(rate: float, drafted: int, accepted: int, weight: float) -> float:
    """rate with a draft's outcome averaged in, token by token: its first
    accepted tokens kept, the one after them (if drafted) not."""
    for kept in [True] * accepted + [False] * (accepted < drafted):
        rate += ((1.0 if kept else 0.0) - rate) * weight
    return rate


def prior_cost(tokens: int) -> float:
    """A step's time by its tokens, in one-token steps, until measured."""
    return 1 + SPECULATE_TOKEN_COST * (tokens - 1)


class StepCosts:
    """Seconds a step of reply tokens takes (decoded, each with its logits,
    and sampled) by its number of tokens, as this node measured them.  A
    one-token step's seconds are averaged; a larger step is measured as a
    ratio to that average at the time, averaged per size, so that the
    machine's speed, which drifts by a fifth over tens of seconds on a
    shared host, and the context's, which grows, move every size's price
    together: what decides a draft's length is how much dearer a larger
    step is, and a size measured when the machine was slow, then not
    again, must not look dear for ever (one step the machine stalled in
    moves a size's ratio a bounded part, and a size's first measurement
    counts half against the estimate).  A ratio not yet measured is on
    the line between the measured sizes either side; past the largest,
    each token more adds what the prior curve says (on a CPU the first
    tokens more cost most: SmolLM2, 2 threads, short context: 2 tokens
    1.7 times one, 4 tokens 2.5, 16 tokens 8.7, 33 tokens 16.6; scaled
    from 2's price, a draft of 33 looked 24 times one and was never
    tried).  A size not measured in the latest COST_STALE steps is
    forgotten."""

    def __init__(self):
        self.forget()

    def record(self, tokens: int, seconds: float) -> None:
        if seconds <= 0:  # a clock that did not move says nothing
            return
        self.steps += 1
        if tokens == 1:
            self.one = seconds if not self.one_measured else self.one + (seconds - self.one) * COST_WEIGHT
            self.one_measured = True
        else:
            if self.one is None:  # nothing to compare with yet: as the prior says
                self.one = seconds / prior_cost(tokens)
            old, weight = self.ratios.get(tokens), COST_WEIGHT
            if old is None:  # the first measurement of this size: half and half with the estimate
                old, weight = self.ratio(tokens), 0.5
                bisect.insort(self.sizes, tokens)
            ratio = min(max(seconds / self.one, old / 2), old * 2)  # a stalled step counts a bounded part
            self.ratios[tokens] = old + (ratio - old) * weight
            self.when[tokens] = self.steps
        for size in [n for n in self.sizes if self.when[n] <= self.steps - COST_STALE]:
            self.sizes.remove(size)
            del self.ratios[size], self.when[size]

    def forget(self) -> None:
        self.one: float | None = None  # a one-token step's seconds, averaged
        self.one_measured = False  # or estimated from a larger step's
        self.ratios: dict[int, float] = {}  # size -> its seconds over a one-token step's, averaged
        self.sizes: list[int] = []  # the measured sizes above 1, sorted
        self.when: dict[int, int] = {}  # the step at which each was last measured
        self.steps = 0

    def ratio(self, tokens: int) -> float:
        """A step of `tokens` tokens over a one-token step."""
        if tokens <= 1:
            return 1.0
        got = self.ratios.get(tokens)
        if got is not None:
            return got
        sizes = self.sizes
        i = bisect.bisect(sizes, tokens)
        below, low = (sizes[i - 1], self.ratios[sizes[i - 1]]) if i else (1, 1.0)
        if i < len(sizes):
            above = sizes[i]
            return low + (self.ratios[above] - low) * (tokens - below) / (above - below)
        return low + SPECULATE_TOKEN_COST * (tokens - below)

    def seconds(self, tokens: int) -> float:
        return (self.one or 1.0) * self.ratio(tokens)


class KeptRates:
    """The rate at which this node's drafted tokens were kept, by the
    length of the match they followed (the classes of
    SPECULATE_MATCH_PRIORS) and whether its n-gram was followed by
    different tokens before (mixed): an exponential average of every
    turn's outcomes, from the priors."""

    def __init__(self):
        self.forget()

    @staticmethod
    def class_of(match: int) -> int:
        return max((least for least, _ in SPECULATE_MATCH_PRIORS if least <= match),
                   default=SPECULATE_MATCH_PRIORS[0][0])

    def rate(self, match: int, mixed: bool = False) -> float:
        return self.rates[self.class_of(match), mixed]

    def record(self, match: int, mixed: bool, drafted: int, accepted: int) -> None:
        key = self.class_of(match), mixed
        self.rates[key] = averaged(self.rates[key], drafted, accepted, NODE_RATE_WEIGHT)

    def forget(self) -> None:
        self.rates = {(least, mixed): SPECULATE_MIXED_PRIOR if mixed else prior
                      for least, prior in SPECULATE_MATCH_PRIORS for mixed in (False, True)}


class Memory:
    """What one user's finished turns said: each n-gram of their tokens and
    the tokens that followed it the last time, for the latest `limit`
    n-grams."""

    def __init__(self, limit: int = SPECULATE_MEMORY_NGRAMS):
        self.limit = limit
        self.after: dict[tuple[int, ...], tuple[int, ...]] = {}  # in the order learned: oldest first

    def learn(self, tokens: list[int]) -> None:
        # Only the tail whose n-grams the memory can keep: the rest would go again at once.
        tokens = tokens[-(self.limit // len(NGRAMS) + NGRAMS[0]):]
        after = self.after
        for key, end in ngrams_after(tokens, 1):
            after.pop(key, None)  # to the end: the latest is kept longest
            after[key] = tuple(tokens[end:end + SPECULATE_MEMORY_FOLLOW])
        for key in list(after)[:max(0, len(after) - self.limit)]:
            del after[key]

    def follow(self, tokens: list[int], shortest: int, count: int) -> tuple[list[int], int]:
        """What followed the longest n-gram (of at least shortest tokens)
        that ends tokens, and the n-gram's length; ([], 0) if none."""
        found = longest_match(self.after, tokens, shortest)
        if found is None:
            return [], 0
        after, n = found
        return list(after[:count]), n


class Memories:
    """A Memory for each of the latest users to finish a turn that drafts."""

    def __init__(self, users: int = SPECULATE_MEMORY_USERS):
        self.users = users
        self.by_group: OrderedDict[str, Memory] = OrderedDict()

    def get(self, group: str) -> Memory | None:
        return self.by_group.get(group)

    def learn(self, group: str, tokens: list[int]) -> None:
        memory = self.by_group.pop(group, None) or Memory()
        self.by_group[group] = memory
        memory.learn(tokens)
        while len(self.by_group) > self.users:
            self.by_group.popitem(last=False)

    def forget(self) -> None:
        self.by_group.clear()


class Drafter:
    """One turn's drafts: an index of where each n-gram of its tokens last
    occurred, the rate at which its drafts were kept, and the node's
    rates by the match's length (shared by every turn: worker thread only)."""

    def __init__(self, most: int, adaptive: bool = True, kept: KeptRates | None = None):
        self.most = most
        self.adaptive = adaptive  # `auto`: long matches only, as far as pays
        self.shortest = AUTO_MATCH if adaptive else NGRAMS[-1]
        self.rate = PRIOR
        self.kept = kept if kept is not None else KeptRates()
        self.match = 0  # the length of the match the latest proposal followed
        self.mixed = False  # whether that match's n-gram was followed by different tokens before
        self.tokens: list[int] = []  # the turn's tokens so far, all sampled or given
        self.where: dict[tuple[int, ...], int] = {}  # n-gram -> where the token after its last occurrence is
        self.varied: set[tuple[int, ...]] = set()  # n-grams followed by different tokens at different places

    def likely(self) -> float:
        """The chance that a drafted token is kept, given the one before it was."""
        return min(self.rate, self.kept.rate(self.match, self.mixed))

    def length(self, costs: StepCosts, tokens: int, expected: float, room: int) -> int:
        """How many tokens of the latest proposal to draft, at most room,
        in a step of `tokens` tokens so far that makes `expected` tokens of
        replies: the length that makes the most tokens a second."""
        limit = min(self.most, room)
        if limit <= 0 or not self.adaptive:
            return max(0, limit)
        p = self.likely()
        best, best_length = expected / costs.seconds(tokens), 0
        kept = gain = 1.0
        for k in range(1, limit + 1):
            kept *= p
            gain += kept
            value = (expected - 1 + gain) / costs.seconds(tokens + k)
            if value > best:
                best, best_length = value, k
        return best_length

    def expected(self, drafted: int) -> float:
        """Tokens a turn is expected to make in a step where it drafts `drafted`."""
        p = self.likely()
        return sum(p ** j for j in range(drafted + 1))

    def propose(self, history: list[int], last: int, count: int, memory: Memory | None = None) -> list[int]:
        """Up to count tokens to follow history and then last (the token just
        sampled): what followed the longest recent n-gram that ends there,
        in the turn's tokens, else in its user's memory; and self.match,
        how long the match is.  history only grows between calls, by tokens
        sampled (drafts that were not kept are gone from it)."""
        tokens = self.tokens
        start = len(tokens)
        tokens.extend(history[start:])
        tokens.append(last)
        where, varied = self.where, self.varied
        for key, end in ngrams_after(tokens, max(start, len(tokens) - SPECULATE_WINDOW)):
            before = where.get(key)
            if before is not None and tokens[before] != tokens[end]:
                varied.add(key)
            where[key] = end
        self.match, self.mixed = 0, False
        if count <= 0:
            return []
        found = longest_match(where, tokens, self.shortest)
        if found is not None:
            self.match = agreeing(tokens, found[0])
            self.mixed = tuple(tokens[-found[1]:]) in varied
            return copy_on(tokens, found[0], count)
        if memory is None:
            return []
        draft, self.match = memory.follow(tokens, self.shortest, count)
        return draft

    def draft(self, history: list[int], last: int, room: int, memory: Memory | None,
              costs: StepCosts, tokens: int, expected: float) -> list[int]:
        """The draft to put after last in a step of `tokens` tokens so far
        that makes `expected` tokens of replies, at most room: what could
        follow first (propose), then as much of it as pays (length), as
        that depends on how long a match it follows."""
        draft = self.propose(history, last, min(self.most, room), memory)
        draft = draft[:self.length(costs, tokens, expected, len(draft))]
        if not draft:
            self.no_draft()
        return draft

    def no_draft(self) -> None:
        """A token sampled without a draft: the rate drifts back to PRIOR."""
        self.rate += (PRIOR - self.rate) * RECOVER

    def verified(self, drafted: int, accepted: int) -> None:
        """A draft's outcome: its first `accepted` tokens were kept."""
        self.rate = averaged(self.rate, drafted, accepted, RATE_WEIGHT)
        self.kept.record(self.match, self.mixed, drafted, accepted)
