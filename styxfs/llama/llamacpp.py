"""The real model (`model.Model`): a thin layer over llama-cpp-python's
low-level (ctypes) API — one model, one context with a sequence per slot, a
batch, samplers.  Used only from the engine's worker thread, except
`tokenize`, `piece`, `detokenize` and `check_grammar`, which read the vocabulary alone
(under the engine's lock against load and unload)."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Callable

import llama_cpp as lc
import numpy


from styxfs.errors import StyxError

from . import errors, llamacpp_grammar
from .model import EngineError, ModelInfo, ModelSettings
from .settings import DEFAULT_SEED, NODE, REPEAT_WINDOW, Sampling, gbnf_of

_backend_ready = False


# llama.cpp's log levels (ggml_log_level) as Python's, one down: its warnings
# ("control-looking token", "full-size SWA cache") are not ours to show a user
# by default, but `-v` shows them; its errors always show.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
_llama_log = logging.getLogger("llama.cpp")


def _log_through_logging() -> None:
    """llama.cpp's log, a line at a time, to the logger "llama.cpp"."""
    pending = {"text": b"", "level": logging.DEBUG}

    @lc.llama_log_callback
    def callback(level, text, user_data):
        if level != 5:  # GGML_LOG_LEVEL_CONT goes on with the line before
            pending["level"] = _LEVELS.get(level, logging.DEBUG)
        pending["text"] += text or b""
        while b"\n" in pending["text"]:
            line, pending["text"] = pending["text"].split(b"\n", 1)
            if line.strip():
                _llama_log.log(pending["level"], "%s", line.decode(errors="replace"))

    _log_through_logging.callback = callback  # keep it alive
    lc.llama_log_set(callback, ctypes.c_void_p(0))


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        _log_through_logging()
        lc.llama_backend_init()
        _backend_ready = True


GREEDY = object()  # the sampler of temperature 0 without a repeat penalty: the highest logit


class LlamaModel:
    def __init__(self, settings: ModelSettings, slots: int, progress: Callable[[float], None] | None = None):
        _init_backend()
        path = settings.path
        if not os.path.isfile(path):
            raise EngineError(errors.NO_MODEL_FILE.format(name=os.path.basename(path)))
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise EngineError(errors.BAD_MODEL.format(name=os.path.basename(path), why="not GGUF"))
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = settings.gpulayers
        mparams.use_extra_bufts = False  # the AMX path crashes (SIGILL) on these machines
        if progress is not None:
            @lc.llama_progress_callback
            def on_progress(fraction, user_data):
                progress(float(fraction))
                return True
            self._progress = on_progress  # keep it alive while loading
            mparams.progress_callback = on_progress
        self.model = lc.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise EngineError(errors.BAD_MODEL.format(name=os.path.basename(path), why="corrupt or unsupported"))
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        train_ctx = lc.llama_model_n_ctx_train(self.model)
        self.seq_context = settings.ctx or train_ctx
        self.batch_size = max(NODE["batch"].low, settings.batch)
        cparams = lc.llama_context_default_params()
        cparams.n_seq_max = slots
        # One KV buffer shared by every sequence: measured here with Gemma 3 270M,
        # 4 sessions decode at 84 tok/s together so, 48 with a stream per sequence.
        # Each session is held to ctx tokens, so slots x ctx cells always suffice.
        cparams.kv_unified = True
        cparams.n_ctx = self.seq_context * slots
        cparams.n_batch = self.batch_size
        cparams.n_ubatch = self.batch_size
        cparams.n_threads = settings.resolved_threads()
        cparams.n_threads_batch = settings.resolved_threads()
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise EngineError(errors.NO_CONTEXT.format(tokens=cparams.n_ctx, name=os.path.basename(path)))
        self.seq_context = lc.llama_n_ctx(self.ctx) // slots
        self.memory = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(self.batch_size, 0, 1)
        self.candidates: llamacpp_grammar.Candidates | None = None  # made for the first grammar
        self.byte_token: dict[int, int] | None = None  # a token of each byte, made when first needed
        # Each reply token's piece and end-of-generation flag, and an array over each row of
        # llama.cpp's logits, kept once made: right after a decode (caches cold) the ctypes
        # calls and the array took ~70 of the ~145 us a greedy token's Python took here.
        self.pieces: dict[int, bytes] = {}
        self.eog: dict[int, bool] = {}
        self.logit_rows: dict[int, numpy.ndarray] = {}
        self.info = ModelInfo(
            path=path,
            description=self._desc(),
            architecture=self._meta("general.architecture"),
            parameters=lc.llama_model_n_params(self.model),
            size=lc.llama_model_size(self.model),
            context=self.seq_context,
            train_context=train_ctx,
            vocabulary=self.n_vocab,
            quantisation=self._desc().rsplit(" ", 1)[-1],
            settings=settings,
            chat_template=settings.chat_template or self._chat_template(),
            bos_text=self._special_text(lc.llama_vocab_bos(self.vocab)),
            eos_text=self._special_text(lc.llama_vocab_eos(self.vocab)),
        )

    def _desc(self) -> str:
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.model, buf, len(buf))
        return buf.value.decode(errors="replace")

    def _meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode(errors="replace") if n >= 0 else ""

    def _chat_template(self) -> str | None:
        source = lc.llama_model_chat_template(self.model, None)
        return source.decode(errors="replace") if source else None

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode(errors="replace")

    def close(self) -> None:
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    # -- tokens ------------------------------------------------------------------

    def tokenize(self, text: bytes, add_special: bool) -> list[int]:
        room = len(text) + 8
        tokens = (lc.llama_token * room)()
        n = lc.llama_tokenize(self.vocab, text, len(text), tokens, room, add_special, True)
        if n < 0:
            room = -n
            tokens = (lc.llama_token * room)()
            n = lc.llama_tokenize(self.vocab, text, len(text), tokens, room, add_special, True)
        return list(tokens[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        if not special:
            known = self.pieces.get(token)
            if known is None:
                known = self.pieces[token] = self._piece(token, False)
            return known
        return self._piece(token, True)

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> bytes:
        """llama.cpp's inverse of tokenize: it drops the space a SentencePiece
        vocabulary put before the first word, so that the text comes back."""
        ids = (lc.llama_token * len(tokens))(*tokens)
        room = 8 * len(tokens) + 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(room)
            n = lc.llama_detokenize(self.vocab, ids, len(tokens), buf, room, False, True)
            if n >= 0:
                return buf.raw[:n]
            room = -n
        raise EngineError(errors.ENGINE_FAILED.format())

    def is_eog(self, token: int) -> bool:
        known = self.eog.get(token)
        if known is None:
            known = self.eog[token] = bool(lc.llama_vocab_is_eog(self.vocab, token))
        return known

    # -- sequences ---------------------------------------------------------------

    def trim_seq(self, seq: int, keep: int) -> None:
        lc.llama_memory_seq_rm(self.memory, seq, keep, -1)

    def clear_seq(self, seq: int) -> None:
        lc.llama_memory_seq_rm(self.memory, seq, 0, -1)

    def copy_seq(self, src: int, dst: int, count: int) -> None:
        lc.llama_memory_seq_cp(self.memory, src, dst, 0, count)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (sequence, token, position, wants logits)."""
        batch = self.batch
        for i, (seq, token, pos, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        result = lc.llama_decode(self.ctx, batch)
        if result != 0:
            raise EngineError(errors.DECODE_FAILED.format(code=result))

    # -- sampling ----------------------------------------------------------------

    def check_grammar(self, gbnf: str) -> None:
        lc.llama_sampler_free(llamacpp_grammar.parse(self.vocab, gbnf))

    def make_sampler(self, s: Sampling, history: list[int], said: bytes = b""):
        """A sampler chain; the repeat penalty sees the last REPEAT_WINDOW tokens
        of history.  Under a constraint, with its grammar, which has gone
        through `said` (the reply this turn continues)."""
        try:
            gbnf = gbnf_of(s)
        except StyxError as e:  # a schema the converter refuses (checked when it was set)
            raise EngineError(str(e)) from None
        if gbnf is None:
            return self._chain(s, history)
        grammar = llamacpp_grammar.parse(self.vocab, gbnf)
        chain = self._chain(s, history)
        needed = 1 if chain is GREEDY or s.temperature <= 0 else s.topk  # the best allowed tokens it picks among
        penalised = history[-REPEAT_WINDOW:] if s.repeatpenalty != 1.0 else None
        sampler = llamacpp_grammar.Constrained(chain, grammar, GREEDY, needed, penalised)
        try:
            sampler.advance(self._byte_tokens(said))
        except EngineError:
            self.free_sampler(sampler)
            raise
        if self.candidates is None:
            self.candidates = llamacpp_grammar.Candidates(self.vocab, self.n_vocab)
        return sampler

    def _byte_tokens(self, text: bytes) -> list[int]:
        """text a byte a token, for a grammar to go through exactly (tokenize
        may add a space before it, as SentencePiece does)."""
        if text and self.byte_token is None:
            self.byte_token = {}
            for token in range(self.n_vocab):  # not through the caches, kept for reply tokens
                piece = self._piece(token, False)
                if len(piece) == 1 and not lc.llama_vocab_is_eog(self.vocab, token):
                    self.byte_token.setdefault(piece[0], token)
        try:
            return [self.byte_token[b] for b in text]
        except KeyError:
            raise EngineError(errors.GRAMMAR_STUCK.format()) from None

    def _chain(self, s: Sampling, history: list[int]):
        if s.temperature <= 0 and s.repeatpenalty == 1.0:
            return GREEDY
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lambda sampler: lc.llama_sampler_chain_add(chain, sampler)  # noqa: E731
        add(lc.llama_sampler_init_penalties(self.n_vocab, REPEAT_WINDOW, s.repeatpenalty, 0.0, 0.0))
        if s.temperature <= 0:
            add(lc.llama_sampler_init_greedy())
        else:
            add(lc.llama_sampler_init_top_k(s.topk))
            add(lc.llama_sampler_init_top_p(s.topp, 1))
            add(lc.llama_sampler_init_min_p(s.minp, 1))
            add(lc.llama_sampler_init_temp(s.temperature))
            add(lc.llama_sampler_init_dist(DEFAULT_SEED if s.seed < 0 else s.seed))
        for token in history[-REPEAT_WINDOW:]:
            lc.llama_sampler_accept(chain, token)
        return chain

    def free_sampler(self, chain) -> None:
        if isinstance(chain, llamacpp_grammar.Constrained):
            chain.free()
            chain = chain.chain
        if chain is not GREEDY:
            lc.llama_sampler_free(chain)

    def sample(self, chain, batch_index: int) -> int:
        if isinstance(chain, llamacpp_grammar.Constrained):
            return llamacpp_grammar.sample(chain, self.logits(batch_index), self.candidates, self.is_eog)
        if chain is GREEDY:
            # The first highest logit, as llama.cpp's greedy sampler picks it, without
            # the chain's copy of every logit (262,144 for Gemma: 0.7 ms against 0.07).
            return int(self.logits(batch_index).argmax())
        return lc.llama_sampler_sample(chain, self.ctx, batch_index)

    def logits(self, batch_index: int) -> numpy.ndarray:
        """The logits of a row of the last decode: a view of llama.cpp's own
        buffer, made once for each address (a row's address stays while the
        buffer does; a new buffer has new rows, and the views are made again)."""
        pointer = lc.llama_get_logits_ith(self.ctx, batch_index)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if not address:
            raise EngineError(errors.ENGINE_FAILED.format())
        row = self.logit_rows.get(address)
        if row is None:
            if len(self.logit_rows) >= 4 * self.batch_size:  # rows of buffers gone
                self.logit_rows.clear()
            row = self.logit_rows[address] = numpy.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        return row
