"""The options reference (docs/options.md), generated from the components' pydantic ``Options``.

Written by code so it cannot drift: a test regenerates it and compares. Regenerate with
``python -m reasondistill.options_doc > docs/options.md``.
"""

from __future__ import annotations

import json
from typing import Any

from .catalogue import Catalogue
from .manager import get_hooks

KIND_TITLES = {
    "stage": "Stages (`stages[i].options`)",
    "annotator": "Annotators (`annotate` or `active` → `annotator_options`)",
    "selector": "Selectors (`active` → `selector_options`)",
    "backend": "Generation backends (`backends.<role>.options`, or a stage's `backend.options`)",
    "student": "Students (`distill` → `student_options`)",
    "loss": "Distillation losses (`distill` → `loss_options`)",
    "domain": "Domains (`domain_options`)",
    "model": "Model sources (`models.<role>`)",
}
BUILTIN_PREFIX = "reasondistill.plugins"


BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def _type(prop: dict[str, Any]) -> str:
    """The JSON-schema type in words, with its bounds (``integer ≥ 1``, ``number > 0 < 1``)."""
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " | ".join(_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{_type(prop.get('items', {}))}]"
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    bounds = [f"{sign} {json.dumps(prop[key])}" for key, sign in BOUNDS if key in prop]
    return " ".join([str(prop.get("type", "any")), *bounds])


def _default(field: Any) -> str:
    if field is None or field.is_required():
        return "required"
    return f"`{json.dumps(field.get_default(call_default_factory=True), default=str)}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_markdown(catalogue: Catalogue | None = None, builtin_only: bool = True) -> str:
    """Every component's options as markdown tables: name, type, default, description."""
    catalogue = catalogue or get_hooks().catalogue
    lines = ["# Options reference", "",
             "Every option of every built-in component, generated from its pydantic `Options` model",
             "(`python -m reasondistill.options_doc > docs/options.md`). Unknown keys are errors. For",
             "installed third-party plugins, `reasondistill plugins --json` prints the same data.", ""]
    for kind, title in KIND_TITLES.items():
        entries = {n: e for n, e in sorted(catalogue.kind(kind).items())
                   if not builtin_only or type(e.component).__module__.startswith(BUILTIN_PREFIX)}
        if not entries:
            continue
        lines += [f"## {title}", ""]
        for name, entry in entries.items():
            comp = entry.component
            lines += [f"### `{name}`", "", _cell(comp.description or (type(comp).__doc__ or "").strip().split("\n")[0]), ""]
            schema = comp.Options.model_json_schema()
            props = schema.get("properties", {})
            if not props:
                lines += ["No options.", ""]
                continue
            lines += ["| option | type | default | description |", "|---|---|---|---|"]
            for opt, prop in props.items():
                default = _default(comp.Options.model_fields.get(opt))
                lines.append(f"| `{opt}` | {_cell(_type(prop))} | {_cell(default)} | {_cell(prop.get('description', ''))} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(options_markdown(), end="")
