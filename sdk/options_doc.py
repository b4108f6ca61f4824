"""The options reference (docs/options.md), generated from the components' pydantic ``Options``.

Written by code so it cannot drift: a test regenerates it and compares. Regenerate with
``python -m reasondistill.options_doc > docs/options.md``.
"""

from __future__ import annotations

from .catalogue import Catalogue
from .manager import get_hooks
from .option_tables import cell, nested_models, options_table

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
            lines += [f"### `{name}`", "", cell(comp.description or (type(comp).__doc__ or "").strip().split("\n")[0]), ""]
            rows = options_table(comp.Options)
            lines += [*rows, ""] if rows else ["No options.", ""]
            for field, model in nested_models(comp.Options):
                lines += [f"`{field}` holds `{model.__name__}` options:", "", *options_table(model), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(options_markdown(), end="")
