"""Replies in a shape over the HTTP API: OpenAI's response_format
(json_object, json_schema) and llama-server's grammar and json_schema, on
a node and through a coordinator, on the tiny chat model (random weights:
only the grammar makes its text parse)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .test_api import KINDS, apost, serve  # noqa: F401 (a fixture)
from .test_chat import chat_model  # noqa: F401 (a fixture)

SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"},
                                           "votes": {"type": "array", "items": {"enum": [1, 2]}, "maxItems": 2}},
          "required": ["answer", "sure", "votes"], "additionalProperties": False}
ASK = [{"role": "user", "content": "Is the sea blue? Answer in JSON."}]


@KINDS
async def test_response_format_json_schema_and_json_object(serve, kind):
    t = await serve(kind)
    for seed in range(3):
        reply = await t.chat(ASK, seed=seed, max_tokens=200, response_format={
            "type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}})
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
        assert reply.choices[0].finish_reason == "stop"
    # json_object with llama-server's optional schema beside it.
    reply = await t.chat(ASK, max_tokens=200, response_format={"type": "json_object", "schema": SCHEMA})
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    reply = await t.chat(ASK, max_tokens=8, temperature=0, response_format={"type": "json_object"})
    assert reply.choices[0].message.content.startswith("{")


@KINDS
async def test_llama_servers_grammar_and_json_schema_fields(serve, kind):
    t = await serve(kind)
    for seed in range(3):
        code, answer = await apost(t.base + "/completions", {
            "prompt": f"Question {seed}: yes or no?", "grammar": 'root ::= "yes" | "no"', "seed": seed})
        assert code == 200 and answer["choices"][0]["text"] in ("yes", "no"), answer
    code, answer = await apost(t.base + "/v1/chat/completions", {"messages": ASK, "json_schema": SCHEMA,
                                                                 "max_tokens": 200})
    assert code == 200, answer
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), SCHEMA)
    # A request without one has no constraint: the session's own default is cleared too.
    plain = await t.chat(ASK, max_tokens=12, temperature=0)
    assert plain.choices[0].message.content


@KINDS
async def test_an_invalid_grammar_is_400_and_the_api_serves_on(serve, kind):
    t = await serve(kind)
    with pytest.raises(openai.BadRequestError) as raised:
        await t.chat(ASK, extra_body={"grammar": "root ::= ((("})
    assert raised.value.body["message"].startswith("bad grammar: ")
    with pytest.raises(openai.BadRequestError) as raised:
        await t.chat(ASK, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}})
    assert raised.value.body["message"].startswith("bad schema: ")
    assert (await t.chat(ASK, max_tokens=2)).choices[0].message.content
