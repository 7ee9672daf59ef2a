"""llama.cpp's grammar sampler for the sequences that have a constraint
(llamacpp.LlamaModel's samplers; the others keep their fast path).

A token the grammar forbids must never be accepted into it: llama.cpp throws
a C++ exception, which through ctypes ends the process.  So each token is
first checked by the grammar itself (its apply on that one candidate) and
only an allowed one is accepted.  Sampling is llama.cpp's own way (common
sampling's): the session's sampler picks as if unconstrained, and only when
the grammar refuses that token is the grammar applied to every candidate and
the pick made again among what it allows (cheap: most tokens pass)."""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile
import threading
from collections import deque
from contextlib import contextmanager

import llama_cpp as lc
import numpy

from . import errors
from .model import EngineError
from .settings import GRAMMAR_TOP as TOP
from .settings import REPEAT_WINDOW

_TOKEN_DATA = numpy.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data
_SHOWN_BLANK = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNKNOWN | lc.LLAMA_TOKEN_ATTR_UNUSED
assert _TOKEN_DATA.itemsize == ctypes.sizeof(lc.llama_token_data)


class _Capture(logging.Handler):
    """llama.cpp's log errors of this thread while `capturing()`: the grammar
    parser's reason goes only there."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None:
            lines.append(record.getMessage())

    @contextmanager
    def capturing(self):
        self.local.lines = []
        try:
            yield self.local.lines
        finally:
            self.local.lines = None


_capture = _Capture()
logging.getLogger("llama.cpp").addHandler(_capture)


_stderr_lock = threading.Lock()


@contextmanager
def _c_stderr():
    """What C code writes to file descriptor 2 meanwhile (llama.cpp's grammar
    parser says why with fprintf): a file for the moment, then the real one."""
    with _stderr_lock, tempfile.TemporaryFile() as caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        said: list[bytes] = []
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            said.append(caught.read(4096))


def parse(vocab, gbnf: str):
    """llama.cpp's grammar sampler for gbnf (root rule `root`), or EngineError
    with the parser's message."""
    with _capture.capturing() as logged, _c_stderr() as printed:
        sampler = lc.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        lines = printed[0].decode(errors="replace").splitlines() + logged
        why = " ".join(line.strip() for line in lines if line.strip()) or "the parser refused it"
        raise EngineError(errors.BAD_GRAMMAR.format(why=why[:300]))
    return sampler


class Constrained:
    """A sequence's sampler under a grammar: the session's own (a chain, or
    `greedy` for the highest logit) and the grammar sampler."""

    def __init__(self, chain, grammar, greedy: object, needed: int = 0, penalised: list[int] | None = None):
        self.chain, self.grammar, self.greedy = chain, grammar, greedy
        # The chain picks among the `needed` best allowed tokens (1: greedy, else its top-k; 0:
        # among all); `penalised`: what its repeat penalty sees, None without one.
        self.needed = needed
        self.recent = None if penalised is None else deque(penalised, maxlen=REPEAT_WINDOW)
        self._one = lc.llama_token_data_array()
        self._one_data = (lc.llama_token_data * 1)()

    def allows(self, token: int) -> bool:
        """Whether the grammar takes token next (it is not accepted yet)."""
        self._one_data[0].id, self._one_data[0].logit, self._one_data[0].p = token, 0.0, 0.0
        one = self._one
        one.data, one.size, one.selected, one.sorted = self._one_data, 1, -1, False
        lc.llama_sampler_apply(self.grammar, ctypes.byref(one))
        return self._one_data[0].logit != float("-inf")

    def accept(self, token: int) -> None:
        if not self.allows(token):
            raise EngineError(errors.GRAMMAR_STUCK.format())
        lc.llama_sampler_accept(self.grammar, token)

    def advance(self, tokens: list[int]) -> None:
        """The grammar goes through a reply begun elsewhere (a turn that continues it)."""
        for token in tokens:
            self.accept(token)

    def free(self) -> None:
        lc.llama_sampler_free(self.grammar)


class Candidates:
    """Every token with its logit, as llama_token_data, for a chain to work on.
    Tokens a reply shows as nothing (control, unknown, unused), an end
    aside, are never candidates under a grammar: the grammar reads their
    names ("<unk>" fits `"<" [a-z]+ ">"`), which the reply would not hold."""

    def __init__(self, vocab, n_vocab: int):
        self.ids = numpy.arange(n_vocab, dtype="<i4")
        self.data = numpy.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.array = lc.llama_token_data_array()
        self.hidden = numpy.array([bool(lc.llama_vocab_get_attr(vocab, t) & _SHOWN_BLANK)
                                   and not lc.llama_vocab_is_eog(vocab, t) for t in range(n_vocab)])

    def fill(self, logits: numpy.ndarray, top: int = 0):
        """Every token, or (top) only the `top` of highest logit."""
        ids = self.ids if not top else numpy.argpartition(logits, -top)[-top:].astype("<i4")
        data = self.data[:len(ids)]
        data["id"], data["logit"], data["p"] = ids, logits[ids] if top else logits, 0.0
        data["logit"][self.hidden[ids]] = -numpy.inf
        a = self.array
        a.data = self.data.ctypes.data_as(ctypes.POINTER(lc.llama_token_data))
        a.size, a.selected, a.sorted = len(ids), -1, False
        return a

    @property
    def held(self) -> numpy.ndarray:
        return self.data[:self.array.size]

    def pick(self, chain, greedy: object) -> int:
        """The token chain picks from what the candidates hold now."""
        if chain is greedy:
            return int(self.held["id"][int(self.held["logit"].argmax())])
        lc.llama_sampler_apply(chain, ctypes.byref(self.array))
        return int(self.array.data[self.array.selected].id)


def _among_the_best(s: Constrained, logits: numpy.ndarray, candidates: Candidates) -> int | None:
    """The token the grammar and chain pick, found among the TOP tokens of
    highest logit alone (the grammar's apply on every token of a large
    vocabulary takes tens of ms); None if that cannot be told from them.
    Exact: any token left out has a logit below all of theirs, and a repeat
    penalty only lowers, so once `needed` allowed unpenalised tokens are
    among them, the chain's choice is too."""
    if not s.needed or len(logits) <= TOP:
        return None
    array = candidates.fill(logits, TOP)
    lc.llama_sampler_apply(s.grammar, ctypes.byref(array))
    held = candidates.held
    allowed = numpy.isfinite(held["logit"])
    if s.recent is not None:
        allowed &= ~numpy.isin(held["id"], numpy.fromiter(s.recent, dtype="<i4"))
    if allowed.sum() < s.needed:
        return None
    return candidates.pick(s.chain, s.greedy)


def sample(s: Constrained, logits: numpy.ndarray, candidates: Candidates, is_eog) -> int:
    """The next token under the grammar, accepted into it and the chain.
    EngineError when the grammar allows no token."""
    if s.chain is s.greedy:
        token = int(logits.argmax())
    else:
        candidates.fill(logits)
        token = candidates.pick(s.chain, s.greedy)
    if candidates.hidden[token] or not s.allows(token):
        token = _among_the_best(s, logits, candidates)
    if token is None:
        array = candidates.fill(logits)
        lc.llama_sampler_apply(s.grammar, ctypes.byref(array))
        if not numpy.isfinite(candidates.held["logit"]).any():
            raise EngineError(errors.GRAMMAR_STUCK.format())
        token = candidates.pick(s.chain, s.greedy)
    if not is_eog(token):  # an end is allowed only where the grammar may end: nothing to accept
        s.accept(token)
    if s.chain is not s.greedy:
        lc.llama_sampler_accept(s.chain, token)
    if s.recent is not None:
        s.recent.append(token)
    return token
