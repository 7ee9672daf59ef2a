"""A fake model behind the engine's model interface (styxfs.llama.model.Model):
the scheduler's tests run in milliseconds, without llama.cpp.

A token is a byte plus 2 (0 is end-of-generation, 1 begins a text).  Each
sequence's KV cache is kept as a list, and `decode` checks what llama.cpp
would need: every position follows the one before in its sequence, and a
step holds at most `batch_size` tokens.  The next token is a function of
everything the sequence holds, so a conversation re-evaluated after
eviction gives the same text only if the engine rebuilt its cache exactly.

`FakeEngine` is the real engine on it, for a node in a test (the fixtures
`start_fake_node` and `fake_nodes`); a `StepGate` holds its steps, for the
tests that must catch a reply mid-way.  `python -m tests.fakemodel` is the
node's own command on it, for a node process.
"""

from __future__ import annotations

import queue
import threading

import trio

from styxfs.llama import errors
from styxfs.llama.engine import Engine
from styxfs.llama.model import EngineError, ModelInfo, ModelSettings
from styxfs.llama.settings import NODE, Sampling

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


class StepGate:
    """Holds a fake model's steps (each decode) until the test lets them run.

    Closed, as made: a step waits at the gate.  `allow(n)` lets n more steps
    through, `open()` every step from now on, `close()` holds the next one
    again.  `await held()` returns once the model waits at the gate with
    every step let through run, and what those steps made (text, states)
    delivered to the replies: the engine sends a step's reports before it
    begins the next.  A test holds a reply mid-way so, for as long as it
    likes, where real llama.cpp would race it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._limit: int | None = 0  # steps let through in all; None: no limit
        self.steps = 0  # steps that have passed the gate
        self._waiting = False
        self._held: list[tuple[object, trio.Event]] = []  # (trio token, event) of held() callers

    def allow(self, steps: int = 1) -> None:
        with self._cond:
            if self._limit is not None:
                self._limit += steps
                self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._limit = None
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._limit = self.steps

    def _is_held(self) -> bool:
        return self._waiting and self._limit is not None and self.steps >= self._limit

    async def held(self) -> None:
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()
        with self._cond:
            if self._is_held():
                # After the reports the worker sent before it stopped here (run_sync_soon keeps order).
                token.run_sync_soon(done.set)
            else:
                self._held.append((token, done))
        await done.wait()

    def passing(self) -> None:
        """The model's worker thread, at the start of a step."""
        with self._cond:
            while self._limit is not None and self.steps >= self._limit:
                self._waiting = True
                for token, done in self._held:
                    try:
                        token.run_sync_soon(done.set)
                    except trio.RunFinishedError:
                        pass
                self._held = []
                self._cond.wait()
            self._waiting = False
            self.steps += 1


class FakeModel:
    """`FakeModel.opener(...)` is what the engine is given."""

    def __init__(self, settings: ModelSettings, slots: int, progress=None, *, eog_after: int | None = None,
                 gate: StepGate | None = None, period: int | None = None):
        self.slots = slots
        self.gate = gate
        self.batch_size = settings.batch
        self.seq_context = settings.ctx
        self.eog_after = eog_after  # a sequence ends itself once it holds this many tokens
        self.period = period  # the model says again what it holds this many tokens back (it copies)
        self.cache: dict[int, list[int]] = {seq: [] for seq in range(slots)}
        self.steps: list[list[tuple[int, int, int, bool]]] = []  # every decode's entries
        self.logits: dict[int, tuple[int, int]] = {}  # batch index -> sequence and tokens held there, for sample
        self.samplers = 0  # made and not yet freed
        self.closed = False
        self.info = ModelInfo(path=settings.path, description="fake", architecture="fake", parameters=0, size=0,
                              context=settings.ctx, train_context=settings.ctx, vocabulary=258,
                              quantisation="none", settings=settings, chat_template=settings.chat_template)

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

    def piece(self, token: int, special: bool = False) -> bytes:
        return bytes([token - 2]) if token >= 2 else b""

    def detokenize(self, tokens: list[int]) -> bytes:
        return b"".join(self.piece(token, True) for token in tokens)

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
        if self.gate is not None:
            self.gate.passing()
        self.steps.append(list(entries))
        self.logits = {}
        for index, (seq, token, pos, logits) in enumerate(entries):
            assert pos == len(self.cache[seq]), f"sequence {seq}: position {pos} after {len(self.cache[seq])}"
            assert pos < self.seq_context, f"sequence {seq} past its context"
            self.cache[seq].append(token)
            if logits:
                self.logits[index] = seq, pos + 1

    def make_sampler(self, sampling: Sampling, history: list[int], said: bytes = b"") -> object:
        self.samplers += 1
        return object()  # a constraint is not followed: the fake model's text is its own

    def check_grammar(self, gbnf: str) -> None:
        """A stand-in for llama.cpp's parser: a grammar needs a root rule."""
        if "root" not in gbnf:
            raise EngineError(errors.BAD_GRAMMAR.format(why="no root rule"))

    def free_sampler(self, sampler: object) -> None:
        self.samplers -= 1

    def sample(self, sampler: object, batch_index: int) -> int:
        seq, held = self.logits[batch_index]
        cache = self.cache[seq][:held]
        if self.eog_after is not None and len(cache) >= self.eog_after:
            return EOG
        if self.period is not None and len(cache) >= self.period:
            return cache[-self.period]
        return next_token(cache)


class FakeEngine(Engine):
    """The node's engine on the fake model: `start_fake_node` gives it to a
    node.  With a gate, its steps wait at the gate; an unload or a stop opens
    the gate (the worker must come round to it, and the test is done holding)."""

    def __init__(self, slots: int = NODE["slots"].default, prefix_cache: int = NODE["prefixcache"].default,
                 share_prefixes: bool = False, gate: StepGate | None = None, **model_options):
        opener = FakeModel.opener(gate=gate, **model_options)
        super().__init__(opener, slots=slots, prefix_cache=prefix_cache, share_prefixes=share_prefixes)
        self.gate = gate
        self.models = opener.made
        if gate is not None:
            self.commands = _Commands(gate)


class _Commands(queue.Queue):
    """The engine's commands: an unload or a stop, once queued, opens the gate."""

    def __init__(self, gate: StepGate):
        super().__init__()
        self.gate = gate

    def put(self, item, block=True, timeout=None) -> None:
        super().put(item, block, timeout)
        if item[0] in ("unload", "stop"):
            self.gate.open()


def serve() -> None:
    """`python -m tests.fakemodel [the options of python -m styxfs.llama]`:
    a node process on the fake model, for the coordinator's tests."""
    from styxfs.llama import cli, node

    assert node.LlamaModel, "the node opens its model with node.LlamaModel"
    node.LlamaModel = FakeModel
    cli.serve(prog_name="python -m tests.fakemodel")


if __name__ == "__main__":
    serve()
