"""The plugin manager and the typed facade the engine calls hooks through.

Built-ins and third-party plugins load the same way: entry points in the ``reasondistill`` group.
Environment switches (read when the manager is built):

- ``REASONDISTILL_PLUGINS=a,b``: allow-list of entry-point names to load (default: all).
- ``REASONDISTILL_BLOCK_PLUGINS=a,b``: entry-point names never to load.
- ``REASONDISTILL_TRACE=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from typing import Any, Iterator

import pluggy
from pydantic import ValidationError

import reasondistill.hookspecs as hookspecs

from .catalogue import REGISTER_HOOKS, Catalogue, admit
from .errors import PluginError, RecipeError, recipe_error
from .reward_scores import aggregate_by_weights, checked_score

ENTRY_POINT_GROUP = hookspecs.PROJECT


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name, "").strip()
    return {p.strip() for p in raw.split(",") if p.strip()} if raw else None


def build_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs added and the allowed entry points loaded."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    allow, block = _env_list("REASONDISTILL_PLUGINS"), _env_list("REASONDISTILL_BLOCK_PLUGINS")
    if load_entry_points:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if (allow is not None and ep.name not in allow) or (block and ep.name in block):
                continue
            if pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party package must name itself
                raise PluginError(ep.name, "load", f"cannot import {ep.value} ({type(exc).__name__}: {exc}); "
                                  f"to run without it, set REASONDISTILL_BLOCK_PLUGINS={ep.name}") from exc
            _register(pm, plugin, ep.name)
    return pm


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register and check one plugin; a misspelled hook, a bad parameter or a wrapper is refused.

    Wrappers (``wrapper=True`` / ``hookwrapper=True``) are refused rather than half-supported:
    :class:`Hooks` calls each implementation on its own, so that a failure names its plugin, and a
    wrapper would silently run as a plain implementation.
    """
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
        for caller in pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                    raise pluggy.PluginValidationError(plugin, f"hook {caller.name!r} is a wrapper; reasondistill "
                                                       "calls each implementation on its own, so wrappers are not supported")
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)  # pluggy >= 1.5: None, not an error, where it never got in
        raise PluginError(name, "register", str(exc)) from exc


class Hooks:
    """Typed facade over the plugin manager: the engine never calls hooks with loose kwargs.

    Every hook is called one implementation at a time (in pluggy's order), so that a failure, or a
    duplicate component name, names the plugin responsible; ``REASONDISTILL_TRACE=1`` writes each
    call and its result to stderr. Wrappers are refused at registration (see :func:`_register`).
    """

    def __init__(self, pm: pluggy.PluginManager | None = None):
        self.pm = pm if pm is not None else build_plugin_manager()
        self._catalogue: Catalogue | None = None
        self.trace = bool(os.environ.get("REASONDISTILL_TRACE"))

    # --- plugins ------------------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object (module or instance); misspelled hooks fail loudly."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        _register(self.pm, plugin, name)
        self._catalogue = None
        return name

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._catalogue = None

    def implementers(self) -> dict[str, list[str]]:
        """Every hook spec and the plugins implementing it (in call order)."""
        return {
            hook: [impl.plugin_name for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls())]
            for hook in sorted(_spec_names())
        }

    def _call(self, impl: Any, hook: str, kwargs: dict[str, Any]) -> Any:
        """Call one implementation, naming its plugin if it raises."""
        try:
            result = impl.function(*[kwargs[a] for a in impl.argnames])
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(impl.plugin_name, hook, f"{type(exc).__name__}: {exc}") from exc
        if self.trace:
            sys.stderr.write(f"[reasondistill] {hook} <- {impl.plugin_name}: {result!r}\n")
        return result

    def _each(self, hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call each implementation of ``hook`` in pluggy's order (last registered first)."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            yield impl.plugin_name, self._call(impl, hook, kwargs)

    # --- catalogue ----------------------------------------------------------------------------
    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            self._catalogue = self._build_catalogue()
        return self._catalogue

    def _build_catalogue(self) -> Catalogue:
        cat = Catalogue()
        for hook, (kind, family) in REGISTER_HOOKS.items():
            for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
                collected: list[Any] = []
                returned = self._call(impl, hook, {"register": collected.append})
                if returned is not None:  # components returned instead of registered would vanish
                    raise PluginError(impl.plugin_name, hook, f"returned {type(returned).__name__}; call "
                                      "register(component) for each component and return nothing")
                for comp in collected:
                    admit(cat, kind, family, comp, impl.plugin_name, hook)
        self._add_dimensions(cat)
        return cat

    def _add_dimensions(self, cat: Catalogue) -> None:
        """Collect declared reward dimensions; a clash or an undeclaring scorer names its plugin."""
        for impl in self.pm.hook.reward_dimensions.get_hookimpls():  # first registered first: blame the newcomer
            dims = self._call(impl, "reward_dimensions", {})
            if not isinstance(dims, (list, tuple)) or not all(isinstance(d, str) and d for d in dims):
                raise PluginError(impl.plugin_name, "reward_dimensions", f"returned {dims!r}, not a list of names")
            for dim in dims:
                if dim in cat.dimensions:
                    raise PluginError(impl.plugin_name, "reward_dimensions",
                                      f"dimension {dim!r} is already scored by plugin {cat.dimensions[dim]!r}")
                cat.dimensions[dim] = impl.plugin_name
        declaring = set(cat.dimensions.values())
        for impl in self.pm.hook.score_reasoning.get_hookimpls():
            if impl.plugin_name not in declaring:
                raise PluginError(impl.plugin_name, "score_reasoning", "scores without declaring its dimensions; "
                                  "add a reward_dimensions hookimpl returning their names")


    # --- typed hook calls ---------------------------------------------------------------------
    def score_reasoning(self, example: dict[str, Any], completion: str, domain: Any) -> dict[str, float]:
        """The merged reward vector of all scorer plugins; a duplicated dimension is an error."""
        vector: dict[str, float] = {}
        owner: dict[str, str] = {}
        for plugin, scores in self._each("score_reasoning", example=example, completion=completion, domain=domain):
            if scores is not None and not isinstance(scores, dict):
                raise PluginError(plugin, "score_reasoning", f"returned {type(scores).__name__}, not a dict or None")
            for dim, value in (scores or {}).items():
                if self.catalogue.scorer_of(dim) != plugin:
                    raise PluginError(plugin, "score_reasoning", f"returned dimension {dim!r}, which it did not "
                                      "declare in reward_dimensions")
                if dim in owner:
                    raise PluginError(plugin, "score_reasoning", f"dimension {dim!r} is already scored by {owner[dim]!r}")
                owner[dim] = plugin
                vector[dim] = checked_score(plugin, dim, value)
        return vector

    def aggregate_reward(self, scores: dict[str, float], weights: dict[str, float]) -> float:
        """One scalar from a reward vector (first plugin answer wins; weighted mean otherwise)."""
        for _, value in self._each("aggregate_reward", scores=scores, weights=weights):
            if value is not None:
                return float(value)
        return aggregate_by_weights(scores, weights)

    def on_stage_end(self, run: Any, stage: str, result: Any) -> None:
        for _ in self._each("on_stage_end", run=run, stage=stage, result=result):
            pass


def _spec_names() -> list[str]:
    return [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "reasondistill_spec")]


_DEFAULT: Hooks | None = None


def get_hooks() -> Hooks:
    """The process-wide facade (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Hooks()
    return _DEFAULT


def reset_hooks() -> None:
    """Forget the process-wide facade, e.g. after installing a plugin distribution."""
    global _DEFAULT
    _DEFAULT = None


def hook_signature(name: str) -> str:
    """``name(param: type, ...) -> return`` exactly as declared in :mod:`hookspecs` (for the docs)."""
    import inspect

    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def validate_nested(context: dict | None, kind: str, name: str, raw: dict[str, Any], field: str) -> Any:
    """Validate ``raw`` with the ``Options`` of component ``kind``/``name``; errors name ``field``.

    Inside a run the recipe's validation passes the catalogue in the pydantic ``context``; options
    built directly in Python (``DistillOptions(...)``) have none and use the installed plugins'
    (:func:`get_hooks`), as every public entry point does.
    """
    catalogue = (context or {}).get("catalogue") or get_hooks().catalogue
    component = catalogue.get(kind, name, field)
    try:
        return component.options(raw, context=context)
    except ValidationError as exc:
        err = recipe_error(exc, prefix=field)
        raise RecipeError(err.field, err.message) from None
