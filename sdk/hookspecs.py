"""The hook specifications of reasondistill: the whole plugin contract in one place.

Every hook that builds the catalogue receives a ``register`` callback (the simonw/llm style), so a
plugin adds any number of components without returning lists. Built-in plugins use exactly the
same hooks, loaded through the same ``reasondistill`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # imports for annotations only; hookspecs stay import-light
    from .components import (
        Annotator,
        DistillLoss,
        ModelSource,
        Selector,
        Stage,
        Student,
    )
    from .domain import Domain
    from .generators import GenerationBackend
    from .stage_context import RunInfo, StageResult

PROJECT = "reasondistill"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- pipeline and teacher adaptation --------------------------------------------------------


@hookspec
def register_stages(register: Callable[[Stage], None]) -> None:
    """Add pipeline stages a recipe can name (data loading, annotation, distillation, export...).

    Called once when the catalogue is built.

    :param register: call ``register(stage)`` for each :class:`~reasondistill.components.Stage`
        instance; its ``name`` is what a recipe's ``uses:`` refers to.
    :return: nothing; components go through ``register``.
    """


@hookspec
def register_teacher_stages(register: Callable[[Stage], None]) -> None:
    """Add teacher-adaptation stages (domain pre-training, reasoning SFT, preference optimization).

    Called once when the catalogue is built. Teacher stages share the stage namespace with
    :func:`register_stages` but are listed as the teacher family.

    :param register: call ``register(stage)`` for each teacher :class:`Stage`.
    :return: nothing.
    """


# --- reward scoring -------------------------------------------------------------------------


@hookspec
def score_reasoning(example: dict[str, Any], completion: str, domain: Domain) -> dict[str, float] | None:
    """Score one teacher completion on the reward dimensions this plugin owns.

    Called for every candidate completion when preference pairs are built and when the teacher is
    evaluated. The answers of all plugins are merged into one reward vector; two plugins must not
    return the same dimension name.

    :param example: the pair the completion answers (``query``, ``item``, optional gold ``label``).
    :param completion: the raw text the teacher generated; may be empty or unparseable.
    :param domain: the run's domain, which parses the completion.
    :return: ``{dimension: score}`` with scores in [0, 1] (higher is better), or ``None`` to
        abstain. Must not raise on malformed completions.
    """


@hookspec
def reward_dimensions() -> list[str]:
    """Declare the reward dimensions this plugin's :func:`score_reasoning` returns.

    Read when the catalogue is built, so ``validate`` rejects a ``reward_weights`` key that no
    scorer scores, and two plugins scoring one dimension, before any work is done. Every plugin
    that implements :func:`score_reasoning` must implement this too; returning a dimension it did
    not declare is an error naming the plugin.

    :return: dimension names; a name ending in ``*`` declares a prefix (``learned_*``) for
        dimensions known only at run time.
    """


@hookspec(firstresult=True)
def aggregate_reward(scores: dict[str, float], weights: dict[str, float]) -> float | None:
    """Combine a reward vector into one scalar used to rank completions.

    Called once per scored completion; the first non-``None`` answer wins, so a plugin can replace
    the built-in weighted mean.

    :param scores: the merged reward vector from :func:`score_reasoning`.
    :param weights: the recipe's weight per dimension (missing dimensions weigh 1.0).
    :return: the aggregated reward, or ``None`` to defer to the next implementation.
    """


# --- annotation, students, losses, domains, models ------------------------------------------


@hookspec
def register_annotators(register: Callable[[Annotator], None]) -> None:
    """Add annotators: engines that make the teacher label pairs and write a reasoning chain.

    :param register: call ``register(annotator)`` for each
        :class:`~reasondistill.components.Annotator`.
    :return: nothing.
    """


@hookspec
def register_selectors(register: Callable[[Selector], None]) -> None:
    """Add selection strategies: which pool rows the teacher annotates next (the ``active`` stage).

    Built in: ``uncertainty`` (the student's margin, entropy or top probability, with a cap per
    query so one query cannot take the budget) and ``random`` (the baseline at the same budget).

    :param register: call ``register(selector)`` for each
        :class:`~reasondistill.components.Selector`; its ``name`` is what ``selector:`` names.
    :return: nothing.
    """


@hookspec
def register_generation_backends(register: Callable[[GenerationBackend], None]) -> None:
    """Add generation backends: ways to run the teacher (a local model, a server, an API).

    Every stage that makes the teacher write gets its :class:`~reasondistill.generators.Generator`
    from the backend the recipe names (``backends.teacher`` or a stage's ``backend`` option).

    :param register: call ``register(backend)`` for each
        :class:`~reasondistill.generators.GenerationBackend`; its ``name`` is what ``uses:`` names.
    :return: nothing.
    """


@hookspec
def register_students(register: Callable[[Student], None]) -> None:
    """Add student model builders (the fast model that serves relevance at inference).

    Each must subclass :class:`~reasondistill.components.Student`, whose abstract methods are the
    contract (tokenize, encode the views of :mod:`reasondistill.views`, build a
    :class:`~reasondistill.components.StudentNetwork`); anything else is refused at registration.

    :param register: call ``register(student)`` for each :class:`~reasondistill.components.Student`.
    :return: nothing.
    """


@hookspec
def register_distill_losses(register: Callable[[DistillLoss], None]) -> None:
    """Add distillation losses (CRSD, plain CE, logit KD, ...).

    :param register: call ``register(loss)`` for each :class:`~reasondistill.components.DistillLoss`.
    :return: nothing.
    """


@hookspec
def register_domains(register: Callable[[Domain], None]) -> None:
    """Add search domains: how pairs render into prompts and student inputs, and the label scale.

    :param register: call ``register(domain)`` for each :class:`~reasondistill.domain.Domain`.
    :return: nothing.
    """


@hookspec
def register_models(register: Callable[[ModelSource], None]) -> None:
    """Add named model sources a recipe can use instead of a path or hub id.

    :param register: call ``register(source)`` for each :class:`~reasondistill.components.ModelSource`.
    :return: nothing.
    """


# --- lifecycle ------------------------------------------------------------------------------


@hookspec
def on_stage_end(run: RunInfo, stage: str, result: StageResult) -> None:
    """React to a finished stage (reports, experiment trackers, notifications).

    Called after a stage's manifest is written, also for stages skipped as up to date
    (``result.skipped`` is then true). Errors raised here are reported with the plugin's name and
    fail the run, but never lose the stage's results.

    :param run: the run's name, directory and recipe.
    :param stage: the stage's name in the recipe.
    :param result: outputs, metrics and timings of the stage.
    :return: nothing.
    """
