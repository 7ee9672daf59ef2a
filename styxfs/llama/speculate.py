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

Drafting costs a step more tokens, so a sequence drafts only as far as it
pays: a step of n tokens costs about 1 + TOKEN_COST * n of a one-token step
(`bench/bench_decode.py`), and the j-th token of a draft is kept with
probability p^j, p the sequence's recent acceptance rate.  A draft token is
worth its place when p^j is above what a token costs compared to the
tokens the step makes without drafts; so a full batch drafts little, and a
sequence whose drafts keep failing stops drafting (p recovers slowly
towards PRIOR, so that it tries again later).
"""

from __future__ import annotations

import math

from .settings import SPECULATE_AUTO, SPECULATE_PRIOR, SPECULATE_TOKEN_COST

NGRAMS = (4, 3, 2)  # n-gram sizes looked up, longest first: a longer match predicts better
PRIOR = SPECULATE_PRIOR  # acceptance rate assumed before any draft was tried
RATE_WEIGHT = 0.2  # of each drafted token's outcome in the rate (an exponential average)
RECOVER = 1 / 32  # of the way back to PRIOR for each token sampled without a draft
TOKEN_COST = SPECULATE_TOKEN_COST  # a step's cost per token, against a one-token step's fixed part


def mode_limit(mode: str, greedy: bool, constrained: bool) -> int:
    """The most tokens a turn may draft: `speculate off`, `auto` (greedy
    turns without a constraint: a sampled reply stays the same whatever
    else the node decodes), or N."""
    if mode == "off":
        return 0
    if mode == "auto":
        return SPECULATE_AUTO if greedy and not constrained else 0
    return int(mode)


def worth(batch_tokens: int) -> float:
    """The chance of being kept above which a drafted token pays, in a step
    of batch_tokens without drafts: its cost against what a token of such a
    step costs."""
    return TOKEN_COST * batch_tokens / (1 + TOKEN_COST * batch_tokens)


class Drafter:
    """One turn's drafts: an index of where each n-gram of its tokens last
    occurred, and the rate at which its drafts were kept."""

    def __init__(self, most: int):
        self.most = most
        self.rate = PRIOR
        self.tokens: list[int] = []  # the turn's tokens so far, all sampled or given
        self.where: dict[tuple[int, ...], int] = {}  # n-gram -> where the token after its last occurrence is
        self.drafted = 0
        self.accepted = 0

    def length(self, batch_tokens: int, room: int) -> int:
        """How many tokens to draft in a step of batch_tokens without drafts,
        at most room."""
        limit = min(self.most, room)
        if limit <= 0:
            return 0
        if self.rate >= 1.0:
            return limit
        if self.rate <= 0.0:
            return 0
        return max(0, min(limit, int(math.log(worth(batch_tokens)) / math.log(self.rate))))

    def propose(self, history: list[int], last: int, count: int) -> list[int]:
        """Up to count tokens to follow history and then last (the token just
        sampled): what followed the longest recent n-gram that ends there.
        history only grows between calls, by tokens sampled (drafts that
        were not kept are gone from it)."""
        tokens = self.tokens
        start = len(tokens)
        tokens.extend(history[start:])
        tokens.append(last)
        where = self.where
        for end in range(max(start, 1), len(tokens)):  # n-grams with a token after them
            for n in NGRAMS:
                if end >= n:
                    where[tuple(tokens[end - n:end])] = end
        if count <= 0:
            return []
        for n in NGRAMS:
            found = where.get(tuple(tokens[-n:]))
            if found is not None:
                return tokens[found:found + count]
        return []

    def no_draft(self) -> None:
        """A token sampled without a draft: the rate drifts back to PRIOR."""
        self.rate += (PRIOR - self.rate) * RECOVER

    def verified(self, drafted: int, accepted: int) -> None:
        """A draft's outcome: its first `accepted` tokens were kept."""
        self.drafted += drafted
        self.accepted += accepted
        for kept in [True] * accepted + [False] * (accepted < drafted):
            self.rate += ((1.0 if kept else 0.0) - self.rate) * RATE_WEIGHT
