"""llama.cpp's grammar sampler for the sequences that have a constraint
(llamacpp.LlamaModel's samplers; the others keep their fast path).

A token the grammar forbids must never be accepted into it: llama.cpp throws
a C++ exception, which through ctypes ends the process.  So each token is
first checked by the grammar itself (its apply on that one candidate) and
only an allowed one is accepted.  Sampling is llama.cpp's own way (common
sampling's): the session's sampler picks as if unconstrained, and only when
the grammar refuses that token is the pick made again among what the grammar
allows (most tokens pass).  That second pick is where the time goes: the
grammar's apply costs 0.1-0.4 us a token, tens of ms over Gemma 3's 262,144;
so it looks only at tokens whose first byte the grammar can take now, and
among those, at the best by logit first (`_tiers`)."""

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
from .settings import GRAMMAR_TIERS, REPEAT_WINDOW

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


def _read_vocabulary(vocab, n_vocab: int):
    """Per token: the first byte of its text as the grammar reads it (-1 if
    empty), whether that text is one byte, whether it is hidden, whether an end."""
    first = numpy.full(n_vocab, -1, dtype="<i2")
    single, hidden, ends = (numpy.zeros(n_vocab, dtype=bool) for _ in range(3))
    buf = ctypes.create_string_buffer(256)
    to_piece, attr, is_eog = lc.llama_token_to_piece, lc.llama_vocab_get_attr, lc.llama_vocab_is_eog
    for token in range(n_vocab):
        n = to_piece(vocab, token, buf, 256, 0, True)  # special: as the grammar reads it
        if n < 0:  # longer: nothing was written
            longer = ctypes.create_string_buffer(-n)
            n = to_piece(vocab, token, longer, -n, 0, True)
            first[token] = longer.raw[0]
        elif n:
            first[token], single[token] = buf.raw[0], n == 1
        ends[token] = is_eog(vocab, token)
        hidden[token] = bool(attr(vocab, token) & _SHOWN_BLANK) and not ends[token]
    return first, single, hidden, ends


class Candidates:
    """Tokens with their logits, as llama_token_data, for the grammar and a
    chain to work on, and the tokens by first byte.  Tokens a reply shows as
    nothing (control, unknown, unused), an end aside, are never candidates
    under a grammar: the grammar reads their names ("<unk>" fits
    `"<" [a-z]+ ">"`), which the reply would not hold."""

    def __init__(self, vocab, n_vocab: int):
        self.all = numpy.arange(n_vocab, dtype="<i4")
        self.data = numpy.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.array = lc.llama_token_data_array()
        first, single, self.hidden, ends = _read_vocabulary(vocab, n_vocab)
        self.hidden_ids = numpy.flatnonzero(self.hidden)
        self.ends = numpy.flatnonzero(ends).astype("<i4")
        # The rest (empty text and a NUL the grammar never takes): by_first[bounds[b]:bounds[b + 1]]
        # start with byte b.
        kept = numpy.flatnonzero(~self.hidden & ~ends & (first > 0))
        self.by_first = kept[numpy.argsort(first[kept], kind="stable")].astype("<i4")
        self.bounds = numpy.searchsorted(first[self.by_first], numpy.arange(257))
        # A token of a byte alone is taken iff the grammar may go on with that byte, and then
        # only may tokens that start with it be: the probes.  A byte without one is always in.
        byte_of = {int(first[t]): t for t in kept[single[kept]][::-1]}
        self.probes = numpy.zeros(len(byte_of), dtype=_TOKEN_DATA)
        self.probes["id"] = list(byte_of.values())
        self.probe_bytes = numpy.array(list(byte_of), dtype="<i2")
        self.unprobed = numpy.ones(256, dtype=bool)
        self.unprobed[self.probe_bytes] = False
        self.probe_array = lc.llama_token_data_array()
        self.probe_array.data = self.probes.ctypes.data_as(ctypes.POINTER(lc.llama_token_data))

    def fill(self, logits: numpy.ndarray, ids: numpy.ndarray | None = None):
        """Every token, or only ids (none hidden)."""
        n = len(logits) if ids is None else len(ids)
        data = self.data[:n]
        if ids is None:
            data["id"], data["logit"] = self.all, logits
            data["logit"][self.hidden_ids] = -numpy.inf
        else:
            data["id"], data["logit"] = ids, logits[ids]
        data["p"] = 0.0
        a = self.array
        a.data = self.data.ctypes.data_as(ctypes.POINTER(lc.llama_token_data))
        a.size, a.selected, a.sorted = n, -1, False
        return a

    def open_to(self, grammar) -> numpy.ndarray:
        """The tokens the grammar may take now, as far as their first byte
        tells (every one it takes is among them), and the ends."""
        self.probes["logit"] = 0.0
        a = self.probe_array
        a.size, a.selected, a.sorted = len(self.probes), -1, False
        lc.llama_sampler_apply(grammar, ctypes.byref(a))
        taken = self.unprobed.copy()
        taken[self.probe_bytes[numpy.isfinite(self.probes["logit"])]] = True
        b = self.bounds
        return numpy.concatenate([self.by_first[b[byte]:b[byte + 1]] for byte in numpy.flatnonzero(taken)]
                                 + [self.ends])

    @property
    def held(self) -> numpy.ndarray:
        return self.data[:self.array.size]

    def pick(self, chain, greedy: object) -> int:
        """The token chain picks from what the candidates hold now; greedy:
        the first (lowest id) of highest logit, as llama.cpp's greedy would
        over the vocabulary in order."""
        if chain is greedy:
            held = self.held
            best = held["logit"] == held["logit"].max()
            return int(held["id"][best].min())
        lc.llama_sampler_apply(chain, ctypes.byref(self.array))
        return int(self.array.data[self.array.selected].id)


def _tiers(s: Constrained, logits: numpy.ndarray, ids: numpy.ndarray):
    """ids (or None: every token) in the order they are tried, each a set
    that holds the one before: the best few by logit, more, then all ids.
    Each is every id of logit at or above a threshold, read off a sample."""
    if not s.needed or len(ids) <= GRAMMAR_TIERS[0]:
        return [ids]
    values = logits[ids]
    step = max(1, len(ids) // 1024)
    sample = numpy.sort(values[::step])[::-1]
    out = []
    for size in GRAMMAR_TIERS:
        if size // step >= len(sample) - 1:
            break
        out.append(ids[values >= sample[size // step]])
    return out + [ids]


def _enough(s: Constrained, candidates: Candidates) -> bool:
    """Whether the chain's choice among the candidates held (after the
    grammar's apply) is its choice among all tokens.  Exact: any token left
    out has a logit below all of theirs, and a repeat penalty only lowers,
    so once `needed` allowed unpenalised tokens are held, the chain's
    choice is too."""
    held = candidates.held
    allowed = numpy.isfinite(held["logit"])
    if s.recent is not None:
        allowed &= ~numpy.isin(held["id"], numpy.fromiter(s.recent, dtype="<i4"))
    return allowed.sum() >= s.needed


def _repick(s: Constrained, logits: numpy.ndarray, candidates: Candidates) -> int:
    """The pick of the chain among the tokens the grammar allows."""
    ids = candidates.open_to(s.grammar)
    *best, _ = _tiers(s, logits, ids)
    for tier in best:
        lc.llama_sampler_apply(s.grammar, ctypes.byref(candidates.fill(logits, tier)))
        if _enough(s, candidates):
            return candidates.pick(s.chain, s.greedy)
    for tier in (ids, None):  # None: the whole vocabulary, should the first bytes have missed one
        lc.llama_sampler_apply(s.grammar, ctypes.byref(candidates.fill(logits, tier)))
        if numpy.isfinite(candidates.held["logit"]).any():
            return candidates.pick(s.chain, s.greedy)
    raise EngineError(errors.GRAMMAR_STUCK.format())


def sample(s: Constrained, logits: numpy.ndarray, candidates: Candidates, is_eog) -> int:
    """The next token under the grammar, accepted into it and the chain.
    EngineError when the grammar allows no token."""
    if s.chain is s.greedy:
        token = int(logits.argmax())
    else:
        candidates.fill(logits)
        token = candidates.pick(s.chain, s.greedy)
    if candidates.hidden[token] or not s.allows(token):
        token = _repick(s, logits, candidates)
    if not is_eog(token):  # an end is allowed only where the grammar may end: nothing to accept
        s.accept(token)
    if s.chain is not s.greedy:
        lc.llama_sampler_accept(s.chain, token)
    if s.recent is not None:
        s.recent.append(token)
    return token
