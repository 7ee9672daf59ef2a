"""Every default and limit of a node, in one place.

Two tables.  `NODE` holds the node's options (context, batch, slots, caps,
timeouts): the node, its command line, the engine and the deployment config
all read them here.  `SESSION` holds a session's settings (name, kind,
range, default): `N/ctl`, `N/params`, the root ctl's `defaults` and the
coordinator's forwarding all work from it, so a setting added here reaches
every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from styxfs import dial
from styxfs import errors
from styxfs.tree import parse_number, quote

DEFAULT_LISTEN = dial.DEFAULT_ADDRESS  # tcp!127.0.0.1!5640
HTTP_PORT = 9640  # HTTP (metrics, status, dashboard), beside 9P's port

# A coordinator's (the deployment config's network.requestTimeout overrides the first).
REQUEST_TIMEOUT = 60.0  # seconds a forwarded turn or proxied request may take, failovers included
SPARES = 4  # sessions made ahead on each node: a new session's first turn need not wait to make one


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
STREAM_INTERVAL = 0.05  # seconds between wake-ups of a reply's readers while it streams
# A chat template (untrusted: it comes with the model file) may make this much text, in this long.
MAX_RENDER_BYTES = 4 << 20
MAX_RENDER_SECONDS = 2.0


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
            return "|".join(self.choices)
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
)}


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
            setattr(self, verb, " ".join(args).encode())  # one raw argument, or (by defaults) words
            return
        if len(args) != 1:
            raise errors.BAD_CTL(why=f"usage: {verb} {setting.usage}")
        if setting.choices:
            if args[0] not in setting.choices:
                raise errors.BAD_CTL(why=f"{verb}: {args[0]!r}: use {' or '.join(setting.choices)}")
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
                if b"\n" not in value:  # else the session's own file carries it (raw_settings)
                    out.append(f"{name} {value.decode()}".rstrip())
            else:
                out.append(f"{name} {value}")
        return "\n".join(out) + "\n"

    def raw_settings(self) -> dict[str, bytes]:
        """The text settings that a ctl line cannot carry (more than a line):
        what goes to a node through the session's file of that name."""
        return {name: getattr(self, name) for name, s in SESSION.items()
                if s.raw and b"\n" in getattr(self, name)}
