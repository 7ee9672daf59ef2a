"""Chat: a conversation as messages, rendered with the model's chat template,
and the text form of a conversation (the session's `conversation` file).

Templates are untrusted input (they come with the model file): they are
rendered in Jinja's immutable sandbox, as llama-cpp-python renders them,
with bounds on the text they make and the time they take.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from datetime import datetime

from . import errors
from .settings import MAX_RENDER_BYTES, MAX_RENDER_SECONDS

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    text: str
    dropped: bool = False  # left out of what the model sees, to fit the context


@functools.lru_cache(maxsize=8)
def compiled(source: str, bos: str = "", eos: str = "") -> Template:
    """The template of source, compiled at its first use and shared after:
    compiling one takes milliseconds on the trio thread, each turn of
    every chat session; rendering it, a fraction of one."""
    return Template(source, bos, eos)


class Template:
    """A chat template, compiled once; render() is bounded (and may run in
    several threads at once, as a compiled Jinja template may)."""

    def __init__(self, source: str, bos: str = "", eos: str = ""):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source, self.bos, self.eos = source, bos, eos
        env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise errors.BAD_TEMPLATE(why=f"syntax: {e}") from None

    def render(self, messages: list[Message], *, add_generation_prompt: bool = True,
               continue_final: bool = False) -> str:
        """The conversation as the model reads it.  continue_final: the last
        message (the assistant's) is to be continued: the text stops where
        that message's text does."""

        def raise_exception(message):
            raise errors.BAD_TEMPLATE(why=f"it raised: {message}")

        context = dict(messages=[{"role": m.role, "content": m.text} for m in messages],
                       bos_token=self.bos, eos_token=self.eos, raise_exception=raise_exception,
                       add_generation_prompt=add_generation_prompt and not continue_final,
                       strftime_now=lambda f: datetime.now().strftime(f))
        out, size = [], 0
        deadline = time.monotonic() + MAX_RENDER_SECONDS
        try:
            for piece in self.template.generate(**context):
                out.append(piece)
                size += len(piece)
                if size > MAX_RENDER_BYTES:
                    raise errors.BAD_TEMPLATE(why=f"it made over {MAX_RENDER_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise errors.BAD_TEMPLATE(why=f"it ran over {MAX_RENDER_SECONDS:g} s")
        except errors.StyxError:
            raise
        except Exception as e:  # noqa: BLE001 - a template can fail in any way
            raise errors.BAD_TEMPLATE(why=f"{type(e).__name__}: {e}") from None
        text = "".join(out)
        if continue_final:
            final = messages[-1].text
            at = text.rfind(final)
            if at < 0:
                raise errors.BAD_TEMPLATE(why="the message to continue is not in what it made")
            text = text[: at + len(final)]
        return text


# ---- the conversation file: one record a message ------------------------------------------------
#
#     ROLE LENGTH [dropped]\n
#     LENGTH bytes of text\n
#
# readable with cat, exact for any text.  Written to a session, it gives the
# session that conversation.


def format_records(messages: list[Message]) -> bytes:
    out = bytearray()
    for m in messages:
        text = m.text.encode()
        out += f"{m.role} {len(text)}{' dropped' if m.dropped else ''}\n".encode() + text + b"\n"
    return bytes(out)


def parse_records(data: bytes) -> list[Message]:
    messages, at = [], 0
    while at < len(data):
        end = data.find(b"\n", at)
        if end < 0:
            raise errors.BAD_CONVERSATION(why=f"a record head without its newline at byte {at}")
        head = data[at:end].decode(errors="replace").split()
        if len(head) not in (2, 3) or head[0] not in ROLES or not head[1].isdigit() \
                or (len(head) == 3 and head[2] != "dropped"):
            raise errors.BAD_CONVERSATION(why=f"at byte {at}: want 'ROLE LENGTH', ROLE one of {' '.join(ROLES)}")
        size = int(head[1])
        body = data[end + 1 : end + 1 + size]
        if len(body) != size or data[end + 1 + size : end + 2 + size] != b"\n":
            raise errors.BAD_CONVERSATION(why=f"at byte {at}: the text is not {size} bytes and a newline")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise errors.BAD_CONVERSATION(why=f"at byte {at}: not UTF-8") from None
        messages.append(Message(head[0], text, len(head) == 3))
        at = end + 2 + size
    return messages
