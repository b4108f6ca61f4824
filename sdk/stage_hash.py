"""The stage hash: what a stage computes from what, in one place (docs/recipes.md, "What reruns a
stage").

A stage's hash chains the previous stage's hash with its own spec, the recipe's shared settings
and the fingerprints of its external inputs, so changing one stage's options reruns that stage and
every stage after it, and nothing before it. Options that only say how the work travels (a server
address, concurrency, timeouts: ``json_schema_extra={"hash": False}``) are left out, so moving a
server or tuning the client resumes a cut-off stage instead of redoing it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .fingerprint import canonical_hash
from .generators import BackendSpec


def options_view(options: BaseModel) -> dict[str, Any]:
    """The options that change a stage's outputs.

    A field declared with ``json_schema_extra={"hash": False}`` is left out. One declared
    ``{"hash": "unless_default"}`` (an option added after stages were cached) is left out while it
    has its default, so adding it does not rerun every stage computed before it existed. An option
    model inside (a typed field, or a component's options typed by the stage: ``student_options``
    as the student's ``Options``) is viewed the same way, so a student option added later reruns
    nothing either; options still a dict and a backend spec are kept whole, as written
    (:func:`stage_options_view` views a nested backend spec through its backend).
    """
    dumped = options.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, info in type(options).model_fields.items():
        extra = info.json_schema_extra
        rule = extra.get("hash") if isinstance(extra, dict) else None
        if rule is False or (rule == "unless_default" and getattr(options, name) == info.get_default(call_default_factory=True)):
            continue
        value = getattr(options, name)
        nested = isinstance(value, BaseModel) and not isinstance(value, BackendSpec)
        out[name] = options_view(value) if nested else dumped[name]
    return out


def backend_view(spec: BackendSpec, catalogue: Any) -> dict[str, Any]:
    """What of a backend choice changes the completions: its name and its options' view."""
    backend = catalogue.get("backend", spec.uses, "backend")
    return {"uses": spec.uses, "options": options_view(backend.options(spec.options))}


def stage_options_view(options: BaseModel, catalogue: Any) -> dict:
    """:func:`options_view` of a stage's options, with backend specs nested in dict options (an
    annotator's ``annotator_options.backend``) viewed through their backend too."""
    def walk(value):
        if isinstance(value, dict):
            if set(value) == {"uses", "options"} and value["uses"] in catalogue.kind("backend"):
                return backend_view(BackendSpec.model_validate(value), catalogue)
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(options_view(options))


def shared_settings(recipe: Any, stage: Any, catalogue: Any) -> dict[str, Any]:
    """The recipe's settings every stage depends on. Fields added later enter only when they leave
    their default, so adding them left earlier hashes alone; what ``dtype: auto`` resolves to, and
    where the run happens (device, threads), never rerun a stage."""
    shared = recipe.model_dump(mode="json", include={"domain", "domain_options", "models", "seed",
                                                        "reward_weights", "trust_remote_code"})
    if stage.spec.seed is not None:  # the stage's own seed; equal to the recipe's, the same hash
        shared["seed"] = stage.spec.seed
    if recipe.teacher_prompt != "full":
        shared["teacher_prompt"] = recipe.teacher_prompt
    if recipe.runtime.dtype != "auto":
        shared["runtime"] = {"dtype": recipe.runtime.dtype}
    if stage.component.generates and recipe.backends:  # a stage that makes the teacher write
        shared["backends"] = {role: backend_view(spec, catalogue) for role, spec in sorted(recipe.backends.items())}
    return shared


def stage_hash(recipe: Any, stage: Any, previous: str, inputs: dict[str, str], catalogue: Any) -> str:
    """The stage's identity.

    :param recipe: the run's :class:`~reasondistill.recipe.Recipe`.
    :param stage: the :class:`~reasondistill.recipe.ResolvedStage` (its spec, component, options).
    :param previous: the hash of the stage before it ("" for the first).
    :param inputs: fingerprints of the files outside the run it reads (``input_fingerprints``).
    """
    return canonical_hash({
        "uses": stage.spec.uses,
        "options": stage_options_view(stage.options, catalogue),
        "inputs": stage.spec.inputs,
        "shared": shared_settings(recipe, stage, catalogue),
        "previous": previous,
        "external": inputs,
    })
