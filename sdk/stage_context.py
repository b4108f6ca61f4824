"""What a stage is given and what it gives back: the run it belongs to, its context, its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .errors import ArtifactError, RecipeError
from .model_refs import resolve_model
from .runtime import current

if TYPE_CHECKING:
    from .domain import Domain
    from .manager import Hooks
    from .recipe import Recipe


@dataclass
class RunInfo:
    """A run's name, folder and recipe; passed to lifecycle hooks."""

    name: str
    dir: Path
    recipe: Recipe


@dataclass
class StageResult:
    """What a stage produced: output paths (relative to its folder) and metrics."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0


@dataclass
class StageContext:
    """Everything a running stage may use. Stages write only under ``dir``."""

    name: str
    dir: Path
    run: RunInfo
    hooks: Hooks
    domain: Domain
    resuming: bool
    produced: dict[str, dict[str, Path]]  # earlier stage -> output name -> absolute path
    input_map: dict[str, str] = field(default_factory=dict)
    stage_seed: int | None = None  # the stage's own ``seed``, where its spec sets one

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    @property
    def seed(self) -> int:
        return self.run.recipe.seed if self.stage_seed is None else self.stage_seed

    @property
    def runtime(self) -> Any:
        """Device, dtype, attention kernel and threads of this run (:mod:`reasondistill.runtime`)."""
        return current()

    def has_input(self, name: str) -> bool:
        try:
            self.input(name)
            return True
        except ArtifactError:
            return False

    def input(self, name: str) -> Path:
        """The path of an earlier output: the stage ``inputs`` names, else the latest of that name.

        ``stage.output`` names one stage's output directly.
        """
        stage, dot, out = name.partition(".")
        if dot and stage in self.produced:
            if out not in self.produced[stage]:
                raise ArtifactError(f"stage {self.name!r}: stage {stage!r} has no output {out!r}")
            return self.produced[stage][out]
        if name in self.input_map:
            stage, _, out = self.input_map[name].partition(".")
            out = out or name
            try:
                return self.produced[stage][out]
            except KeyError:
                raise ArtifactError(f"stage {self.name!r}: input {name!r} expects output {out!r} of "
                                    f"stage {stage!r}, which it did not produce") from None
        for outputs in reversed(list(self.produced.values())):
            if name in outputs:
                return outputs[name]
        raise ArtifactError(f"stage {self.name!r} needs an input {name!r}, but no earlier stage produced one")

    def load_dataset(self, name: str) -> Any:
        from datasets import load_from_disk

        # in memory: map/select must never write cache files into an earlier stage's output
        return load_from_disk(str(self.input(name)), keep_in_memory=True)

    def model(self, role: str) -> str:
        """The local folder (or hub id) of the model the recipe assigns to ``role``."""
        ref = self.recipe.models.get(role)
        if ref is None:
            raise RecipeError(f"models.{role}", f"stage {self.name!r} needs a {role} model; set models.{role}")
        return resolve_model(ref, self.hooks, self.domain)

    def progress(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it") -> Any:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=f"{self.name}: {desc}".rstrip(": "), unit=unit, dynamic_ncols=True)
