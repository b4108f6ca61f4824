"""The catalogue: every registered component by kind and name, and what a component must be to enter it.

Built by the plugin manager (:mod:`~reasondistill.manager`) from the ``register_*`` hooks; the engine
passes it down to everything that resolves a component by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .components import Annotator, Component, DistillLoss, ModelSource, Options, Selector, Stage, Student
from .domain import Domain
from .errors import PluginError, RecipeError
from .generators import GenerationBackend

#: register hook -> the component kind it fills, and the family shown by ``reasondistill plugins``
REGISTER_HOOKS: dict[str, tuple[str, str]] = {
    "register_stages": ("stage", "pipeline"),
    "register_teacher_stages": ("stage", "teacher"),
    "register_annotators": ("annotator", "annotator"),
    "register_selectors": ("selector", "selector"),
    "register_generation_backends": ("backend", "backend"),
    "register_students": ("student", "student"),
    "register_distill_losses": ("loss", "loss"),
    "register_domains": ("domain", "domain"),
    "register_models": ("model", "model"),
}


@dataclass
class Entry:
    """A registered component and the plugin that registered it."""

    component: Component
    plugin: str
    family: str


@dataclass
class Catalogue:
    """Every registered component, by kind and name."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)
    #: reward dimension (or ``prefix*``) -> the plugin that declared it (:func:`hookspecs.reward_dimensions`)
    dimensions: dict[str, str] = field(default_factory=dict)

    def scorer_of(self, dim: str) -> str | None:
        """The plugin declaring reward dimension ``dim`` (exactly or by a ``prefix*``), or None."""
        if dim in self.dimensions:
            return self.dimensions[dim]
        for declared, plugin in self.dimensions.items():
            if declared.endswith("*") and dim.startswith(declared[:-1]):
                return plugin
        return None

    def kind(self, kind: str) -> dict[str, Entry]:
        return self.entries.get(kind, {})

    def get(self, kind: str, name: str, field_path: str | None = None) -> Component:
        """The component, or a ``RecipeError`` naming ``field_path`` and the registered names."""
        entry = self.kind(kind).get(name)
        if entry is None:
            names = ", ".join(sorted(self.kind(kind))) or "none"
            raise RecipeError(field_path or kind, f"unknown {kind} {name!r}; registered: {names}")
        return entry.component


def admit(cat: Catalogue, kind: str, family: str, comp: Any, plugin: str, hook: str) -> None:
    """Add ``comp`` to the catalogue if it keeps its kind's written contract; else one line naming
    the plugin and the hook that registered it."""
    name = getattr(comp, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(plugin, hook, f"registered {comp!r} without a string 'name'")
    if getattr(comp, "kind", kind) != kind:
        raise PluginError(plugin, hook, f"{name!r} is a {comp.kind}, but {hook} takes a {kind}")
    base = kind_bases().get(kind)
    if base is not None and not isinstance(comp, base):
        raise PluginError(plugin, hook, f"{name!r} is a {type(comp).__name__}, not a reasondistill"
                          f".{base.__name__}: subclass it, so the contract's methods are checked")
    problem = contract_problem(comp)
    if problem:
        raise PluginError(plugin, hook, f"{name!r}: {problem}")
    bucket = cat.entries.setdefault(kind, {})
    if name in bucket:
        raise PluginError(plugin, hook, f"{kind} {name!r} is already registered by plugin {bucket[name].plugin!r}")
    bucket[name] = Entry(comp, plugin, family)


def contract_problem(comp: Any) -> str | None:
    """What a registered component gets wrong that would otherwise pass silently, or None."""
    opts = getattr(comp, "Options", None)
    if not (isinstance(opts, type) and issubclass(opts, Options)):
        return "its Options must subclass reasondistill.Options (unknown recipe keys are then errors, not ignored)"
    labels = getattr(comp, "labels", None)
    if getattr(comp, "kind", "") == "domain":
        if len(labels or ()) < 2 or len(set(labels)) != len(labels):
            return f"labels must be two or more distinct names, got {labels!r}"
        if len(comp.label_descriptions) != len(labels):
            return (f"{len(comp.label_descriptions)} label_descriptions for {len(labels)} labels; "
                    "the teacher's prompt pairs each label with its description")
    return None


def kind_bases() -> dict[str, type]:
    """The base class each component kind must subclass (its written contract)."""
    return {"stage": Stage, "annotator": Annotator, "selector": Selector, "backend": GenerationBackend, "student": Student,
            "loss": DistillLoss, "domain": Domain, "model": ModelSource}
