"""The OpenAI-compatible API's requests, as pydantic models: what a body
may hold, checked by pydantic, never by hand.  Ranges come from the session
settings table (settings.SESSION), so the API refuses exactly what N/ctl
would.  Fields the tree cannot honour, and whose silent omission would give
a wrong answer, are refused with an error that names them; other unknown
fields are ignored, as OpenAI-compatible servers do."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .settings import JSON_OBJECT, SESSION

__all__ = ["ChatRequest", "CompletionRequest", "TokenizeRequest", "DetokenizeRequest", "ValidationError",
           "describe"]


def ranged(name: str, kind: type) -> Any:
    """A session setting's type with its range from the settings table."""
    setting = SESSION[name]
    return Annotated[kind, Field(ge=setting.low, le=setting.high)]


# llama-server's defaults on this API, not the node's session defaults.
DEFAULTS = {"temperature": 0.8, "topk": 40, "topp": 0.95, "minp": 0.05, "repeatpenalty": 1.0, "seed": -1}
NO_CAP = int(SESSION["maxtokens"].high)  # no cap but the context

Stop = Annotated[str, Field(min_length=1)]


class Request(BaseModel):
    """What chat and completions have in common: sampling and refusals."""

    model_config = ConfigDict(extra="ignore")
    # Fields refused unless they hold one of the values shown: ignoring them
    # would give a wrong answer.  field -> (the values taken, why not others)
    REFUSED: ClassVar[dict[str, tuple[tuple, str]]] = {
        "n": ((1,), "only one choice (n=1) is supported"),
    }

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: ranged("maxtokens", int) | None = None
    temperature: ranged("temperature", float) = DEFAULTS["temperature"]
    top_k: ranged("topk", int) = DEFAULTS["topk"]
    top_p: ranged("topp", float) = DEFAULTS["topp"]
    min_p: ranged("minp", float) = DEFAULTS["minp"]
    repeat_penalty: ranged("repeatpenalty", float) = DEFAULTS["repeatpenalty"]
    seed: ranged("seed", int) = DEFAULTS["seed"]
    stop: Stop | list[Stop] | None = None
    n: int = 1
    grammar: str | None = None  # llama-server's: GBNF
    json_schema: dict[str, Any] | None = None  # llama-server's
    response_format: ResponseFormat | None = None  # OpenAI's

    @field_validator("*")
    @classmethod
    def not_refused(cls, value: Any, info: ValidationInfo) -> Any:
        taken, why = cls.REFUSED.get(info.field_name, ((value,), ""))
        if value not in taken:
            raise ValueError(why)
        return value

    @property
    def cap(self) -> int:
        return self.max_tokens or NO_CAP

    @property
    def include_usage(self) -> bool:
        """A streamed reply ends with a usage chunk unless asked not to (as llama-server does)."""
        return self.stream_options is None or self.stream_options.include_usage is not False

    @model_validator(mode="after")
    def one_shape(self) -> "Request":
        self.constraint()
        return self

    def constraint(self) -> tuple[str, bytes] | None:
        """The session file (grammar or schema) and text this request's shape asks for."""
        asked = [(name, text) for name, text in [
            ("grammar", self.grammar.encode() if self.grammar else None),
            ("schema", json.dumps(self.json_schema).encode() if self.json_schema is not None else None),
            ("schema", self.response_format.schema_text() if self.response_format else None)] if text]
        if len(asked) > 1:
            raise ValueError("grammar, json_schema and response_format: give one of them")
        return asked[0] if asked else None

    def settings(self) -> dict[str, Any]:
        """The session settings (SESSION's names) this request asks for."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return {"temperature": self.temperature, "topk": self.top_k, "topp": self.top_p, "minp": self.min_p,
                "seed": self.seed, "maxtokens": self.cap, "repeatpenalty": self.repeat_penalty,
                "stop": tuple(stop)}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text, any JSON object (llama-server's optional
    `schema` beside it), or a JSON schema."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    json_schema: JsonSchemaFormat | None = None

    def schema_text(self) -> bytes | None:
        if self.type == "json_object":
            return json.dumps(self.schema_).encode() if self.schema_ is not None else JSON_OBJECT
        if self.type == "json_schema":
            if self.json_schema is None:
                raise ValueError('response_format: type json_schema needs {"json_schema": {"schema": ...}}')
            return json.dumps(self.json_schema.schema_).encode()
        return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    @property
    def kind(self) -> str:
        return "system" if self.role == "developer" else self.role


class ChatRequest(Request):
    REFUSED = {**Request.REFUSED, "tools": ((None, []), "tool calls are not supported"),
               "functions": ((None, []), "tool calls are not supported")}

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: ranged("maxtokens", int) | None = None
    tools: Any = None
    functions: Any = None

    @field_validator("messages")
    @classmethod
    def a_turn_to_answer(cls, messages: list[Message]) -> list[Message]:
        last = messages[-1].kind
        if last == "system":
            raise ValueError("the last message must be the user's (or the assistant's, to be continued)")
        if last == "assistant" and len(messages) > 1 and messages[-2].kind == "assistant":
            raise ValueError("the conversation ends in two assistant messages: nothing to continue")
        if last == "user" and not messages[-1].text:
            raise ValueError("the last message is empty")
        return messages

    @property
    def cap(self) -> int:
        return self.max_completion_tokens or self.max_tokens or NO_CAP


class CompletionRequest(Request):
    REFUSED = {**Request.REFUSED, "echo": ((False,), "echoing the prompt is not supported"),
               "suffix": ((None, ""), "a suffix (infill) is not supported"),
               "best_of": ((None, 1), "only best_of=1 is supported")}

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str
    add_special: bool = False
    parse_special: Literal[True] = True  # special tokens written as text are read as such, always
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[Annotated[int, Field(ge=0)]]


Request.model_rebuild()


def describe(error: ValidationError) -> tuple[str, str | None]:
    """A validation error as one message naming each field, and the first field."""
    parts, first = [], None
    for e in error.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"])
        first = first or where or None
        message = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts), first
