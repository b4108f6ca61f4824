"""Base classes for everything a plugin can register.

A component is an object with a ``name``, a pydantic ``Options`` model (validated from the
recipe with ``extra="forbid"``) and the methods of its kind. Configs are data (``Options``),
behaviour is code (the component), as in trl's config-beside-trainer convention.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from datasets import Dataset

    from .runstore import StageContext, StageResult


class Options(BaseModel):
    """Base for component options: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class NoOptions(Options):
    """For components that take no options."""


class Component(ABC):
    """Common shape: a unique ``name`` per kind, a one-line ``description`` and ``Options``."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = NoOptions

    def options(self, raw: dict[str, Any] | None = None, context: dict | None = None) -> Options:
        """Validate raw recipe options into this component's ``Options`` model."""
        return self.Options.model_validate(raw or {}, context=context)


class Stage(Component):
    """One step of a recipe. ``run`` reads inputs from ``ctx`` and writes outputs under ``ctx.dir``.

    A stage must be resumable: when ``ctx.resuming`` is true the folder holds what an interrupted
    run left, and the stage continues from it instead of starting over.
    """

    kind = "stage"
    family: ClassVar[str] = "pipeline"
    #: the stage makes the teacher write through the recipe's generation backend, so the
    #: recipe's ``backends`` are part of its hash
    generates: ClassVar[bool] = False

    @abstractmethod
    def run(self, ctx: StageContext, options: Any) -> StageResult:
        """Do the stage's work and return its outputs (paths under ``ctx.dir``) and metrics."""

    def input_fingerprints(self, options: Any) -> dict[str, str]:
        """Fingerprints of external inputs (files named in options), part of the stage hash."""
        return {}


class Annotator(Component):
    """Makes a teacher label pairs with a reasoning chain (the annotations contract)."""

    kind = "annotator"

    @abstractmethod
    def annotate(self, ctx: StageContext, pairs: Dataset, teacher: str, options: Any) -> Dataset:
        """Return ``pairs`` plus ``label``, ``reasoning``, ``label_probs``, ``teacher``, ``parse_ok``
        (and ``error`` for rows whose generation failed; the stage redoes those on a rerun).

        ``teacher`` is the local teacher folder, or ``""`` when the recipe has none (a served
        teacher); an annotator that makes the teacher write gets it from
        :func:`reasondistill.generators.load_generator`.
        """


class Student(Component):
    """Builds and loads the fast relevance model."""

    kind = "student"

    @abstractmethod
    def build(self, model: str, num_labels: int, options: Any) -> Any:
        """Return a trainable student (a ``torch.nn.Module``) initialised from ``model``."""


class DistillLoss(Component):
    """A training objective for the student.

    ``needs_reasoning`` tells the trainer whether to encode the reasoning-augmented view.
    """

    kind = "loss"
    needs_reasoning: ClassVar[bool] = False

    @abstractmethod
    def compute(self, student: Any, batch: dict[str, Any], options: Any) -> dict[str, Any]:
        """Return ``{"loss": total, "<term>": value, ...}``; each term is logged on its own."""


class ModelSource(Component):
    """A named model that materialises offline into a local folder (weights + tokenizer)."""

    kind = "model"
    model_kind: ClassVar[str] = "causal-lm"  # or "encoder"

    @abstractmethod
    def materialize(self, cache_dir: Path) -> Path:
        """Create (once) and return the folder ``from_pretrained`` loads."""


def ComponentRef(kind: str) -> Any:
    """An options field naming a registered component of ``kind`` (checked against the catalogue).

    Use as a type: ``loss: ComponentRef("loss") = "crsd"``. The error lists the registered names.
    """
    from typing import Annotated

    from pydantic import ValidationInfo
    from pydantic.functional_validators import AfterValidator

    def check(value: str, info: ValidationInfo) -> str:
        catalogue = (info.context or {}).get("catalogue")
        if catalogue is not None and value not in catalogue.kind(kind):
            names = ", ".join(sorted(catalogue.kind(kind))) or "none"
            raise ValueError(f"unknown {kind} {value!r}; registered: {names}")
        return value

    return Annotated[str, AfterValidator(check)]


def validate_nested(context: dict | None, kind: str, name: str, raw: dict[str, Any], field: str) -> Any:
    """Validate ``raw`` with the ``Options`` of component ``kind``/``name``; errors name ``field``."""
    from pydantic import ValidationError

    from .errors import RecipeError
    from .recipe import recipe_error

    catalogue = (context or {}).get("catalogue")
    if catalogue is None:
        from .manager import get_hooks

        catalogue = get_hooks().catalogue
    component = catalogue.get(kind, name, field)
    try:
        return component.options(raw, context=context)
    except ValidationError as exc:
        err = recipe_error(exc, prefix=field)
        raise RecipeError(err.field, err.message) from None
