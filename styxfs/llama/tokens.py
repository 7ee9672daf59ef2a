"""The root's tokenize, tokenizespecial and detokenize files: each open is
a private one-shot channel, as the root data is.  Write the text (any number
of writes), then read the answer on the same fid:

    tokenize         the text's tokens, a line each: the id, then its piece
                     (its text) quoted as tokenize(2) reads it back
    tokenizespecial  the same, with the tokens the model adds around a
                     prompt (its begin-of-text token, for most)
    detokenize       write ids separated by white space; read their text

Special tokens written as text (`<|im_start|>`) are read as themselves, as
llama-server reads them.  A piece is the token's bytes as they are: a byte
token may hold part of a character, so only the pieces joined are UTF-8.

A node answers with its engine; a coordinator hands the text to a healthy
node's file of the same name (RootBackend.tokens)."""

from __future__ import annotations

import trio

from styxfs.errors import StyxError
from styxfs.tree import Caller, Handle, quote, split_lines, tokenize

from . import errors
from .model import EngineError

FILES = ("tokenize", "tokenizespecial", "detokenize")
MAX_ID_DIGITS = 10  # a token id is an int32: a longer word is none


class TokenChannel(Handle):
    """Writes are gathered; the first read asks the root backend for the
    answer, and reads stream it from there (offsets count the text written
    too, as on the root data: the answer is read from where the reads are)."""

    def __init__(self, entry, caller: Caller):
        super().__init__(entry)
        self.tree = entry.tree
        self.written = bytearray()
        self.answer: bytes | None = None
        self.position = 0

    async def write(self, offset: int, data: bytes) -> int:
        if self.answer is not None:
            raise errors.ALREADY_ANSWERED()
        if len(self.written) + len(data) > self.tree.max_prompt_bytes:
            raise errors.PROMPT_TOO_LONG(what=f"over {self.tree.max_prompt_bytes} bytes")
        self.written += data
        return len(data)

    async def read(self, offset: int, count: int) -> bytes:
        if self.answer is None:
            self.answer = await self.tree.root_backend.tokens(self.entry.name, bytes(self.written))
        data = self.answer[self.position:self.position + count]
        self.position += len(data)
        return data


# ---- the files' text ----------------------------------------------------------------------------


def format_pieces(tokens: list[int], pieces: list[bytes]) -> bytes:
    """A line a token: its id and its piece, quoted (a piece's bytes kept as they are)."""
    return b"".join(f"{token} {quote(piece.decode(errors='surrogateescape'))}\n".encode(errors="surrogateescape")
                    for token, piece in zip(tokens, pieces))


def parse_pieces(data: bytes) -> list[tuple[int, bytes]]:
    """A tokenize file's answer read back: (id, piece) a line."""
    out = []
    for line in split_lines(data.decode(errors="surrogateescape")):
        if words := tokenize(line):
            out.append((int(words[0]), words[1].encode(errors="surrogateescape")))
    return out


def parse_ids(data: bytes) -> list[int]:
    """Token ids separated by white space, each a number, else a clear error."""
    ids = []
    for word in data.split():
        try:
            if len(word) > MAX_ID_DIGITS + 1:
                raise ValueError
            ids.append(int(word))
        except ValueError:
            shown = word[:24].decode(errors="replace") + ("..." if len(word) > 24 else "")
            raise errors.NOT_A_TOKEN(word=shown) from None
    return ids


async def engine_answer(engine, name: str, data: bytes) -> bytes:
    """A node's answer: what the file `name` gives for the text written."""
    if name == "detokenize":
        ids = parse_ids(data)
    else:
        try:
            data.decode()
        except UnicodeDecodeError as e:
            raise errors.TEXT_NOT_UTF8(at=e.start) from None

    def answer() -> bytes:  # in a thread: a long text takes a while
        with engine.vocabulary() as model:
            if name != "detokenize":
                tokens = model.tokenize(data, add_special=name == "tokenizespecial")
                return format_pieces(tokens, [model.piece(token, special=True) for token in tokens])
            last = model.info.vocabulary - 1
            if outside := [token for token in ids if not 0 <= token <= last]:
                raise EngineError(errors.TOKEN_OUT_OF_RANGE.format(token=outside[0], last=last))
            return model.detokenize(ids)

    try:
        return await trio.to_thread.run_sync(answer)
    except EngineError as e:
        raise StyxError(str(e)) from None
