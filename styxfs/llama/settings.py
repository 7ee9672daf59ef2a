"""Every default and limit of a node, in one place.

Two tables.  `NODE` holds the node's options (context, batch, slots, caps,
timeouts): the node, its command line, the engine and the deployment config
all read them here.  `SESSION` holds a session's settings (name, kind,
range, default): `N/ctl`, `N/params`, the root ctl's `defaults` and the
coordinator's forwarding all work from it, so a setting added here reaches
every one of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from styxfs import dial
from styxfs import errors

from . import errors as llama_errors
from styxfs.tree import parse_number, quote

DEFAULT_LISTEN = dial.DEFAULT_ADDRESS  # tcp!127.0.0.1!5640
HTTP_PORT = 9640  # HTTP (metrics, status, dashboard), beside 9P's port

# A coordinator's (the deployment config's network.requestTimeout overrides the first).
REQUEST_TIMEOUT = 60.0  # seconds a forwarded turn or proxied request may take, failovers included
# A machine that vanishes, or a link that drops, does not refuse: only timeouts tell (network.connectTimeout
# and network.healthTimeout override these).
CONNECT_TIMEOUT = 5.0  # seconds to connect to a node and attach
HEALTH_TIMEOUT = (2.0, 10.0)  # a health check's limit, by default the check interval kept within these
SPARES = 4  # sessions made ahead on each node: a new session's first turn need not wait to make one
DNS_TIMEOUT = 2.0  # seconds a lookup of a node entry's DNS record may take (coordinator/discovery.py)
# A node process the deployment started that exits unasked is started again (network.restart):
RESTART_POLICIES = ("on-failure", "always", "never")  # the first is the default, as systemd's Restart=
RESTART_FIRST = 1.0  # seconds before the first restart; doubled at each crash after it ...
RESTART_CAP = 60.0  # ... up to this; a node crashing at the cap is `failed`, and retried at the cap
RESTART_RESET = 60.0  # seconds up after which a crash counts as the first again
RESTART_LOG_LINES = 5  # lines of a crashed node's log in its error


@dataclass(frozen=True)
class Limit:
    """A numeric option: its default and the range it may take."""

    default: Any
    low: float
    high: float


NODE = {
    "ctx": Limit(2048, 16, 1 << 20),  # tokens of context per session
    "gpulayers": Limit(0, 0, 10000),
    "threads": Limit(0, 0, 1024),  # 0: all cores
    "batch": Limit(512, 16, 1 << 16),  # tokens in one llama_decode at most
    "slots": Limit(4, 1, 256),  # sessions decoded together
    "maxsessions": Limit(256, 1, 1_000_000),
    "sessiontimeout": Limit(600.0, 0.1, 86_400.0),  # seconds an idle session lives
    "maxconnections": Limit(1000, 1, 1_000_000),
    "prefixcache": Limit(4096, 0, 1 << 24),  # tokens of closed sessions' prefixes kept for reuse
}

MAX_PROMPT_BYTES = 1 << 20
DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed
REPEAT_WINDOW = 64  # tokens of history the repeat penalty sees
# tokens: a shorter common beginning (a BOS, a template's header) is not worth sharing a sequence's cells
MIN_SHARED = 8
ENGINE_STOP_SECONDS = 30.0  # the engine's worker is waited for this long when the node stops
# A reply's next tokens wait this long at most to reach the trio side with later ones: a
# wake-up of the trio thread each step took a core from llama.cpp's threads (2 cores, one
# session, SmolLM2: 1.15 times the tokens a second with 25 ms; readers wake every 50 ms).
ENGINE_REPORT_INTERVAL = 0.025
STREAM_INTERVAL = 0.05  # seconds between wake-ups of a reply's readers while it streams
# A chat template (untrusted: it comes with the model file) may make this much text, in this long.
MAX_RENDER_BYTES = 4 << 20
MAX_RENDER_SECONDS = 2.0
# A grammar or schema is untrusted input: llama.cpp's parser and sampler get at most this much.
MAX_GRAMMAR_BYTES = 256 << 10
MAX_GRAMMAR_RULES = 2000  # rules of the GBNF (a schema's after conversion)
# Speculative decoding (speculate.py): drafts of a turn's own n-grams.
SPECULATE_AUTO = 32  # tokens a greedy turn drafts at most under `speculate auto` (as far as pays)
SPECULATE_MOST = 64  # the largest N of `speculate N`
SPECULATE_PRIOR = 0.9  # the rate of drafted tokens kept, assumed before a turn has tried any (long matches)
# ... and by the length of the match a draft follows, until the node has seen drafts after
# such matches kept or not: (shortest match, rate), longest last.  On bench_speculate.py's
# replies (SmolLM2), the token after a match of 5-7 tokens was the one that followed it
# 0.8-0.9 of the time, after 12-31 0.9-0.96, after 32 or more (a reply in a loop) always.
SPECULATE_MATCH_PRIORS = ((2, 0.6), (5, 0.8), (8, 0.85), (12, 0.9), (16, 0.95), (32, 0.97))
# ... for every length, after an n-gram that was followed by different tokens at different
# places: there the token after a match under 12 tokens was the one drafted 0.37-0.52 of the
# time, against 0.88-0.90 after one always followed alike (two sets of plain questions).
SPECULATE_MIXED_PRIOR = 0.5
# The latest tokens of a conversation a turn indexes for its drafts when it starts: indexing
# takes ~5 ms a thousand tokens on the engine's thread, which every session's step waits for.
SPECULATE_WINDOW = 8192
# What a user's earlier turns said, for drafts where a turn's own tokens have no match:
# n-grams kept a user (the latest), tokens kept after each, and users kept (the latest).
SPECULATE_MEMORY_NGRAMS = 1 << 14  # about 2,700 tokens' n-grams: ~2 MB
SPECULATE_MEMORY_FOLLOW = 8
SPECULATE_MEMORY_USERS = 8
# What each token more adds to a step, in one-token steps, until the node has measured it
# (SmolLM2 135M, 2 threads: 0.5-0.8 for the first few, 0.45-0.5 past 8; Gemma 3 270M, whose
# output matrix is most of a step: 0.2).
SPECULATE_TOKEN_COST = 0.5
# About how many tokens of highest logit a pick the grammar refused is looked for among again, in turn.
GRAMMAR_TIERS = (64, 2048)


# ---- a session's settings -----------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One session setting.  kind is int or float (in [low, high]); str, one
    of `choices`; tuple, a repeatable string (`stop`: a bare verb clears the
    list); or bytes, the raw rest of the line, no quotes processed (`system`:
    a bare verb clears it)."""

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def usage(self) -> str:
        if self.choices:
            return "|".join(self.choices + (("N",) if self.low is not None else ()))
        return {tuple: "[STRING]", bytes: "[TEXT]"}.get(self.kind, "VALUE")

    @property
    def raw(self) -> bool:
        """Its argument is the rest of the line as written."""
        return self.kind is bytes


SESSION = {s.name: s for s in (
    Setting("temperature", float, 0.8, 0.0, 100.0),
    Setting("topk", int, 40, 0, 1_000_000),
    Setting("topp", float, 0.95, 0.0, 1.0),
    Setting("minp", float, 0.05, 0.0, 1.0),
    Setting("seed", int, -1, -1, 0xFFFFFFFE),
    Setting("maxtokens", int, 256, 1, 1_000_000),
    Setting("repeatpenalty", float, 1.1, 0.0, 100.0),
    Setting("stop", tuple, ()),
    # auto: chat when the model has a chat template, else raw completion
    Setting("mode", str, "auto", choices=("auto", "chat", "raw")),
    Setting("system", bytes, b""),  # the system prompt of a chat
    # a turn that would not fit: drop the oldest turns, or refuse it
    Setting("overflow", str, "drop", choices=("drop", "refuse")),
    # The constraint on replies (below), one at a time: GBNF, or a JSON schema made into one.
    Setting("grammar", bytes, b""),  # a bare `grammar` clears either
    Setting("schema", bytes, b""),
    # Drafts from the session's own n-grams (speculate.py): auto (greedy turns without a
    # constraint), off, or N tokens at most for any turn.
    Setting("speculate", str, "auto", 1, SPECULATE_MOST, choices=("auto", "off")),
)}
CONSTRAINTS = ("grammar", "schema")


class Sampling:
    """A session's settings: one attribute per row of SESSION."""

    __slots__ = tuple(SESSION)

    def __init__(self, **values: Any):
        for setting in SESSION.values():
            setattr(self, setting.name, values.pop(setting.name, setting.default))
        if values:
            raise TypeError(f"no such setting: {', '.join(values)}")

    def copy(self) -> "Sampling":
        return Sampling(**{name: getattr(self, name) for name in SESSION})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sampling) and all(getattr(self, n) == getattr(other, n) for n in SESSION)

    def __repr__(self) -> str:
        return "Sampling(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in SESSION) + ")"

    def set(self, verb: str, args: list[str]) -> None:
        """One verb of N/ctl or `defaults`, checked: a clear error names it."""
        setting = SESSION.get(verb)
        if setting is None:
            raise errors.BAD_CTL(why=f"{verb}: unknown setting")
        if setting.kind is tuple:
            value = getattr(self, verb)
            setattr(self, verb, value + (" ".join(args),) if args else ())
            return
        if setting.raw:
            value = " ".join(args).encode()  # one raw argument, or (by defaults) words
            if verb in CONSTRAINTS:
                constrain(self, verb, value)
                return
            setattr(self, verb, value)
            return
        if len(args) != 1:
            raise errors.BAD_CTL(why=f"usage: {verb} {setting.usage}")
        if setting.choices:
            if args[0] not in setting.choices and setting.low is not None and args[0].lstrip("-").isdigit():
                setattr(self, verb, str(parse_number(verb, args[0], int, setting.low, setting.high)))
                return
            if args[0] not in setting.choices:
                words = setting.choices + ((f"a number in [{setting.low}, {setting.high}]",) if setting.low else ())
                raise errors.BAD_CTL(why=f"{verb}: {args[0]!r}: use {' or '.join(words)}")
            setattr(self, verb, args[0])
            return
        setattr(self, verb, parse_number(verb, args[0], setting.kind, setting.low, setting.high))

    def lines(self) -> str:
        """`key value` lines, as N/params shows them."""
        out = []
        for name, setting in SESSION.items():
            value = getattr(self, name)
            if setting.kind is tuple:
                out += [f"{name} {quote(v)}" for v in value]
            elif name in CONSTRAINTS:
                if name == "grammar":
                    out.append(f"constraint {constraint_name(self)}")
            elif setting.raw:
                if value:  # the first line: a longer one is in the session's own file
                    out.append(f"{name} {value.decode(errors='replace').splitlines()[0]}")
            else:
                out.append(f"{name} {value}")
        return "\n".join(out) + "\n"

    def ctl_text(self) -> str:
        """ctl commands that give another session exactly these settings
        (a list is cleared, then set): what a coordinator sends its node."""
        out = []
        for name, setting in SESSION.items():
            value = getattr(self, name)
            if setting.kind is tuple:
                out.append(name)
                out += [f"{name} {quote(v)}" for v in value]
            elif setting.raw:
                # Text goes in the session's file of that name (raw_settings): a ctl line
                # must fit one 9P message.  An empty one is cleared here (a bare verb),
                # but for a bare `grammar` beside a schema, which would clear the schema.
                if not value and not (name == "grammar" and self.schema):
                    out.append(name)
            else:
                out.append(f"{name} {value}")
        return "\n".join(out) + "\n"

    def raw_settings(self) -> dict[str, bytes]:
        """The text settings, which go to a node through the session's file
        of that name (a ctl line clears them when empty)."""
        return {name: getattr(self, name) for name, s in SESSION.items() if s.raw}

    def file_writes(self, known: dict[str, bytes]) -> list[tuple[str, bytes]]:
        """What to write to a session's files, which hold `known`, to give it
        these texts; `known` is updated.  A constraint set goes first: it
        clears the other one, as a node's file does."""
        writes = []
        texts = self.raw_settings()
        for name in sorted(texts, key=lambda name: not (name in CONSTRAINTS and texts[name])):
            value = texts[name]
            if known.get(name, b"") != value:
                writes.append((name, value))
                known[name] = value
                if value and name in CONSTRAINTS:
                    known.update({other: b"" for other in CONSTRAINTS if other != name})
        return writes


# ---- a session's constraint on replies --------------------------------------------------
# A GBNF grammar, or a JSON schema made into one (llama-cpp-python's converter,
# as llama-server's): the text's checks here, the parse against a vocabulary
# the model's (`Model.check_grammar`).

JSON_OBJECT = b'{"type": "object"}'  # ctl `json`: any JSON object (response_format json_object)
RULE = re.compile(r"^\s*[A-Za-z0-9_-]+\s*::=", re.MULTILINE)


def constrain(sampling, verb: str, text: bytes) -> None:
    """Give sampling the grammar or schema text, checked; either one clears
    the other.  Empty: a bare `grammar` clears both, a bare `schema` the schema."""
    if not text:
        sampling.schema = b""
        if verb == "grammar":
            sampling.grammar = b""
        return
    if verb == "grammar":
        check_gbnf(text, llama_errors.BAD_GRAMMAR)
    else:
        schema_gbnf(text)
    sampling.grammar, sampling.schema = (text, b"") if verb == "grammar" else (b"", text)


def check_gbnf(text: bytes, error) -> str:
    if len(text) > MAX_GRAMMAR_BYTES:
        raise error(why=f"too large: {len(text)} bytes > {MAX_GRAMMAR_BYTES}")
    try:
        gbnf = text.decode()
    except UnicodeDecodeError as e:
        raise error(why=f"not UTF-8 (byte {e.start})") from None
    rules = len(RULE.findall(gbnf))
    if rules > MAX_GRAMMAR_RULES:
        raise error(why=f"too many rules: {rules} > {MAX_GRAMMAR_RULES}")
    if "\0" in gbnf:
        raise error(why="a NUL byte")
    return gbnf


@lru_cache(maxsize=64)
def schema_gbnf(text: bytes) -> str:
    """The GBNF of a JSON schema; any failure of the converter is `bad schema: ...`."""
    if len(text) > MAX_GRAMMAR_BYTES:
        raise llama_errors.BAD_SCHEMA(why=f"too large: {len(text)} bytes > {MAX_GRAMMAR_BYTES}")
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: PLC0415 - loads llama.cpp, once needed

    try:
        json.loads(text)
        gbnf = json_schema_to_gbnf(text.decode())
    except Exception as e:  # noqa: BLE001 - the converter raises anything at all
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise llama_errors.BAD_SCHEMA(why=why[:200]) from None
    return check_gbnf(gbnf.encode(), llama_errors.BAD_SCHEMA)


def gbnf_of(sampling) -> str | None:
    """The grammar the sampler is to follow, or None (no constraint)."""
    if sampling.grammar:
        return sampling.grammar.decode()
    if sampling.schema:
        return schema_gbnf(sampling.schema)
    return None


def constraint_name(sampling) -> str:
    if sampling.grammar:
        return "grammar"
    if sampling.schema:
        return "json" if sampling.schema == JSON_OBJECT else "schema"
    return "none"
