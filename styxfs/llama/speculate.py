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
takes 2.8 times one of 1), so a draft pays only where it is mostly kept.
Under `speculate auto` a turn drafts only what follows a long n-gram match
(AUTO_MATCH tokens), and only as far as pays: the j-th drafted token is
kept with probability p^j, p the turn's recent rate, and the draft's
length is the one that makes the step's expected tokens per second
highest, a step's seconds by its number of tokens as this node measured
them (StepCosts).  A full batch hence drafts little, and a turn whose
drafts keep failing stops drafting (p recovers slowly towards PRIOR, so
that it tries again later).  `speculate N` drafts up to N tokens wherever
any n-gram matches: what the user asked for, whatever it costs.

Where a turn's own tokens have no match, its user's earlier turns may
(Memory): a reply often says again what an earlier one said, a list's
layout or a stock phrase, as llama-server's `ngram-mod` drafts from every
request it has seen.  The memory is per user, as shared prefixes are, so
that no one can tell by timing what another's turns said.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

from .settings import (
    SPECULATE_AUTO,
    SPECULATE_MEMORY_FOLLOW,
    SPECULATE_MEMORY_NGRAMS,
    SPECULATE_MEMORY_USERS,
    SPECULATE_PRIOR,
    SPECULATE_TOKEN_COST,
)

NGRAMS = (8, 6, 5, 4, 3, 2)  # n-gram sizes looked up, longest first: a longer match predicts better
# The shortest match `auto` drafts from: on the benchmark's replies (bench_speculate.py),
# drafts after a 2- or 3-gram were kept about half the time, after 5 or more about 0.9.
AUTO_MATCH = 5
PRIOR = SPECULATE_PRIOR  # acceptance rate assumed before any draft was tried
RATE_WEIGHT = 0.1  # of each drafted token's outcome in the rate (an exponential average)
RECOVER = 1 / 32  # of the way back to PRIOR for each token sampled without a draft
COST_WEIGHT = 0.1  # of each measured step in its size's average


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
    tokens) that ends tokens, or None."""
    for n in NGRAMS:
        if n < shortest:
            break
        found = table.get(tuple(tokens[-n:]))
        if found is not None:
            return found
    return None


def prior_cost(tokens: int) -> float:
    """A step's time by its tokens, in one-token steps, until measured."""
    return 1 + SPECULATE_TOKEN_COST * (tokens - 1)


class StepCosts:
    """Seconds a step of reply tokens takes (decoded, each with its logits,
    and sampled) by its number of tokens, as this node measured them: an
    average per size.  A size not yet measured is
    estimated from the nearest measured one by the prior curve."""

    def __init__(self):
        self.measured: dict[int, float] = {}
        self.sizes: list[int] = []  # the measured sizes, sorted

    def record(self, tokens: int, seconds: float) -> None:
        old = self.measured.get(tokens)
        if old is None:
            bisect.insort(self.sizes, tokens)
            self.measured[tokens] = seconds
        else:
            self.measured[tokens] = old + (seconds - old) * COST_WEIGHT

    def forget(self) -> None:
        self.measured.clear()
        self.sizes.clear()

    def seconds(self, tokens: int) -> float:
        got = self.measured.get(tokens)
        if got is not None:
            return got
        sizes = self.sizes
        if not sizes:
            return prior_cost(tokens)
        i = bisect.bisect(sizes, tokens)
        near = min(sizes[max(0, i - 1):i + 1], key=lambda n: abs(n - tokens))
        return self.measured[near] * prior_cost(tokens) / prior_cost(near)


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

    def follow(self, tokens: list[int], shortest: int, count: int) -> list[int]:
        """What followed the longest n-gram (of at least shortest tokens)
        that ends tokens."""
        found = longest_match(self.after, tokens, shortest)
        return list(found[:count]) if found is not None else []


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
    occurred, and the rate at which its drafts were kept."""

    def __init__(self, most: int, adaptive: bool = True):
        self.most = most
        self.adaptive = adaptive  # `auto`: long matches only, as far as pays
        self.shortest = AUTO_MATCH if adaptive else NGRAMS[-1]
        self.rate = PRIOR
        self.tokens: list[int] = []  # the turn's tokens so far, all sampled or given
        self.where: dict[tuple[int, ...], int] = {}  # n-gram -> where the token after its last occurrence is

    def length(self, costs: StepCosts, tokens: int, expected: float, room: int) -> int:
        """How many tokens to draft, at most room, in a step of `tokens`
        tokens so far that makes `expected` tokens of replies: the length
        that makes the most tokens a second."""
        limit = min(self.most, room)
        if limit <= 0 or not self.adaptive:
            return max(0, limit)
        best, best_length = expected / costs.seconds(tokens), 0
        kept = gain = 1.0
        for k in range(1, limit + 1):
            kept *= self.rate
            gain += kept
            value = (expected - 1 + gain) / costs.seconds(tokens + k)
            if value > best:
                best, best_length = value, k
        return best_length

    def expected(self, drafted: int) -> float:
        """Tokens a turn is expected to make in a step where it drafts `drafted`."""
        p = self.rate
        return sum(p ** j for j in range(drafted + 1))

    def propose(self, history: list[int], last: int, count: int, memory: Memory | None = None) -> list[int]:
        """Up to count tokens to follow history and then last (the token just
        sampled): what followed the longest recent n-gram that ends there,
        in the turn's tokens, else in its user's memory.  history only
        grows between calls, by tokens sampled (drafts that were not kept
        are gone from it)."""
        tokens = self.tokens
        start = len(tokens)
        tokens.extend(history[start:])
        tokens.append(last)
        self.where.update(ngrams_after(tokens, start))
        if count <= 0:
            return []
        found = longest_match(self.where, tokens, self.shortest)
        if found is not None:
            return tokens[found:found + count]
        return memory.follow(tokens, self.shortest, count) if memory is not None else []

    def no_draft(self) -> None:
        """A token sampled without a draft: the rate drifts back to PRIOR."""
        self.rate += (PRIOR - self.rate) * RECOVER

    def verified(self, drafted: int, accepted: int) -> None:
        """A draft's outcome: its first `accepted` tokens were kept."""
        for kept in [True] * accepted + [False] * (accepted < drafted):
            self.rate += ((1.0 if kept else 0.0) - self.rate) * RATE_WEIGHT
