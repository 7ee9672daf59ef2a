"""The model interface the engine is given, and the types both sides share.

The engine schedules; a `Model` computes.  `llamacpp.LlamaModel` is the
real one (llama.cpp through llama-cpp-python); tests give the engine a fake
one, so that the scheduler is tested in milliseconds without llama.cpp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol

from .settings import NODE, Sampling


class EngineError(Exception):
    """A request the engine or the model refuses; its text is the Rerror."""


@dataclass
class ModelSettings:
    path: str
    ctx: int = NODE["ctx"].default
    gpulayers: int = NODE["gpulayers"].default
    threads: int = NODE["threads"].default  # 0: all cores
    batch: int = NODE["batch"].default
    chat_template: str | None = None  # overrides the model's own (serve --chat-template-file)
    name: str = ""  # what the node calls it (serve --model NAME); "": the file's stem

    @property
    def model_name(self) -> str:
        return self.name or os.path.splitext(os.path.basename(self.path))[0]

    def resolved_threads(self) -> int:
        return self.threads or max(1, os.cpu_count() or 1)


@dataclass
class ModelInfo:
    path: str
    description: str
    architecture: str
    parameters: int
    size: int
    context: int
    train_context: int
    vocabulary: int
    quantisation: str
    settings: ModelSettings
    chat_template: str | None = None  # Jinja source: the settings' override, else the model's
    bos_text: str = ""  # the begin and end tokens as text, for the template
    eos_text: str = ""


class Model(Protocol):
    """One loaded model with a context of `slots` sequences.  Called only
    from the engine's worker thread, except `tokenize`, `piece`, `detokenize`
    and `check_grammar`."""

    info: ModelInfo
    batch_size: int  # tokens one decode may hold
    seq_context: int  # tokens one sequence may hold

    def close(self) -> None: ...

    def tokenize(self, text: bytes, add_special: bool) -> list[int]: ...

    def piece(self, token: int, special: bool = False) -> bytes:
        """A token's text; a control token's is empty unless special."""

    def detokenize(self, tokens: list[int]) -> bytes:
        """The text of tokens, as tokenize read it (control tokens shown)."""

    def is_eog(self, token: int) -> bool: ...

    def trim_seq(self, seq: int, keep: int) -> None:
        """Forget what sequence seq holds from position keep on."""

    def clear_seq(self, seq: int) -> None: ...

    def copy_seq(self, src: int, dst: int, count: int) -> None:
        """dst holds the first count tokens of src too (sharing the cells)."""

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One step: (sequence, token, position, wants logits) entries."""

    def make_sampler(self, sampling: Sampling, history: list[int], said: bytes = b"") -> object:
        """The sampler of a turn (with the grammar of its constraint, which
        has gone through `said`, the reply it continues); EngineError if the
        grammar is refused."""

    def check_grammar(self, gbnf: str) -> None:
        """EngineError (`bad grammar: ...`) unless gbnf parses against the
        vocabulary.  Called from any thread, as `tokenize`."""

    def free_sampler(self, sampler: object) -> None: ...

    def sample(self, sampler: object, batch_index: int) -> int:
        """The next token from the logits of entry batch_index of the last
        decode; EngineError when the grammar allows none."""


# open_model(settings, slots, progress) -> Model; raises EngineError.
ModelOpener = Callable[[ModelSettings, int, "Callable[[float], None] | None"], Model]
