"""Recipes: ordered stages, each naming a registered component and its options.

A recipe is data (a pydantic model with ``extra="forbid"``), built in Python or loaded from YAML
with ``yaml.safe_load``. :func:`resolve` checks every stage against the catalogue and validates its
options with the component's own ``Options`` model; every error is one line naming the field path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .components import Stage
from .errors import RecipeError, recipe_error
from .generators import BackendSpec
from .model_refs import ROLE_KINDS
from .runtime import RuntimeSpec

MAX_RECIPE_BYTES = 1_000_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class StageSpec(BaseModel):
    """One recipe step: ``uses`` a registered stage with ``options``; ``name`` defaults to ``uses``.

    ``inputs`` maps an input name the stage reads to the stage that produced it
    (``{pairs: load}``); by default a stage reads the latest earlier output of that name.
    ``seed`` runs this stage under its own seed instead of the recipe's (a study that varies the
    students' seed over one teacher pins the teacher's stages to one seed).
    """

    model_config = ConfigDict(extra="forbid")
    uses: str = Field(description="the registered stage this step runs")
    name: str | None = Field(default=None, pattern=NAME_PATTERN,
        description="the step's name (its folder, and how later steps name its outputs); default: uses")
    options: dict[str, Any] = Field(default_factory=dict, description="the stage's options, validated with its Options")
    inputs: dict[str, str] = Field(default_factory=dict,
        description="input name -> earlier `stage` or `stage.output` it reads; default: the latest output of that name")
    seed: int | None = Field(None, description="this stage's own seed; default: the recipe's")

    @property
    def stage_name(self) -> str:
        return self.name or self.uses


class Recipe(BaseModel):
    """A whole run: domain, models by role, seed, reward weights and the ordered stages."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="the run's name: its folder under runs/")
    description: str = Field("", description="what the recipe is for (shown by `reasondistill recipes`)")
    domain: str = Field("local_services",
        description="the registered search domain: prompts, student inputs and the label scale")
    domain_options: dict[str, Any] = Field(default_factory=dict,
        description="that domain's options, validated with its Options")
    #: role -> model: a registered model name, a local folder or a hub id (``teacher``, ``student``)
    models: dict[str, str] = Field(default_factory=dict,
        description="role (teacher, student) -> a registered model, a folder or a hub id")
    seed: int = Field(0, description="the seed every stage starts from (Python, NumPy, torch, the trainers)")
    reward_weights: dict[str, float] = Field(default_factory=dict,
        description="reward dimension -> its weight in the aggregated reward (default 1.0 each)")
    #: role -> generation backend (``teacher``: how the teacher runs; default ``transformers``)
    backends: dict[str, BackendSpec] = Field(default_factory=dict,
        description="role -> how that model generates (`backends.teacher`: the teacher's generation backend)")
    #: device, precision, attention kernel and threads (see :mod:`reasondistill.runtime`)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec,
        description="device, precision, attention kernel and threads of the run")
    #: the teacher's system prompt in every stage that prompts it (SFT data, preference, annotation,
    #: evaluation): ``full`` states the task, the label scale and the answer format (a zero-shot
    #: teacher needs them); ``short`` is the task in one line, for a teacher that learns the format
    #: in SFT (half the tokens of a Home Depot SFT row; see docs/recipes.md)
    teacher_prompt: Literal["full", "short"] = Field("full",
        description="the teacher's prompt: full (labels with their descriptions) or short")
    #: never run code shipped with a model unless the recipe says so (and the run logs it)
    trust_remote_code: bool = Field(False, description="let model loads run code shipped with the model (off: never)")
    stages: list[StageSpec] = Field(min_length=1, description="the steps, run in order")

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageSpec]) -> list[StageSpec]:
        seen: set[str] = set()
        for spec in stages:
            if spec.stage_name in seen:
                raise ValueError(f"stage name {spec.stage_name!r} is used twice; give one a 'name'")
            seen.add(spec.stage_name)
        return stages


@dataclass(frozen=True)
class ResolvedStage:
    """A stage spec with its component looked up and its options validated."""

    spec: StageSpec
    component: Stage
    options: BaseModel

    @property
    def name(self) -> str:
        return self.spec.stage_name


def step(uses: str, name: str | None = None, inputs: dict[str, str] | None = None, **options: Any) -> StageSpec:
    """Python shorthand for a stage: ``step("distill", loss="crsd", epochs=2)``."""
    return StageSpec(uses=uses, name=name, options=options, inputs=inputs or {})


def _deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base``, dicts key by key; a component spec (a dict with ``uses``) that
    names another component replaces the base's whole spec: a profile that switches the teacher's
    backend (``openai`` -> ``transformers``) must not inherit the other backend's options."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        switches = isinstance(value, dict) and isinstance(old, dict) and "uses" in value and value["uses"] != old.get("uses")
        out[key] = _deep_merge(old, value) if isinstance(value, dict) and isinstance(old, dict) and not switches else value
    return out


def apply_profile(raw: dict[str, Any], profile: str | None, source: str | None = None) -> dict[str, Any]:
    """Merge ``profiles[profile]`` into the recipe; ``stages`` overrides are keyed by stage name."""
    raw = dict(raw)
    profiles = raw.pop("profiles", None) or {}
    if profile is None:
        return raw
    if profile not in profiles:
        raise RecipeError("profiles", f"unknown profile {profile!r}; defined: {', '.join(profiles) or 'none'}", source)
    over = dict(profiles[profile])
    stage_over = over.pop("stages", {}) or {}
    raw = _deep_merge(raw, over)
    stages = [dict(s) for s in raw.get("stages", [])]
    for name, patch in stage_over.items():
        hits = [s for s in stages if (s.get("name") or s.get("uses")) == name]
        if not hits:
            raise RecipeError(f"profiles.{profile}.stages.{name}", "no stage of that name", source)
        hits[0].update(_deep_merge(hits[0], patch))
    raw["stages"] = stages
    return raw


def load_recipe(source: str | Path | dict[str, Any], profile: str | None = None) -> Recipe:
    """A recipe from a YAML file, a built-in recipe name, or a dict; errors name the field."""
    label = None
    if isinstance(source, dict):
        raw = source
    else:
        path = find_recipe(source)
        label = str(path)
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError("recipe", f"file is larger than {MAX_RECIPE_BYTES} bytes", label)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RecipeError("recipe", f"not valid YAML: {str(exc).splitlines()[0]}", label) from exc
    if not isinstance(raw, dict):
        raise RecipeError("recipe", f"must be a mapping, got {type(raw).__name__}", label)
    raw = apply_profile(raw, profile, label)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise recipe_error(exc, source=label) from None


def builtin_recipes() -> dict[str, Path]:
    """Built-in YAML recipes shipped in ``reasondistill.recipes``, by name."""
    folder = Path(str(resources.files("reasondistill.recipes")))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def find_recipe(source: str | Path) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    named = builtin_recipes().get(str(source))
    if named is not None:
        return named
    raise RecipeError("recipe", f"no file {str(source)!r} and no built-in recipe of that name "
                      f"(built in: {', '.join(builtin_recipes()) or 'none'})")


def resolve_domain(recipe: Recipe, catalogue: Any, source: str | None = None) -> Any:
    """The recipe's domain, configured with its validated ``domain_options``."""
    try:
        domain = catalogue.get("domain", recipe.domain, "domain")
    except RecipeError as exc:
        raise RecipeError(exc.field, exc.message, source) from None
    try:
        settings = domain.options(recipe.domain_options, context={"catalogue": catalogue, "recipe": recipe})
    except ValidationError as exc:
        err = recipe_error(exc, prefix="domain_options", source=source)
        raise RecipeError(err.field, f"{err.message} (domain {domain.name!r})", source) from None
    return domain.configured(settings, recipe.teacher_prompt)


def check_reward_weights(recipe: Recipe, catalogue: Any, source: str | None = None) -> None:
    """Every weighted dimension is one some scorer declares (a typo would silently weigh nothing)."""
    for dim in recipe.reward_weights:
        if catalogue.scorer_of(dim) is None:
            declared = ", ".join(sorted(catalogue.dimensions)) or "none"
            raise RecipeError(f"reward_weights.{dim}", f"no scorer plugin scores this dimension; declared: {declared}",
                              source)


def check_model_roles(recipe: Recipe, catalogue: Any, source: str | None = None) -> None:
    """A registered model of the wrong kind for its role (an encoder as teacher) fails here, not
    after the stages before the one that loads it have run."""
    for role, ref in recipe.models.items():
        entry = catalogue.kind("model").get(ref)
        need = ROLE_KINDS.get(role)
        if entry is not None and need and entry.component.model_kind != need:
            raise RecipeError(f"models.{role}", f"{ref!r} is a {entry.component.model_kind} model "
                              f"(plugin {entry.plugin!r}); the {role} needs a {need} model", source)


def resolve(recipe: Recipe, catalogue: Any, source: str | None = None) -> list[ResolvedStage]:
    """Look up each stage's component and validate its options; the first error is raised."""
    resolve_domain(recipe, catalogue, source)
    check_reward_weights(recipe, catalogue, source)
    check_model_roles(recipe, catalogue, source)
    out = []
    context = {"catalogue": catalogue, "recipe": recipe}
    for role, spec in recipe.backends.items():
        try:
            BackendSpec.model_validate(spec.model_dump(), context=context)
        except ValidationError as exc:
            raise recipe_error(exc, prefix=f"backends.{role}", source=source) from None
    names = [s.stage_name for s in recipe.stages]
    for i, spec in enumerate(recipe.stages):
        try:
            component = catalogue.get("stage", spec.uses, f"stages[{i}].uses")
        except RecipeError as exc:
            raise RecipeError(exc.field, exc.message, source) from None
        try:
            options = component.options(spec.options, context=context)
        except ValidationError as exc:
            raise recipe_error(exc, prefix=f"stages[{i}].options", source=source) from None
        except RecipeError as exc:  # nested component checks raise with their own sub-path
            raise RecipeError(f"stages[{i}].options.{exc.field}", exc.message, source) from None
        for key, producer in spec.inputs.items():
            if producer.split(".")[0] not in names[:i]:
                raise RecipeError(f"stages[{i}].inputs.{key}", f"no earlier stage named {producer!r}", source)
        for path, ref in output_refs(options):
            stage_name, dot, _ = ref.partition(".")
            if dot and stage_name not in names[:i]:
                earlier = ", ".join(names[:i]) or "none"
                raise RecipeError(f"stages[{i}].options.{path}", f"{ref!r} names stage {stage_name!r}, which is not an "
                                  f"earlier stage (earlier stages: {earlier})", source)
        for role in component.model_roles(recipe, options, catalogue):
            if role not in recipe.models:
                raise RecipeError(f"models.{role}", f"stage {spec.stage_name!r} ({spec.uses}) needs a {role} model; "
                                  f"set models.{role}", source)
        out.append(ResolvedStage(spec, component, options))
    return out


#: ``Field(..., json_schema_extra=OUTPUT_REF)`` marks an option that names an earlier output
#: (``pairs``, or ``stage.output``); ``validate`` checks the stage part of the dotted form.
OUTPUT_REF = {"output_ref": True}


def output_refs(options: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """``(field path, value)`` of every option marked :data:`OUTPUT_REF`, nested models and lists
    of models included."""
    found: list[tuple[str, str]] = []
    for name, info in type(options).model_fields.items():
        value = getattr(options, name)
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("output_ref"):
            values = value if isinstance(value, list) else [value]
            found += [(f"{prefix}{name}", v) for v in values if isinstance(v, str)]
        elif isinstance(value, BaseModel):
            found += output_refs(value, f"{prefix}{name}.")
        elif isinstance(value, list):
            for j, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += output_refs(item, f"{prefix}{name}[{j}].")
    return found
