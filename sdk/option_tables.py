"""Markdown tables of pydantic options, for the generated references (docs/options.md, the
server's flags in docs/serving.md): one writer, so every reference shows types, bounds and
defaults the same way."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel

BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def type_words(prop: dict[str, Any]) -> str:
    """The JSON-schema type in words, with its bounds (``integer ≥ 1``, ``number > 0 < 1``)."""
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " | ".join(type_words(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{type_words(prop.get('items', {}))}]"
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    bounds = [f"{sign} {json.dumps(prop[key])}" for key, sign in BOUNDS if key in prop]
    return " ".join([str(prop.get("type", "any")), *bounds])


def default_words(field: Any) -> str:
    if field is None or field.is_required():
        return "required"
    return f"`{json.dumps(field.get_default(call_default_factory=True), default=str)}`"


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_table(model: Any, title: str = "option", name: Any = str) -> list[str]:
    """A pydantic model's fields as markdown table rows: name (as ``name(field)`` writes it, under
    ``title``), type with its bounds, default, description (``[]`` for a model without fields)."""
    props = model.model_json_schema().get("properties", {})
    if not props:
        return []
    lines = [f"| {title} | type | default | description |", "|---|---|---|---|"]
    for opt, prop in props.items():
        lines.append(f"| `{name(opt)}` | {cell(type_words(prop))} | {cell(default_words(model.model_fields.get(opt)))} "
                     f"| {cell(prop.get('description', ''))} |")
    return lines


def nested_models(model: Any) -> list[tuple[str, Any]]:
    """(field, model) for each field of ``model`` whose value is, or holds, another pydantic model
    (``sources: list[TrainSource]``), so the reference shows those options and their bounds too."""

    def found(annotation: Any) -> list[Any]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in found(arg)]

    return [(name, m) for name, info in model.model_fields.items() for m in found(info.annotation)]
