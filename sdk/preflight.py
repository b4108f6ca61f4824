"""Dry calls before any stage trains or generates: each plugin the run uses, on a few real rows.

A scorer returning ``None``, a parser that cannot read its own domain's answers, or a student whose
logits have the wrong shape once failed after the teacher had trained for hours. ``Engine.run``
(and ``reasondistill validate --deep``) now first takes ``SAMPLE`` rows of the run's own data and:

- checks the domain: its prompt messages, and that ``parse_completion`` reads back every label
  ``format_completion`` writes (with the domain's rationale as the reasoning where it writes one);
- asks every stage for its own dry call (:meth:`reasondistill.Stage.preflight`): the distill stage
  builds its student and runs one batch, the teacher stages score a completion with every reward
  scorer. Errors name the plugin, as they would mid-run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from .data import load_pairs
from .errors import PluginError, RecipeError
from .failures import one_line, stage_failures

log = logging.getLogger("reasondistill")

SAMPLE = 4


@dataclass
class Preflight:
    """What a stage's dry call sees: the recipe, its domain and hooks, and a few real rows."""

    recipe: Any
    domain: Any
    hooks: Any
    rows: list[dict[str, Any]]
    #: model reference -> local folder, materialised as a stage gets it (the engine's resolver)
    resolve: Callable[[str], str]

    def model(self, role: str) -> str:
        """The local folder of the model the recipe gives ``role``."""
        ref = self.recipe.models.get(role)
        if ref is None:
            raise RecipeError(f"models.{role}", f"the run needs a {role} model; set models.{role}")
        return self.resolve(ref)

    def label(self, row: dict[str, Any]) -> int:
        value = row.get("label")
        return value if isinstance(value, int) and 0 <= value < len(self.domain.labels) else 0

    def completion(self, row: dict[str, Any]) -> str:
        """A well-formed teacher answer for ``row`` in the domain's format."""
        label = self.label(row)
        reasoning = self.domain.rationale(row, label) if self.domain.writes_rationale else "The item fits the query."
        return self.domain.format_completion(reasoning, label)


def sample_rows(recipe: Any, stages: list[Any], domain: Any, plugin: str, hooks: Any) -> list[dict[str, Any]]:
    """The first rows the run's ``pairs`` stage will bring in (its file, or the domain's generator)."""
    pairs = next((s for s in stages if s.spec.uses == "pairs"), None)
    options = pairs.options if pairs is not None else None
    source = getattr(options, "source", "generate")
    if source != "generate":
        ds, _ = load_pairs(source, options.format, options.columns, SAMPLE, len(domain.labels),
                           getattr(options, "encoding", "utf-8"), getattr(options, "label_map", None))
        return ds.to_list()
    if not domain.can_generate:
        return []
    with stage_failures(pairs.name if pairs is not None else "pairs", hooks):  # named as the stage would be
        rows = domain.generate(n=10, seed=recipe.seed, noise=0.0)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "query" in r and "item" in r for r in rows):
        raise PluginError(plugin, "Domain.generate", "must return a list of dicts with query and item")
    return rows[:SAMPLE]


def _call(plugin: str, hook: str, method: Any, *args: Any) -> Any:
    try:
        return method(*args)
    except Exception as exc:
        raise PluginError(plugin, hook, one_line(exc)) from exc


def check_domain(domain: Any, rows: list[dict[str, Any]], plugin: str) -> None:
    """The domain's prompts are chat messages, and its parser reads back what it formats."""
    for row in rows[:2]:
        messages = _call(plugin, "Domain.messages", domain.messages, row)
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise PluginError(plugin, "Domain.messages", "must return a list of {role, content} dicts of text, "
                              f"got {messages!r:.120}")
        for label, name in enumerate(domain.labels):
            reasoning = (_call(plugin, "Domain.rationale", domain.rationale, row, label) if domain.writes_rationale
                         else "The item fits the query.")
            if not isinstance(reasoning, str):
                raise PluginError(plugin, "Domain.rationale", f"returned {type(reasoning).__name__}, not text")
            text = _call(plugin, "Domain.format_completion", domain.format_completion, reasoning, label)
            parsed = _call(plugin, "Domain.parse_completion", domain.parse_completion, text)
            if not parsed.ok or parsed.label != label:
                raise PluginError(plugin, "Domain.parse_completion", f"reads {text[-80:]!r} (label {name!r}, written "
                                  f"by format_completion) as {parsed.label!r}: the teacher's answers would not parse")


def run_preflight(recipe: Any, stages: list[Any], domain: Any, hooks: Any, resolve: Callable[[str], str]) -> int:
    """Every dry call of the run; ``resolve`` materialises a model reference. Returns the number of
    sample rows used."""
    plugin = hooks.catalogue.kind("domain")[recipe.domain].plugin
    rows = sample_rows(recipe, stages, domain, plugin, hooks)
    check_domain(domain, rows, plugin)
    check = Preflight(recipe, domain, hooks, rows, resolve)
    for stage in stages:
        with stage_failures(stage.name, hooks):
            stage.component.preflight(check, stage.options)
    log.info("preflight: %d stages dry-called on %d rows", len(stages), len(rows))
    return len(rows)
