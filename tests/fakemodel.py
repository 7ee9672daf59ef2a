"""A fake model behind the engine's model interface (styxfs.llama.model.Model):
the scheduler's tests run in milliseconds, without llama.cpp.

A token is a byte plus 2 (0 is end-of-generation, 1 begins a text).  Each
sequence's KV cache is kept as a list, and `decode` checks what llama.cpp
would need: every position follows the one before in its sequence, and a
step holds at most `batch_size` tokens.  The next token is a function of
everything the sequence holds, so a conversation re-evaluated after
eviction gives the same text only if the engine rebuilt its cache exactly.
"""

from __future__ import annotations

from styxfs.llama.model import ModelInfo, ModelSettings
from styxfs.llama.settings import Sampling

EOG, BOS = 0, 1
ALPHABET = b"abcdefghijklmnopqrstuvwxyz"


def next_token(cache: list[int]) -> int:
    """What the fake model says after cache: a letter, by a hash of it all."""
    h = 0
    for token in cache:
        h = (h * 31 + token) % 1_000_003
    return ALPHABET[h % len(ALPHABET)] + 2


def continuation(tokens: list[int], n: int) -> bytes:
    """The n tokens the fake model gives greedily after tokens, as text."""
    cache, out = list(tokens), bytearray()
    for _ in range(n):
        token = next_token(cache)
        out.append(token - 2)
        cache.append(token)
    return bytes(out)


def tokens_of(text: bytes, first: bool = True) -> list[int]:
    return ([BOS] if first else []) + [b + 2 for b in text]


class FakeModel:
    """`FakeModel.opener(...)` is what the engine is given."""

    def __init__(self, settings: ModelSettings, slots: int, progress=None, *, eog_after: int | None = None):
        self.slots = slots
        self.batch_size = settings.batch
        self.seq_context = settings.ctx
        self.eog_after = eog_after  # a sequence ends itself once it holds this many tokens
        self.cache: dict[int, list[int]] = {seq: [] for seq in range(slots)}
        self.steps: list[list[tuple[int, int, int, bool]]] = []  # every decode's entries
        self.logits: dict[int, int] = {}  # batch index -> sequence, for sample
        self.samplers = 0  # made and not yet freed
        self.closed = False
        self.info = ModelInfo(path=settings.path, description="fake", architecture="fake", parameters=0, size=0,
                              context=settings.ctx, train_context=settings.ctx, vocabulary=258,
                              quantisation="none", settings=settings)

    @classmethod
    def opener(cls, **options):
        """An open_model for Engine that remembers the models it made."""
        made: list[FakeModel] = []

        def open_model(settings, slots, progress=None):
            model = cls(settings, slots, progress, **options)
            made.append(model)
            return model

        open_model.made = made
        return open_model

    def close(self) -> None:
        self.closed = True

    def tokenize(self, text: bytes, add_special: bool) -> list[int]:
        return tokens_of(text, add_special)

    def piece(self, token: int) -> bytes:
        return bytes([token - 2]) if token >= 2 else b""

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def trim_seq(self, seq: int, keep: int) -> None:
        del self.cache[seq][keep:]

    def clear_seq(self, seq: int) -> None:
        self.cache[seq] = []

    def copy_seq(self, src: int, dst: int, count: int) -> None:
        assert not self.cache[dst], "copied into a sequence that holds tokens"
        self.cache[dst] = self.cache[src][:count]

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        assert 0 < len(entries) <= self.batch_size, f"a step of {len(entries)} tokens"
        self.steps.append(list(entries))
        self.logits = {}
        for index, (seq, token, pos, logits) in enumerate(entries):
            assert pos == len(self.cache[seq]), f"sequence {seq}: position {pos} after {len(self.cache[seq])}"
            assert pos < self.seq_context, f"sequence {seq} past its context"
            self.cache[seq].append(token)
            if logits:
                self.logits[index] = seq

    def make_sampler(self, sampling: Sampling, history: list[int]) -> object:
        self.samplers += 1
        return object()

    def free_sampler(self, sampler: object) -> None:
        self.samplers -= 1

    def sample(self, sampler: object, batch_index: int) -> int:
        cache = self.cache[self.logits[batch_index]]
        if self.eog_after is not None and len(cache) >= self.eog_after:
            return EOG
        return next_token(cache)
