"""Turn an exception raised inside a stage into one line naming the stage, the plugin and where.

A stage runs code from several plugins: the stage's own, the domain's, scorers, the student, the
loss. When one of them raises (a domain whose ``parse_completion`` fails, a ``max_length`` shorter
than the prompts deep inside trl), the user needs to know whose code it was, not a 40-line
traceback. The culprit is the innermost frame of the traceback that belongs to a registered
plugin: a method of a registered component or plugin object, or a function of a plugin module.
The traceback stays attached (``__cause__``) and the CLI prints it under ``-v``.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Iterator

from .errors import ReasonDistillError


class StageError(ReasonDistillError, RuntimeError):
    """Plugin code raised while a stage ran; names the stage, the plugin and the function."""

    def __init__(self, stage: str, plugin: str | None, where: str | None, message: str):
        self.stage, self.plugin, self.where = stage, plugin, where
        culprit = f" in plugin {plugin!r} ({where})" if plugin else ""
        super().__init__(f"stage {stage!r} failed{culprit}: {message}")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened to ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _owners(hooks: Any) -> tuple[dict[type, str], dict[str, str]]:
    """Plugin names by component/plugin-object type and by plugin module name."""
    by_type: dict[type, str] = {}
    by_module: dict[str, str] = {}
    for name, plugin in hooks.pm.list_name_plugin():
        if isinstance(plugin, types.ModuleType):
            by_module[plugin.__name__] = name
        elif plugin is not None:
            by_type.setdefault(type(plugin), name)
    for entries in hooks.catalogue.entries.values():
        for entry in entries.values():
            by_type.setdefault(type(entry.component), entry.plugin)
    return by_type, by_module


def blame(exc: BaseException, hooks: Any) -> tuple[str | None, str | None]:
    """``(plugin, "Class.method" or "module.function")`` of the innermost plugin frame, or Nones."""
    try:
        by_type, by_module = _owners(hooks)
    except Exception:  # the catalogue itself is broken: nothing better to say than the error
        return None, None
    tb, found = exc.__traceback__, (None, None)
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        name = frame.f_code.co_name
        for klass in type(owner).__mro__ if owner is not None else ():
            if klass in by_type:
                found = by_type[klass], f"{type(owner).__name__}.{name}"
                break
        else:
            module = frame.f_globals.get("__name__", "")
            if module in by_module:
                found = by_module[module], f"{module.rsplit('.', 1)[-1]}.{name}"
        tb = tb.tb_next
    return found


@contextmanager
def stage_failures(stage: str, hooks: Any) -> Iterator[None]:
    """Re-raise what a stage's code raises as one line naming stage and plugin.

    Our own errors (bad data, a plugin error already named) keep their type and gain the stage's
    name; anything else becomes a :class:`StageError`. ``KeyboardInterrupt`` passes untouched.
    """
    try:
        yield
    except StageError:
        raise
    except ReasonDistillError as exc:
        if getattr(exc, "stage", None) is None:
            exc.stage = stage
            exc.args = (f"stage {stage!r}: {exc}",)
        raise
    except Exception as exc:
        plugin, where = blame(exc, hooks)
        raise StageError(stage, plugin, where, one_line(exc)) from exc
