"""The OpenAI API's response objects: a whole chat completion or text
completion, the chunks of their streams, usage, errors.  Figures come from
N/status, text from N/data: nothing here reads the tree."""

from __future__ import annotations

import secrets
import time

# Why a turn ended (N/status reason=) in the API's words: cut by maxtokens
# or by the context, it is `length`.
FINISH = {"stop": "stop", "length": "length", "context": "length"}

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               501: "not_supported_error", 503: "unavailable_error", 504: "timeout_error"}


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape; `code` is the HTTP status, as llama-server gives it, or OpenAI's word for it
    (model_not_found)."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code or status}}


def usage(status: dict[str, str]) -> dict:
    """Token counts of a turn from its N/status fields: the prompt is what
    was evaluated and what came from the KV cache."""
    cached = int(status.get("tokens_cached", 0))
    prompt = int(status.get("tokens_in", 0)) + cached
    completion = int(status.get("tokens_out", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def finish_reason(status: dict[str, str]) -> str:
    return FINISH.get(status.get("reason", "stop"), "stop")


class Shape:
    """One reply's objects, all with the same id, time and model."""

    prefix = ""
    whole_object = chunk_object = ""

    def __init__(self, model: str):
        self.id = f"{self.prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model

    def _object(self, kind: str, choices: list, **more) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **more}

    def usage_chunk(self, status: dict[str, str]) -> dict:
        return self._object(self.chunk_object, [], usage=usage(status))

    def opening(self) -> dict | None:
        """The stream's first chunk, before any text (chat: the role)."""
        return None


class ChatShape(Shape):
    prefix, whole_object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def whole(self, text: str, status: dict[str, str]) -> dict:
        return self._object(self.whole_object, [{"index": 0, "message": {"role": "assistant", "content": text},
                                                 "logprobs": None, "finish_reason": finish_reason(status)}],
                            usage=usage(status))

    def _delta(self, delta: dict, finish: str | None = None) -> dict:
        return self._object(self.chunk_object, [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}])

    def opening(self) -> dict:
        return self._delta({"role": "assistant", "content": ""})

    def chunk(self, text: str) -> dict:
        return self._delta({"content": text})

    def last(self, status: dict[str, str]) -> dict:
        return self._delta({}, finish_reason(status))


class CompletionShape(Shape):
    prefix, whole_object, chunk_object = "cmpl", "text_completion", "text_completion"

    def _choice(self, text: str, finish: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def whole(self, text: str, status: dict[str, str]) -> dict:
        return self._object(self.whole_object, [self._choice(text, finish_reason(status))], usage=usage(status))

    def chunk(self, text: str) -> dict:
        return self._object(self.chunk_object, [self._choice(text, None)])

    def last(self, status: dict[str, str]) -> dict:
        return self._object(self.chunk_object, [self._choice("", finish_reason(status))])
