"""reasondistill: distil a reasoning LLM teacher into a fast relevance student.

The public API: hook markers, component base classes, recipes and the engine.
"""

from .components import (
    Annotator,
    ComponentRef,
    DistillLoss,
    ModelSource,
    NestedOptions,
    NoOptions,
    Options,
    Selector,
    Stage,
    Student,
)
from .domain import Domain, Parsed
from .engine import Engine
from .errors import ArtifactError, BackendError, DataError, ModelError, PluginError, ReasonDistillError, RecipeError
from .generators import BackendSpec, Generation, GenerationBackend, Generator
from .hookspecs import hookimpl, hookspec
from .manager import Hooks, get_hooks, reset_hooks
from .recipe import Recipe, StageSpec, load_recipe, step
from .stage_context import RunInfo, StageContext, StageResult
from .version import __version__ as __version__

__all__ = [
    "Annotator", "ArtifactError", "BackendError", "BackendSpec", "Generation", "GenerationBackend", "Generator", "ComponentRef", "DataError", "DistillLoss", "Domain", "Engine", "Hooks",
    "ModelError", "ModelSource", "NestedOptions", "NoOptions", "Options", "Parsed", "PluginError", "ReasonDistillError", "Recipe",
    "RecipeError", "RunInfo", "Selector", "Stage", "StageContext", "StageResult", "StageSpec", "Student", "get_hooks",
    "hookimpl", "hookspec", "load_recipe", "reset_hooks", "step",
]
