"""Every Rerror string that llamafs answers with: the toolkit's (styxfs/errors.py,
taken whole, so that `errors.PERM` and `errors.NO_SUCH_SESSION` come from one
module), then the node's and the coordinator's, in the toolkit's form and under
its rules: short, naming the problem, worded for 9pfuse's errno keywords (the
toolkit's docstring lists them; tests/test_errors.py checks every one).
`raise errors.PROMPT_TOO_LONG(what=…)`, the fields named as in the template.
"""

from __future__ import annotations

import errno as E

from styxfs.errors import *  # noqa: F403 - the toolkit's errors: the node answers them too
from styxfs.errors import ALL as GENERIC
from styxfs.errors import Error

# ---- the node -------------------------------------------------------------------------------------
NO_SUCH_SESSION = Error("no such session", E.ENOENT)
TOO_MANY_SESSIONS = Error("too many sessions: all busy, the cap is {cap}", E.EBUSY)
PROMPT_TOO_LONG = Error("prompt too long: {what}", E.E2BIG)
CONVERSATION_TOO_LONG = Error("conversation too long: {tokens} tokens > context {context}", E.E2BIG)
PROMPT_NOT_UTF8 = Error("invalid prompt: not UTF-8 (byte {at})", E.EINVAL)
PROMPT_SUBMITTED = Error("invalid write: prompt already submitted (open data again for the next turn)",
                         E.EINVAL)
NO_PROMPT = Error("invalid read: no prompt (write one before reading)", E.EINVAL)
NOT_LOADED = Error("model not loaded: no such model", E.ENOENT)
UNLOADED = Error("interrupted: the model was unloaded", E.EINTR)
NO_MODEL_FILE = Error("no such model file: {name}", E.ENOENT)
BAD_MODEL = Error("invalid model {name}: {why}", E.EINVAL)
NO_CONTEXT = Error("out of memory: no context of {tokens} tokens for {name}", E.ENOMEM)
DECODE_FAILED = Error("i/o error: llama_decode failed ({code})", E.EIO)
ENGINE_FAILED = Error("i/o error: internal error in the engine", E.EIO)
GENERATION_FAILED = Error("i/o error: generation failed", E.EIO)
LOAD_REFUSED = Error("load not permitted: {why}", E.EPERM)
NO_TEMPLATE = Error("invalid mode chat: the model has no chat template", E.EINVAL)
BAD_TEMPLATE = Error("invalid chat template: {why}", E.EINVAL)
BAD_CONVERSATION = Error("invalid conversation: {why}", E.EINVAL)
BAD_GRAMMAR = Error("bad grammar: invalid GBNF: {why}", E.EINVAL)
BAD_SCHEMA = Error("bad schema: invalid JSON schema: {why}", E.EINVAL)
GRAMMAR_STUCK = Error("bad grammar: invalid reply: no token can continue the grammar", E.EINVAL)
NOT_A_TOKEN = Error("invalid token: not a token id: {word}", E.EINVAL)
TOKEN_OUT_OF_RANGE = Error("invalid token: {token} is outside the vocabulary (0 to {last})", E.EINVAL)
TEXT_NOT_UTF8 = Error("invalid text: not UTF-8 (byte {at})", E.EINVAL)
ALREADY_ANSWERED = Error("invalid write: already answered (open the file again for another)", E.EINVAL)
NOTHING_TO_CONTINUE = Error("invalid read: no prompt, and no assistant message to continue", E.EINVAL)

# ---- the coordinator --------------------------------------------------------------------------------
NO_SUCH_NODE = Error("no such node: {node}", E.ENOENT)
NO_HEALTHY_NODE = Error("no healthy node: temporarily unavailable", E.EAGAIN)
NODE_FAILED = Error("i/o error: node {node}: {why}", E.EIO)
NO_NODE_ANSWERED = Error("i/o error: no node could answer", E.EIO)
TIMED_OUT = Error("request timed out", E.ETIMEDOUT)
SCALE_REFUSED = Error("scale not permitted: this coordinator starts no nodes (use deploy start)", E.EPERM)
SCALE_FAILED = Error("i/o error: scale: {why}", E.EIO)
NO_SUCH_MODEL = Error("no such model: {model} (there are: {models})", E.ENOENT)
MODEL_DOWN = Error("temporarily unavailable: no healthy node for model {model}", E.EAGAIN)
MODEL_CHOSEN = Error("invalid ctl request: model: a session's model is chosen before its first turn", E.EINVAL)

ALL = {**GENERIC, **{name: value for name, value in list(globals().items()) if isinstance(value, Error)}}
