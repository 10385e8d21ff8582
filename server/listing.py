"""What an attached client reads on every turn: compact tool schemas and compact result text.

Hosts load ``tools/list`` into every conversation and put tool results into the model's
context, so both are kept small:

- input schemas lose pydantic's generated titles; nested models (``guardrails``) are listed by
  their top-level fields only;
- output schemas are an outline: every top-level field with its type, nested records as plain
  objects;
- a nullable field stays an ``anyOf`` of single types: a ``"type"`` list is shorter, but clients
  that map schemas onto a one-type dialect (Gemini's function declarations) reject it (the
  Inspector's ``--strict`` check says so);
- the full schemas, with every field described, are resources (``kfoundry://schemas/{tool}``);
- a result's text is one summary line, then its structured content as compact JSON without
  empty fields, and without a nested record's fields that repeat its parent's values.

The structured content itself is never changed; it validates against the outline as it does
against the full schema.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_URI = "kfoundry://schemas/{tool}"
#: keywords whose values map names to schemas (a "title" under them is a field name, not a keyword)
_NAMED = ("properties", "$defs", "patternProperties")
_NULL = {"type": "null"}


def compact_input(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without titles, nullable unions as type lists, nested models outlined in place."""
    defs = schema.get("$defs", {})
    properties = {name: _outline_models(_tidy(spec), defs) for name, spec in schema.get("properties", {}).items()}
    listed: dict[str, Any] = {"type": "object", "properties": properties}
    if schema.get("required"):
        listed["required"] = schema["required"]
    return listed


def outline_output(schema: dict[str, Any]) -> dict[str, Any]:
    """Every top-level field of an output schema with its type; nested records as objects."""
    defs = schema.get("$defs", {})
    # Where the full schemas are is said once, in the server's instructions and the resource template's description.
    listed: dict[str, Any] = {"type": "object", "properties": {name: _shallow(spec, defs) for name, spec in schema.get("properties", {}).items()}}
    if schema.get("required"):
        listed["required"] = schema["required"]
    return listed


def _tidy(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_tidy(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tidy: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        tidy[key] = {name: _tidy(sub) for name, sub in value.items()} if key in _NAMED else _tidy(value)
    return tidy


def _outline_models(spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A field whose type is a model (or an optional one): the model's fields by name and type, described where it is."""
    options = spec.get("anyOf", [spec])
    refs = [o for o in options if "$ref" in o]
    if not refs:
        return spec
    model = _tidy(defs[refs[0]["$ref"].rsplit("/", 1)[1]])
    fields = {name: _shallow(sub, defs) for name, sub in model.get("properties", {}).items()}
    model_outline = {"type": "object", "properties": fields, "additionalProperties": False}
    outlined = {k: v for k, v in spec.items() if k not in ("anyOf", "$ref")}
    return {"anyOf": [model_outline, _NULL], **outlined} if _NULL in options else {**model_outline, **outlined}


def _resolve(spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in spec:
        spec = defs[spec["$ref"].rsplit("/", 1)[1]]
    return spec


def _shallow(spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    spec = _resolve(spec, defs)
    if "anyOf" in spec:
        options = [_shallow(option, defs) for option in spec["anyOf"]]
        if all(set(o) == {"type"} for o in options):
            types: list[str] = []
            for option in options:
                for kind in option["type"] if isinstance(option["type"], list) else [option["type"]]:
                    if kind not in types:
                        types.append(kind)
            return {"type": types[0]} if len(types) == 1 else {"anyOf": [{"type": kind} for kind in types]}
        return {"anyOf": options}
    if "enum" in spec:
        return {"enum": spec["enum"]}
    if "const" in spec:
        return {"const": spec["const"]}
    kind = spec.get("type")
    if kind == "array":
        items = _resolve(spec.get("items", {}), defs)
        return {"type": "array", "items": {"type": "object"} if items.get("type") == "object" else _shallow(items, defs)}
    return {"type": kind} if kind else {}


def result_text(tool: str, data: dict[str, Any]) -> str:
    """A summary line for a person skimming the transcript, then the result as compact JSON for the model."""
    return f"{summary(tool, data)}\n{json.dumps(_pruned(data), separators=(',', ':'), ensure_ascii=False)}"


def _pruned(value: Any, parent: dict[str, Any] | None = None) -> Any:
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if parent is not None and key in parent and parent[key] == item:
                continue
            pruned = _pruned(item, value)
            if pruned is None or pruned in ("", [], {}):
                continue
            kept[key] = pruned
        return kept
    if isinstance(value, list):
        return [_pruned(item) for item in value]
    return value


def _ms(value: Any) -> str:
    return f"{value:.4g} ms" if isinstance(value, int | float) else "?"


def summary(tool: str, data: dict[str, Any]) -> str:
    """One line: the outcome and the numbers that decide the next step."""
    state = data.get("state")
    where = f" ({data['backend']}{' on ' + data['device'] if data.get('device') else ''})" if data.get("backend") else ""
    if tool == "compile":
        count = len(data.get("diagnostics") or [])
        return f"compile: {state}{where}, {count} diagnostic{'s' if count != 1 else ''}; run {data.get('run_id')}"
    if tool == "verify":
        return f"verify: {state}, {data.get('trials_passed', 0)}/{data.get('trials')} trials passed{where}; run {data.get('run_id')}"
    if tool == "profile":
        timed = data.get("candidate") or {}
        parts = [f"median {_ms(timed.get('median_ms'))}"] if timed else []
        for baseline, key in (("eager", "speedup_vs_eager"), ("torch.compile", "speedup_vs_compile")):
            if isinstance(data.get(key), int | float):
                parts.append(f"{data[key]:.3g}x vs {baseline}")
        return f"profile: {state}{where}" + (f", {', '.join(parts)}" if parts else "") + f"; run {data.get('run_id')}"
    if tool == "analyze_profile":
        return f"analyze_profile: {data.get('bottleneck')} bound; {data.get('recommendation', '')}".strip()
    if tool == "translate_reference":
        analysis = data.get("analysis")
        about = f", {analysis.get('flops', 0):.3g} FLOPs, {analysis.get('bytes', 0):.3g} bytes" if analysis else ", no analysis"
        return f"translate_reference: prompt for {data.get('target_backend')} ({len(data.get('prompt', ''))} chars){about}; run {data.get('run_id')}"
    if tool == "backends":
        ready = [b["name"] + (" (interpreted)" if b.get("interpreted") else "") for b in data.get("backends", []) if b.get("available")]
        return f"backends: best {data.get('best')}; available: {', '.join(ready) or 'none'}"
    return f"{tool}: {state}" if state else tool
