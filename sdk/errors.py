"""Errors users see. Each names the field, file or plugin at fault in one line."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ReasonDistillError(Exception):
    """Base class: the CLI turns these into a one-line message and exit code 2."""


class RecipeError(ReasonDistillError, ValueError):
    """A recipe that does not validate; ``field`` is the exact path (``stages[1].options.lr``)."""

    def __init__(self, field: str, message: str, source: str | None = None):
        self.field, self.source, self.message = field, source, message
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}")


class DataError(ReasonDistillError, ValueError):
    """Input data that breaks the pairs contract; names the file and the column or row."""


class PluginError(ReasonDistillError, RuntimeError):
    """A plugin that raised or misbehaved; names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, message: str):
        self.plugin, self.hook = plugin, hook
        super().__init__(f"plugin {plugin!r} failed in hook {hook!r}: {message}")


class ArtifactError(ReasonDistillError, RuntimeError):
    """A run artifact that is missing or does not match its recorded fingerprint."""


class ModelError(ReasonDistillError, RuntimeError):
    """A model reference that cannot be resolved offline."""


class BackendError(ReasonDistillError, RuntimeError):
    """A generation backend that cannot do its work (server unreachable, unknown model, refused key);
    names the backend and where it runs, never a credential."""

    def __init__(self, backend: str, where: str, message: str):
        self.backend, self.where = backend, where
        super().__init__(f"backend {backend!r} at {where}: {message}")


def field_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    """``("stages", 1, "options", "lr")`` -> ``stages[1].options.lr``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "recipe"


def recipe_error(exc: ValidationError, prefix: str = "", source: str | None = None) -> RecipeError:
    """The first pydantic error as a one-line :class:`RecipeError`."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = err["msg"]
    if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
        shown = repr(err["input"])
        msg += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    if err["type"] == "extra_forbidden":
        msg = "unknown option"
    return RecipeError(field_path(loc, prefix), msg, source)
