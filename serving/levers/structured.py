"""Lever 7, structured output that cannot run away: bound what a JSON schema leaves open.

Guided decoding (xgrammar, in the engine) makes the answer match the client's schema,
but a schema such as `{"answer": {"type": "integer"}}` lets a small model write digits
until `max_tokens`: the grammar never forces the number to end. This lever writes, into
the engine's copy of the request, the bounds a schema does not state itself:

- integers and numbers without `minimum`/`maximum`: at most `max_integer_digits` digits
  (xgrammar 0.2.8 turns a range into a digit-bounded grammar; a bounded `number` also
  has at most 6 decimals and no exponent);
- strings without `maxLength` (and not `enum`, `const`, `pattern` or `format`, which
  are bounded already or which xgrammar cannot combine with a length): `maxLength`;
- arrays without `maxItems` (and not closed tuples): `maxItems`;
- objects that allow undeclared keys: `maxProperties` (declared ones plus the cap), and
  a `maxLength` on their keys (`propertyNames`) where xgrammar supports it.

A schema's own bounds always win: a bound the client wrote is never changed, and an
added bound is widened when needed to stay compatible with the other side the client
wrote (`minimum: 10**14` gets a 15-digit `maximum`, `minItems: 100` a `maxItems` of
100). Caps are per model (`frugal.structured`) and per request
(`extra_body.frugal.structured`); the response names the caps applied in
`x-frugal-json-caps`.

A schema that is recursive without a base case (`{"child": {"$ref": "#"}}`, required)
has no finite instance: the grammar can never end, so it is a 400 before any token is
generated. What xgrammar itself cannot enforce, vLLM rejects in the engine with a 400.
A schema declaring more than `MAX_SCHEMA_PROPERTIES` object properties is a 400 too:
xgrammar would compile it for minutes.

An answer of a structured request that still ended at `max_tokens` (its JSON is cut)
is recorded in the context; the accounting lever counts it in
`frugal_structured_truncated_total` and its tokens in
`frugal_structured_wasted_tokens_total`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from serving.config import ModelConfig, StructuredCaps
from serving.errors import APIError
from serving.pipeline.context import RequestContext
from serving.pipeline.lever import Lever

#: Header that says which caps the engine's schema got (absent when none applied).
CAPS_HEADER = "x-frugal-json-caps"

#: The kinds of cap, in the order the header names them.
KINDS = ("integer-digits", "string-length", "array-items", "object-properties")

#: Keywords whose value is one subschema that generates (part of) the instance.
_ONE = ("additionalProperties", "unevaluatedProperties", "additionalItems",
        "unevaluatedItems", "then", "else")
#: Keywords whose value is a list of subschemas.
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
#: Keywords whose value maps names to subschemas.
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
#: Not walked: `not` and `if` (bounding them would loosen the schema), `contains`
#: (vLLM rejects it with xgrammar), `propertyNames` (handled by the object rule).

_SCALARS = frozenset({"string", "integer", "number", "boolean", "null"})
_OBJECT_WORDS = ("properties", "additionalProperties", "patternProperties", "required")
_ARRAY_WORDS = ("items", "prefixItems", "minItems")


def _types(node: dict[str, Any]) -> set[str]:
    """The node's types; inferred from its keywords when it names none (as xgrammar
    does: a type-less schema with `properties` is an object)."""
    declared = node.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {item for item in declared if isinstance(item, str)}
    if any(word in node for word in _OBJECT_WORDS):
        return {"object"}
    if any(word in node for word in _ARRAY_WORDS):
        return {"array"}
    return set()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _subschemas(node: dict[str, Any], defs: bool = True) -> list[tuple[str, Any]]:
    """(JSON-pointer suffix, subschema) of every generating subschema of `node`, and of
    its `$defs`/`definitions` when `defs`."""
    found: list[tuple[str, Any]] = []
    for key in _ONE:
        if isinstance(node.get(key), dict):
            found.append((f"/{key}", node[key]))
    items = node.get("items")
    if isinstance(items, dict):
        found.append(("/items", items))
    elif isinstance(items, list):  # draft 4 tuples
        found.extend((f"/items/{i}", sub) for i, sub in enumerate(items))
    for key in _LIST:
        if isinstance(node.get(key), list):
            found.extend((f"/{key}/{i}", sub) for i, sub in enumerate(node[key]))
    for key in (*_MAP, "dependencies"):
        if not defs and key in ("$defs", "definitions"):
            continue
        if isinstance(node.get(key), dict):
            found.extend((f"/{key}/{_escape(name)}", sub) for name, sub in node[key].items())
    return [(pointer, sub) for pointer, sub in found if isinstance(sub, dict)]


def _escape(name: str) -> str:
    return str(name).replace("~", "~0").replace("/", "~1")


@dataclass
class CapReport:
    """Which caps were written into a schema, and into how many of its subschemas."""

    applied: dict[str, int] = field(default_factory=dict)  # kind -> cap value
    fields: int = 0

    def header(self) -> str | None:
        if not self.fields:
            return None
        kinds = ", ".join(
            f"{kind}={self.applied[kind]}" for kind in KINDS if kind in self.applied)
        noun = "field" if self.fields == 1 else "fields"
        return f"{kinds} ({self.fields} {noun})"


def _wide_enough(digits: int, other: Any) -> int | None:
    """The digit count of an added bound: the cap, widened to the digits of the bound
    the schema gives on the other side; None when that exceeds what a double holds."""
    if _number(other):
        digits = max(digits, len(str(int(abs(other)))))
    return digits if digits <= 15 else None


def _cap_numbers(node: dict[str, Any], digits: int) -> bool:
    lower = node.get("minimum") if _number(node.get("minimum")) else node.get("exclusiveMinimum")
    upper = node.get("maximum") if _number(node.get("maximum")) else node.get("exclusiveMaximum")
    has_lower, has_upper = _number(lower), _number(upper)
    changed = False
    if not has_upper:
        width = _wide_enough(digits, lower)
        if width is not None:
            node["maximum"] = 10**width - 1
            changed = True
    if not has_lower:
        width = _wide_enough(digits, upper)
        if width is not None:
            node["minimum"] = -(10**width - 1)
            changed = True
    return changed


def _cap_node(node: dict[str, Any], caps: StructuredCaps, report: CapReport) -> None:
    """Add the missing bounds to one subschema (not its children)."""
    if "enum" in node or "const" in node or "$ref" in node:
        return  # bounded already; xgrammar ignores a $ref's siblings (the target is capped)
    types = _types(node)
    applied: list[tuple[str, int]] = []
    digits = caps.max_integer_digits
    if digits is not None and types & {"integer", "number"} and _cap_numbers(node, digits):
        applied.append(("integer-digits", digits))
    length = caps.max_string_length
    if (length is not None and "string" in types and "maxLength" not in node
            and "pattern" not in node and "format" not in node):
        node["maxLength"] = max(length, _count(node.get("minLength")))
        applied.append(("string-length", length))
    items = caps.max_array_items
    if items is not None and "array" in types and "maxItems" not in node:
        prefix = node.get("prefixItems")
        if not isinstance(prefix, list):
            prefix = node["items"] if isinstance(node.get("items"), list) else []
        closed = node.get("items") is False or (
            isinstance(node.get("items"), list) and node.get("additionalItems") is False)
        if not closed:
            node["maxItems"] = max(items, _count(node.get("minItems")), len(prefix))
            applied.append(("array-items", items))
    if "object" in types:
        _cap_object(node, caps, applied)
    for kind, value in applied:
        report.applied.setdefault(kind, value)
    if applied:
        report.fields += 1


def _cap_object(node: dict[str, Any], caps: StructuredCaps, applied: list) -> None:
    extra = node.get("additionalProperties")
    unevaluated = node.get("unevaluatedProperties")
    patterns = node.get("patternProperties")
    free = (extra is True or isinstance(extra, dict) or unevaluated is True
            or isinstance(unevaluated, dict) or bool(isinstance(patterns, dict) and patterns))
    if not free:
        return  # xgrammar (strict mode, as vLLM runs it) allows only the declared keys
    declared = node.get("properties")
    declared = declared if isinstance(declared, dict) else {}
    cap = caps.max_object_properties
    if cap is not None and "maxProperties" not in node:
        node["maxProperties"] = max(len(declared) + cap, _count(node.get("minProperties")))
        applied.append(("object-properties", cap))
    length = caps.max_string_length
    # vLLM rejects propertyNames next to properties, patternProperties or a non-true
    # unevaluatedProperties (xgrammar cannot combine them): bound the keys only without.
    if (length is not None and "propertyNames" not in node and "properties" not in node
            and "patternProperties" not in node and unevaluated in (None, True)):
        node["propertyNames"] = {"maxLength": length}
        applied.append(("string-length", length))


def cap_schema(schema: Any, caps: StructuredCaps) -> tuple[Any, CapReport]:
    """A copy of `schema` with the missing bounds added, and what was added. The input
    is not changed; a schema that is not a JSON object is returned as it is."""
    report = CapReport()
    if not caps.enabled or not isinstance(schema, dict):
        return schema, report
    capped = copy.deepcopy(schema)
    stack = [capped]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        _cap_node(node, caps, report)
        stack.extend(sub for _, sub in _subschemas(node))
    return capped, report


# --- Recursion without a base case -------------------------------------------------


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """A local `$ref` ("#", "#/$defs/x", ...) in `root`, or None when not local."""
    if not ref.startswith("#"):
        return None
    target: Any = root
    for part in unquote(ref[1:]).split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


def _finite(node: dict[str, Any], root: dict[str, Any], done: set[int]) -> bool:
    """True when `node` has a finite instance, given the nodes in `done` that do."""

    def ok(sub: Any) -> bool:
        return not isinstance(sub, dict) or id(sub) in done

    ref = node.get("$ref")
    if isinstance(ref, str) and not ok(_resolve(root, ref)):
        return False
    if "enum" in node or "const" in node:
        return True
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if isinstance(branches, list) and branches and not any(map(ok, branches)):
            return False
    branches = node.get("allOf")
    if isinstance(branches, list) and not all(map(ok, branches)):
        return False
    types = _types(node)
    if not types or types & _SCALARS:
        return True
    if "object" in types and _object_finite(node, ok):
        return True
    return "array" in types and _array_finite(node, ok)


def _object_finite(node: dict[str, Any], ok: Any) -> bool:
    properties = node.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = node.get("required")
    names = required if isinstance(required, list) else []
    return all(ok(properties.get(name)) for name in names if isinstance(name, str))


def _array_finite(node: dict[str, Any], ok: Any) -> bool:
    prefix = node.get("prefixItems")
    items = node.get("items")
    if not isinstance(prefix, list):
        prefix, items = (items, node.get("additionalItems")) if isinstance(items, list) \
            else ([], items)
    needed = min(_count(node.get("minItems")), len(prefix) + 1)  # past the prefix: `items`
    return all(ok(prefix[i] if i < len(prefix) else items) for i in range(needed))


def unending_subschema(schema: Any) -> str | None:
    """The JSON pointer of a subschema the answer can enter but never finish (recursive
    without a base case), or None. Only cycles through `$ref` can do that, so a schema
    without one is not searched."""
    if not isinstance(schema, dict) or not _has_ref(schema):
        return None
    nodes: list[tuple[str, dict[str, Any]]] = []  # every reachable subschema, once
    users: dict[int, list[dict[str, Any]]] = {}  # subschema -> the subschemas that use it
    seen: set[int] = set()
    targets: set[int] = set()  # the subschemas some $ref points to
    stack: list[tuple[str, dict[str, Any]]] = [("", schema)]
    while stack:
        pointer, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append((pointer, node))
        children = [(pointer + suffix, sub) for suffix, sub in _subschemas(node, defs=False)]
        ref = node.get("$ref")
        target = _resolve(schema, ref) if isinstance(ref, str) else None
        if isinstance(target, dict):
            targets.add(id(target))
            children.append((ref.removeprefix("#"), target))
        for child in children:
            users.setdefault(id(child[1]), []).append(node)
        stack.extend(children)
    # Least fixpoint, by worklist: a subschema is re-checked only when one it uses has
    # just been found finite, so a long chain of $refs costs linear time.
    done: set[int] = set()  # the subschemas with a finite instance
    work = [node for _, node in nodes]
    while work:
        node = work.pop()
        if id(node) not in done and _finite(node, schema, done):
            done.add(id(node))
            work.extend(users.get(id(node), ()))
    unending = [(pointer, node) for pointer, node in nodes if id(node) not in done]
    if not unending:
        return None
    # Name a subschema on the cycle (a $ref target), not one that merely leads to it.
    on_cycle = [pointer for pointer, node in unending if id(node) in targets]
    return "#" + (on_cycle or [unending[0][0]])[0]


#: The most object properties a JSON schema may declare in all. xgrammar's compile time
#: grows with their square: measured on the 2-core CI machine, 1,000 properties compile
#: in about 1.5 s, 5,000 took over 60 s in the engine (no timeout covers JSON schemas).
MAX_SCHEMA_PROPERTIES = 1_000


def declared_properties(schema: Any) -> int:
    """How many object properties the schema declares, nested ones included."""
    count, stack = 0, [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            properties = value.get("properties")
            if isinstance(properties, dict):
                count += len(properties)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def _has_ref(schema: dict[str, Any]) -> bool:
    stack: list[Any] = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("$ref"), str):
                return True
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


# --- The lever ---------------------------------------------------------------------


def _json_schema(request: Any) -> tuple[str, Any] | None:
    """(param, schema) of the JSON schema the engine will enforce: `response_format`
    wins over `structured_outputs.json`, as in vLLM."""
    response_format = getattr(request, "response_format", None)
    if getattr(response_format, "type", None) == "json_schema":
        inner = getattr(response_format, "json_schema", None)
        return "response_format", getattr(inner, "json_schema", None)
    outputs = getattr(request, "structured_outputs", None)
    if outputs is not None and outputs.json is not None:
        return "structured_outputs.json", _loads(outputs.json)
    return None


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return None  # vLLM's engine says what is wrong with it (400)
    return value


def _is_structured(request: Any) -> bool:
    response_format = getattr(request, "response_format", None)
    kind = getattr(response_format, "type", None)
    return (kind is not None and kind != "text") or \
        getattr(request, "structured_outputs", None) is not None


def _truncated(data: dict[str, Any]) -> bool:
    return any(isinstance(choice, dict) and choice.get("finish_reason") == "length"
               for choice in data.get("choices") or [])


class StructuredLever(Lever):
    """Bound the engine's JSON schema per model; note answers cut at max_tokens."""

    name = "structured"

    async def before(self, ctx: RequestContext) -> None:
        ctx.structured = _is_structured(ctx.request)
        found = _json_schema(ctx.request)
        if found is None:
            return
        param, schema = found
        if declared_properties(schema) > MAX_SCHEMA_PROPERTIES:
            raise APIError(400, f"{param}: the JSON schema declares more than "
                           f"{MAX_SCHEMA_PROPERTIES} object properties", param=param)
        where = unending_subschema(schema)
        if where is not None:
            raise APIError(
                400,
                f"{param}: the JSON schema at {where!r} is recursive without a base case: "
                "no finite JSON matches it, so the answer could never end",
                param=param,
            )

    def shape(self, ctx: RequestContext, request: Any, model: ModelConfig) -> Any:
        if not ctx.structured:
            return request
        override = ctx.options.structured if ctx.options is not None else None
        caps = model.frugal.structured.overridden(override)
        if not caps.enabled:
            return request
        report = CapReport()  # of the schema the engine enforces (response_format wins)
        response_format = getattr(request, "response_format", None)
        uses_response_format = getattr(response_format, "type", None) == "json_schema"
        if uses_response_format and response_format.json_schema is not None:
            inner = response_format.json_schema
            capped, report = cap_schema(inner.json_schema, caps)
            if report.fields:  # new objects: the shallow copy shares the client's
                request.response_format = response_format.model_copy(
                    update={"json_schema": inner.model_copy(update={"json_schema": capped})})
        outputs = getattr(request, "structured_outputs", None)
        if outputs is not None and outputs.json is not None:
            capped, so_report = cap_schema(_loads(outputs.json), caps)
            if so_report.fields:
                value = json.dumps(capped) if isinstance(outputs.json, str) else capped
                request.structured_outputs = dataclasses.replace(outputs, json=value)
            if not uses_response_format:
                report = so_report
        header = report.header()
        if header is not None:
            ctx.response_headers[CAPS_HEADER] = header
        else:
            ctx.response_headers.pop(CAPS_HEADER, None)
        ctx.json_capped_fields = report.fields
        return request

    async def after(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        if ctx.structured:
            ctx.structured_truncated = _truncated(body)
        return body

    def on_chunk(self, ctx: RequestContext, chunk: str) -> str | None:
        if ctx.structured and '"length"' in chunk and not ctx.structured_truncated:
            try:
                data = json.loads(chunk.removeprefix("data: "))
            except json.JSONDecodeError:
                return chunk
            ctx.structured_truncated = isinstance(data, dict) and _truncated(data)
        return chunk
