"""Unit tests of the structured lever (serving/levers/structured.py), no engine running.

- `cap_schema` over many schema shapes: what it bounds, what it leaves alone, and that
  a schema's own bounds always win;
- the bounds are what xgrammar (the engine's backend, compiled here with the options
  vLLM uses under frugal's `disable_any_whitespace`) actually enforces: an over-long
  integer, string, array or map is rejected by the grammar matcher, and vLLM's own
  schema check accepts every capped schema it accepted before;
- recursive schemas without a base case are found (vLLM accepts them: they are a 400
  here);
- per-request options (`extra_body.frugal.structured`) are validated;
- on the fake engine: the engine gets the bounded schema, the client's request is
  unchanged, the header is set, and an answer cut at max_tokens is counted.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from fake_engine import FakeEngine, chat, fake_config, fake_ctx, fake_pipeline
from pydantic import ValidationError

from serving import metrics
from serving.config import FrugalConfig, StructuredCaps
from serving.errors import APIError
from serving.levers.structured import (
    CAPS_HEADER,
    MAX_SCHEMA_PROPERTIES,
    cap_schema,
    declared_properties,
    unending_subschema,
)
from serving.pipeline.context import Endpoint
from serving.pipeline.parse import parse_request

CAPS = StructuredCaps()  # 12 digits, 256 characters, 64 items, 64 extra keys
BIG = 10**12 - 1

#: The issue's schema: a small model fills max_tokens with the answer's digits.
ANSWER = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "confident": {"type": "boolean"}},
    "required": ["answer", "confident"],
    "additionalProperties": False,
}


def capped(schema: Any, caps: StructuredCaps = CAPS) -> Any:
    return cap_schema(schema, caps)[0]


# --- What gets bounded -------------------------------------------------------------


def test_the_issue_schema_gets_a_digit_bound_and_nothing_else() -> None:
    out, report = cap_schema(ANSWER, CAPS)
    assert out["properties"]["answer"] == {"type": "integer", "minimum": -BIG, "maximum": BIG}
    assert out["properties"]["confident"] == {"type": "boolean"}
    assert out["additionalProperties"] is False and out["required"] == ["answer", "confident"]
    assert report.header() == "integer-digits=12 (1 field)"


def test_the_input_schema_is_never_changed() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"},
                                               "b": {"type": "array", "items": {}}}}
    before = copy.deepcopy(schema)
    out = capped(schema)
    assert schema == before and out != schema


@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "string"}, {"type": "string", "maxLength": 256}),
    ({"type": "number"}, {"type": "number", "minimum": -BIG, "maximum": BIG}),
    ({"type": "array", "items": {"type": "boolean"}},
     {"type": "array", "items": {"type": "boolean"}, "maxItems": 64}),
    ({"type": ["integer", "null"]}, {"type": ["integer", "null"], "minimum": -BIG,
                                     "maximum": BIG}),
    ({"type": ["string", "integer"]}, {"type": ["string", "integer"], "maxLength": 256,
                                       "minimum": -BIG, "maximum": BIG}),
], ids=["string", "number", "array", "nullable-integer", "string-or-integer"])
def test_non_object_top_levels(schema: dict, expected: dict) -> None:
    assert capped(schema) == expected


def test_nested_objects_and_arrays_of_objects() -> None:
    schema = {"type": "object", "properties": {
        "people": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer"},
            "address": {"type": "object", "properties": {"zip": {"type": "string"}}}}}}}}
    out, report = cap_schema(schema, CAPS)
    people = out["properties"]["people"]
    assert people["maxItems"] == 64
    person = people["items"]["properties"]
    assert person["name"]["maxLength"] == 256
    assert (person["age"]["minimum"], person["age"]["maximum"]) == (-BIG, BIG)
    assert person["address"]["properties"]["zip"]["maxLength"] == 256
    assert report.fields == 4
    assert report.header() == "integer-digits=12, string-length=256, array-items=64 (4 fields)"


def test_refs_are_left_alone_and_their_definitions_bounded() -> None:
    schema = {
        "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        "definitions": {"Name": {"type": "string"}},
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}, "name": {"$ref": "#/definitions/Name"},
                       "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
    }
    out = capped(schema)
    assert out["properties"]["item"] == {"$ref": "#/$defs/Item"}
    assert out["$defs"]["Item"]["properties"]["n"]["maximum"] == BIG
    assert out["definitions"]["Name"]["maxLength"] == 256
    assert out["properties"]["items"]["maxItems"] == 64


def test_any_of_one_of_all_of_and_conditional_branches() -> None:
    schema = {"anyOf": [{"type": "integer"}, {"type": "string"}],
              "oneOf": [{"type": "array"}], "allOf": [{"type": "number"}],
              "if": {"type": "integer"}, "then": {"type": "integer"},
              "not": {"type": "string"}}
    out = capped(schema)
    assert out["anyOf"][0]["maximum"] == BIG and out["anyOf"][1]["maxLength"] == 256
    assert out["oneOf"][0]["maxItems"] == 64 and out["allOf"][0]["maximum"] == BIG
    assert out["then"]["maximum"] == BIG
    # A bound inside `not` or `if` would loosen the schema, not tighten it.
    assert out["not"] == {"type": "string"} and out["if"] == {"type": "integer"}


def test_free_form_maps_get_a_key_count_and_a_key_length() -> None:
    out = capped({"type": "object", "additionalProperties": {"type": "integer"}})
    assert out["maxProperties"] == 64
    assert out["propertyNames"] == {"maxLength": 256}
    assert out["additionalProperties"]["maximum"] == BIG


def test_objects_with_declared_and_free_keys() -> None:
    """maxProperties counts the declared keys too; no propertyNames (vLLM rejects it
    next to `properties` with xgrammar)."""
    out = capped({"type": "object", "properties": {"a": {"type": "boolean"}},
                  "additionalProperties": True})
    assert out["maxProperties"] == 65 and "propertyNames" not in out
    out = capped({"type": "object", "patternProperties": {"^x": {"type": "boolean"}}})
    assert out["maxProperties"] == 64 and "propertyNames" not in out


def test_closed_objects_need_no_key_bound() -> None:
    """xgrammar runs in strict mode under vLLM: only declared keys are allowed."""
    out = capped({"type": "object", "properties": {"a": {"type": "boolean"}}})
    assert out == {"type": "object", "properties": {"a": {"type": "boolean"}}}


@pytest.mark.parametrize("schema", [
    {"type": "boolean"},
    {"type": "null"},
    {"enum": [1, 2, 3]},
    {"type": "integer", "enum": [1, 22, 333]},
    {"type": "string", "const": "yes"},
    {"type": "string", "enum": ["a", "b"]},
    {"type": "string", "pattern": "^[a-z]+$"},  # vLLM rejects pattern + maxLength
    {"type": "string", "format": "date"},  # and format + maxLength
    {"type": "array", "prefixItems": [{"type": "boolean"}], "items": False},
    {"type": "array", "items": [{"type": "boolean"}], "additionalItems": False},
    {},
    True,
    "not a schema",
], ids=repr)
def test_bounded_or_unboundable_schemas_are_untouched(schema: Any) -> None:
    out, report = cap_schema(schema, CAPS)
    assert out == schema and report.fields == 0 and report.header() is None


# --- A schema's own bounds win -----------------------------------------------------


@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "integer", "minimum": 0, "maximum": 10**20},
     {"type": "integer", "minimum": 0, "maximum": 10**20}),
    ({"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 0, "maximum": BIG}),
    ({"type": "integer", "maximum": 5}, {"type": "integer", "maximum": 5, "minimum": -BIG}),
    ({"type": "number", "exclusiveMinimum": 0},
     {"type": "number", "exclusiveMinimum": 0, "maximum": BIG}),
    ({"type": "number", "exclusiveMaximum": 1.5, "exclusiveMinimum": -1.5},
     {"type": "number", "exclusiveMaximum": 1.5, "exclusiveMinimum": -1.5}),
    # The added side is widened to keep the range the client wrote non-empty.
    ({"type": "integer", "minimum": 10**13},
     {"type": "integer", "minimum": 10**13, "maximum": 10**14 - 1}),
    ({"type": "integer", "maximum": -(10**13)},
     {"type": "integer", "maximum": -(10**13), "minimum": -(10**14 - 1)}),
    # ... but never past what a double holds exactly: then that side is left open.
    ({"type": "integer", "minimum": 10**17}, {"type": "integer", "minimum": 10**17}),
    ({"type": "string", "maxLength": 10_000}, {"type": "string", "maxLength": 10_000}),
    ({"type": "string", "minLength": 1}, {"type": "string", "minLength": 1, "maxLength": 256}),
    ({"type": "string", "minLength": 1000}, {"type": "string", "minLength": 1000,
                                             "maxLength": 1000}),
    ({"type": "array", "maxItems": 1000}, {"type": "array", "maxItems": 1000}),
    ({"type": "array", "minItems": 100}, {"type": "array", "minItems": 100, "maxItems": 100}),
    ({"type": "object", "additionalProperties": True, "maxProperties": 3,
      "propertyNames": {"pattern": "^[a-z]+$"}},
     {"type": "object", "additionalProperties": True, "maxProperties": 3,
      "propertyNames": {"pattern": "^[a-z]+$"}}),
], ids=lambda value: json.dumps(value)[:60])
def test_the_schemas_own_bounds_win(schema: dict, expected: dict) -> None:
    assert capped(schema) == expected


def test_caps_follow_the_settings() -> None:
    caps = StructuredCaps(max_integer_digits=3, max_string_length=None, max_array_items=2)
    out, report = cap_schema({"type": "object", "properties": {
        "n": {"type": "integer"}, "s": {"type": "string"},
        "a": {"type": "array", "items": {"type": "integer"}}}}, caps)
    assert out["properties"]["n"]["maximum"] == 999
    assert "maxLength" not in out["properties"]["s"]
    assert out["properties"]["a"]["maxItems"] == 2
    assert out["properties"]["a"]["items"]["minimum"] == -999
    assert report.header() == "integer-digits=3, array-items=2 (3 fields)"
    assert capped(ANSWER, StructuredCaps(enabled=False)) == ANSWER


# --- What xgrammar and vLLM make of it --------------------------------------------


@pytest.fixture(scope="module")
def compiler() -> Any:
    import xgrammar

    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False)


def grammar_accepts(compiler: Any, schema: Any, text: str) -> bool:
    """Does the grammar vLLM's xgrammar backend builds for `schema` (under frugal's
    `disable_any_whitespace`) accept `text` as a whole answer?"""
    import xgrammar

    grammar = compiler.compile_json_schema(
        json.dumps(schema), any_whitespace=False, separators=(",", ":"))
    matcher = xgrammar.GrammarMatcher(grammar, terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def test_xgrammar_enforces_the_digit_bound(compiler: Any) -> None:
    def answer(digits: str) -> str:
        return f'{{"answer":{digits},"confident":true}}'

    assert grammar_accepts(compiler, ANSWER, answer("9" * 40)), "the runaway the issue saw"
    bounded = capped(ANSWER)
    for ok in ("0", "7", "-42", "9" * 12, "-" + "9" * 12):
        assert grammar_accepts(compiler, bounded, answer(ok)), ok
    for too_long in ("9" * 13, "-" + "9" * 13, "1" + "0" * 12):
        assert not grammar_accepts(compiler, bounded, answer(too_long)), too_long


def test_xgrammar_bounded_numbers_have_few_decimals_and_no_exponent(compiler: Any) -> None:
    unbounded, bounded = {"type": "number"}, capped({"type": "number"})
    assert grammar_accepts(compiler, unbounded, "0." + "3" * 100)
    assert grammar_accepts(compiler, bounded, "-3.25")
    assert grammar_accepts(compiler, bounded, "9" * 11 + ".125")
    assert grammar_accepts(compiler, bounded, "9" * 12)
    assert not grammar_accepts(compiler, bounded, "9" * 13)
    assert not grammar_accepts(compiler, bounded, "0." + "3" * 7)  # at most 6 decimals
    assert not grammar_accepts(compiler, bounded, "1e5")


def test_xgrammar_enforces_string_array_and_key_bounds(compiler: Any) -> None:
    caps = StructuredCaps(max_string_length=5, max_array_items=3, max_object_properties=2)
    string = capped({"type": "string"}, caps)
    assert grammar_accepts(compiler, string, '"abcde"')
    assert grammar_accepts(compiler, string, '"ééééé"'), "characters, not bytes"
    assert not grammar_accepts(compiler, string, '"abcdef"')
    # xgrammar 0.2.8: a length-bounded string has no escapes at all.
    assert not grammar_accepts(compiler, string, '"a\\"b"')
    array = capped({"type": "array", "items": {"type": "boolean"}}, caps)
    assert grammar_accepts(compiler, array, "[true,false,true]")
    assert not grammar_accepts(compiler, array, "[true,false,true,true]")
    mapping = capped({"type": "object", "additionalProperties": {"type": "boolean"}}, caps)
    assert grammar_accepts(compiler, mapping, '{"a":true,"b":false}')
    assert not grammar_accepts(compiler, mapping, '{"a":true,"b":false,"c":true}')
    assert not grammar_accepts(compiler, mapping, '{"abcdef":true}')
    mixed = capped({"type": "object", "properties": {"x": {"type": "boolean"}},
                    "additionalProperties": {"type": "boolean"}}, caps)
    assert grammar_accepts(compiler, mixed, '{"x":true,"a":true,"b":true}')
    assert not grammar_accepts(compiler, mixed, '{"x":true,"a":true,"b":true,"c":true}')


#: Shapes seen in real requests; each must stay valid for vLLM once capped.
SHAPES = [
    ANSWER,
    {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"name": {"type": "string"},
                                         "price": {"type": "number"}},
        "required": ["name", "price"]}}}, "required": ["items"]},
    {"$defs": {"Node": {"type": "object", "properties": {
        "value": {"type": "integer"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
        "required": ["value"]}}, "$ref": "#/$defs/Node"},
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"},
                                                      {"type": "string"}, {"type": "null"}]}}},
    {"type": "object", "additionalProperties": {"type": "number"}},
    {"type": "object", "properties": {"a": {"type": "string"}},
     "additionalProperties": {"type": "string"}},
    {"type": "object", "patternProperties": {"^x[0-9]$": {"type": "integer"}}},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "code": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
]


@pytest.mark.parametrize("schema", SHAPES, ids=lambda s: json.dumps(s)[:50])
def test_vllm_accepts_every_capped_schema(schema: dict, compiler: Any) -> None:
    """The caps never turn a schema vLLM's xgrammar check accepts into one it rejects
    (e.g. maxLength next to pattern or format), and the result compiles."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    out = capped(schema)
    validate_xgrammar_grammar(SamplingParams(structured_outputs=StructuredOutputsParams(
        json=schema)))
    validate_xgrammar_grammar(SamplingParams(structured_outputs=StructuredOutputsParams(
        json=out)))
    compiler.compile_json_schema(json.dumps(out), any_whitespace=False, separators=(",", ":"))


# --- Recursion without a base case -------------------------------------------------


NO_BASE_CASE = {"type": "object", "properties": {"child": {"$ref": "#"}},
                "required": ["child"]}


@pytest.mark.parametrize(("schema", "where"), [
    (NO_BASE_CASE, "#"),
    ({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}, "minItems": 10**12}},
      "$ref": "#/$defs/n"}, "#/$defs/n"),  # found without walking 10**12 items
    ({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}},
                      "required": ["next"]}}, "$ref": "#/$defs/n"}, "#/$defs/n"),
    # Optional at the top, endless once entered: the model can walk into it.
    ({"type": "object", "properties": {"head": {"$ref": "#/$defs/n"}},
      "$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}, "minItems": 1}}},
     "#/$defs/n"),
    ({"$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}},
                      "required": ["b"]},
                "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
     "#/$defs/a"),
])
def test_recursion_without_a_base_case_is_found(schema: dict, where: str) -> None:
    assert unending_subschema(schema) == where


def test_vllm_itself_accepts_recursion_without_a_base_case() -> None:
    """Why the lever checks: the engine would run such a request to max_tokens."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    validate_xgrammar_grammar(SamplingParams(structured_outputs=StructuredOutputsParams(
        json=NO_BASE_CASE)))


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"child": {"$ref": "#"}}},  # optional: may stop
    SHAPES[2],  # a tree: children may be empty
    {"$defs": {"n": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}}, "$ref": "#/$defs/n"},
    {"$defs": {"n": {"type": ["object", "null"], "properties": {"n": {"$ref": "#/$defs/n"}},
                     "required": ["n"]}}, "$ref": "#/$defs/n"},
    {"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"},
    # Never referenced: the answer cannot enter it.
    {"$defs": {"n": {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}},
                     "required": ["n"]}}, "type": "integer"},
    {"$ref": "https://example.com/remote.json"},
    ANSWER,
])
def test_recursion_with_a_base_case_is_fine(schema: dict) -> None:
    assert unending_subschema(schema) is None


# --- Per-request options -----------------------------------------------------------


def parse(frugal: Any) -> Any:
    return parse_request({**chat(), "frugal": frugal}, Endpoint.CHAT, frozenset())[2]


def test_request_options_override_the_models_caps() -> None:
    options = parse({"structured": {"max_integer_digits": 4, "max_string_length": None}})
    caps = StructuredCaps().overridden(options.structured)
    assert (caps.max_integer_digits, caps.max_string_length, caps.max_array_items) == \
        (4, None, 64)
    assert StructuredCaps().overridden(parse({}).structured) == StructuredCaps()
    assert not StructuredCaps().overridden(parse({"structured": {"enabled": False}})
                                           .structured).enabled


@pytest.mark.parametrize(("structured", "param"), [
    ({"max_integer_digits": 0}, "frugal.structured.max_integer_digits"),
    ({"max_integer_digits": 16}, "frugal.structured.max_integer_digits"),
    ({"max_integer_digits": "12"}, "frugal.structured.max_integer_digits"),
    ({"max_integer_digits": 1.5}, "frugal.structured.max_integer_digits"),
    ({"max_string_length": -1}, "frugal.structured.max_string_length"),
    ({"max_string_length": True}, "frugal.structured.max_string_length"),
    ({"max_array_items": 0}, "frugal.structured.max_array_items"),
    ({"max_object_properties": "many"}, "frugal.structured.max_object_properties"),
    ({"enabled": "yes"}, "frugal.structured.enabled"),
    ({"max_digits": 3}, "frugal.structured.max_digits"),
    ("off", "frugal.structured"),
])
def test_bad_request_options_are_a_400_naming_the_field(structured: Any, param: str) -> None:
    with pytest.raises(APIError) as caught:
        parse({"structured": structured})
    assert caught.value.status == 400 and caught.value.param == param


def test_yaml_caps_are_validated() -> None:
    config = fake_config()
    assert config.models[0].frugal.structured == StructuredCaps()
    entry = {"model_loading_config": {"model_id": "m", "model_source": "/nonexistent"},
             "frugal": {"structured": {"max_string_length": 80, "enabled": False}}}
    model = FrugalConfig.model_validate({"models": [entry]}).models[0]
    assert model.frugal.structured.max_string_length == 80
    assert not model.frugal.structured.enabled
    entry["frugal"]["structured"] = {"max_integer_digits": 40}
    with pytest.raises(ValidationError, match="max_integer_digits"):
        FrugalConfig.model_validate({"models": [entry]})


# --- On the fake engine ------------------------------------------------------------


def json_schema_body(schema: dict, **extra: Any) -> dict:
    return chat(response_format={"type": "json_schema",
                                 "json_schema": {"name": "answer", "schema": schema}}, **extra)


def test_the_engine_gets_the_bounded_schema_and_the_client_request_is_unchanged() -> None:
    engine = FakeEngine("small", content='{"answer":7,"confident":true}')
    pipeline = fake_pipeline({"small": engine})
    ctx = fake_ctx(pipeline, json_schema_body(ANSWER))
    answer = asyncio.run(pipeline.run(ctx))
    assert answer.status == 200
    sent = engine.requests[0].response_format.json_schema.json_schema
    assert sent["properties"]["answer"] == {"type": "integer", "minimum": -BIG, "maximum": BIG}
    assert ctx.request.response_format.json_schema.json_schema == ANSWER
    assert answer.headers[CAPS_HEADER] == "integer-digits=12 (1 field)"
    assert ctx.json_capped_fields == 1 and not ctx.structured_truncated


def test_structured_outputs_json_is_bounded_too() -> None:
    engine = FakeEngine("small")
    pipeline = fake_pipeline({"small": engine})
    as_text = json.dumps({"type": "array", "items": {"type": "string"}})
    ctx = fake_ctx(pipeline, chat(structured_outputs={"json": as_text}))
    answer = asyncio.run(pipeline.run(ctx))
    sent = engine.requests[0].structured_outputs.json
    assert isinstance(sent, str), "a schema sent as text stays text"
    assert json.loads(sent) == {"type": "array", "items": {"type": "string", "maxLength": 256},
                                "maxItems": 64}
    assert ctx.request.structured_outputs.json == as_text
    assert answer.headers[CAPS_HEADER] == "string-length=256, array-items=64 (2 fields)"


def test_per_request_options_and_the_models_own_caps() -> None:
    config = fake_config()
    config.models[0].frugal.structured = StructuredCaps(max_integer_digits=3)
    engine = FakeEngine("small")
    pipeline = fake_pipeline({"small": engine}, config=config)
    asyncio.run(pipeline.run(fake_ctx(pipeline, json_schema_body(ANSWER))))
    assert engine.requests[-1].response_format.json_schema.json_schema[
        "properties"]["answer"]["maximum"] == 999
    body = json_schema_body(ANSWER, frugal={"structured": {"max_integer_digits": 5}})
    asyncio.run(pipeline.run(fake_ctx(pipeline, body)))
    assert engine.requests[-1].response_format.json_schema.json_schema[
        "properties"]["answer"]["maximum"] == 99_999
    body = json_schema_body(ANSWER, frugal={"structured": {"enabled": False}})
    answer = asyncio.run(pipeline.run(fake_ctx(pipeline, body)))
    assert engine.requests[-1].response_format.json_schema.json_schema == ANSWER
    assert CAPS_HEADER not in answer.headers


def test_plain_requests_are_left_alone() -> None:
    engine = FakeEngine("small")
    pipeline = fake_pipeline({"small": engine})
    ctx = fake_ctx(pipeline, chat())
    answer = asyncio.run(pipeline.run(ctx))
    assert not ctx.structured and CAPS_HEADER not in answer.headers
    assert engine.requests[0].response_format is None


def test_recursion_without_a_base_case_is_a_400_before_the_engine_is_called() -> None:
    engine = FakeEngine("small")
    pipeline = fake_pipeline({"small": engine})
    with pytest.raises(APIError) as caught:
        asyncio.run(pipeline.run(fake_ctx(pipeline, json_schema_body(NO_BASE_CASE))))
    assert caught.value.status == 400 and caught.value.param == "response_format"
    assert "recursive without a base case" in caught.value.message
    assert engine.requests == []



def test_a_schema_too_big_to_compile_in_time_is_a_400_before_the_engine() -> None:
    """5,000 properties kept a real engine compiling for over 60 s (test_hostile_inputs)."""
    nested = {"type": "object", "properties": {
        f"o{i}": {"type": "object", "properties": {f"p{j}": {"type": "integer"} for j in range(10)}}
        for i in range(91)}}  # 91 + 910 = 1,001 declared in all
    assert declared_properties(nested) == MAX_SCHEMA_PROPERTIES + 1
    engine = FakeEngine("small")
    pipeline = fake_pipeline({"small": engine})
    with pytest.raises(APIError) as caught:
        asyncio.run(pipeline.run(fake_ctx(pipeline, json_schema_body(nested))))
    assert caught.value.status == 400 and caught.value.param == "response_format"
    assert engine.requests == []
    del nested["properties"]["o0"]  # at the limit: served
    asyncio.run(pipeline.run(fake_ctx(pipeline, json_schema_body(nested))))
    assert len(engine.requests) == 1

def counter(name: str, model: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


def test_an_answer_cut_at_max_tokens_is_counted_with_its_tokens() -> None:
    engine = FakeEngine("small", content='{"answer":1234', finish_reason="length")
    pipeline = fake_pipeline({"small": engine})
    truncated = counter("frugal_structured_truncated_total", "small")
    wasted = counter("frugal_structured_wasted_tokens_total", "small")
    ctx = fake_ctx(pipeline, json_schema_body(ANSWER))
    asyncio.run(pipeline.run(ctx))
    assert ctx.structured_truncated
    assert counter("frugal_structured_truncated_total", "small") == truncated + 1
    assert counter("frugal_structured_wasted_tokens_total", "small") == wasted + 2
    # Not structured: a length finish is not this counter's business.
    asyncio.run(pipeline.run(fake_ctx(pipeline, chat())))
    assert counter("frugal_structured_truncated_total", "small") == truncated + 1
    assert metrics.STRUCTURED_TRUNCATED is not None


def test_a_stream_cut_at_max_tokens_is_counted_and_carries_the_header() -> None:
    engine = FakeEngine("small", finish_reason="length")
    pipeline = fake_pipeline({"small": engine})
    truncated = counter("frugal_structured_truncated_total", "small")
    ctx = fake_ctx(pipeline, json_schema_body(ANSWER, stream=True))

    async def consume() -> Any:
        answer = await pipeline.run(ctx)
        text = "".join([part async for part in answer.chunks])
        return answer, text

    answer, text = asyncio.run(consume())
    assert answer.headers[CAPS_HEADER] == "integer-digits=12 (1 field)"
    assert '"length"' in text, "the chunk reaches the client unchanged"
    assert ctx.structured_truncated
    assert counter("frugal_structured_truncated_total", "small") == truncated + 1
