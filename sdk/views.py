"""The view batch layout: how a student's encoded views travel from ``encode`` to the loss.

CRSD shows each pair to the student twice. A student's :meth:`~reasondistill.Student.encode`
returns token lists under one prefix per view, the collator pads each view, and losses and
evaluation read the views back through :func:`forward_views`. This module is the one place that
knows the prefixes:

- ``std_*``: the standard view, (query, item). Always present; the only view at inference.
- ``rsn_*``: the reasoning-augmented view, (query, item, reasoning), as a second sequence.
- ``shr_*``: both views in one shared sequence (plus ``shr_split``: where the standard part ends),
  for students that implement ``forward_shared``. An encoding has ``rsn_*`` or ``shr_*``, not both.

Each view carries ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` when the tokenizer
makes them); per-row integers (``shr_split``) become 1-D tensors. Beside the views a batch has
``labels``, ``label_probs`` when the training rows have them (one-hot for gold rows mixed with
teacher rows), and ``weight`` when the rows' loss weights differ (``distill`` sources; mean 1 over
the training set): a loss averages its per-row terms with :func:`weighted_mean`.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import PluginError

STANDARD, REASONING, SHARED = "std", "rsn", "shr"
VIEWS = (STANDARD, REASONING, SHARED)


def weighted_mean(values: Any, batch: Mapping[str, Any]) -> Any:
    """The batch mean of per-row loss terms, each row scaled by its ``weight`` when the batch has one.

    Weights are scaled to mean 1 over the training rows (not per batch), so a batch of
    down-weighted rows contributes less, and uniform weights give the plain mean.
    """
    weight = batch.get("weight")
    if weight is None:
        return values.mean()
    return (values * weight.to(values.dtype)).mean()


def key(view: str, name: str) -> str:
    """``key("std", "input_ids")`` -> ``"std_input_ids"``."""
    return f"{view}_{name}"


def prefixed(view: str, encoding: Mapping[str, Any]) -> dict[str, Any]:
    """A tokenizer's output under ``view``'s prefix."""
    return {key(view, k): v for k, v in encoding.items()}


def unprefixed(view: str, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``view``, without the prefix."""
    start = view + "_"
    return {k[len(start):]: v for k, v in batch.items() if k.startswith(start)}


def present(batch: Mapping[str, Any]) -> tuple[str, ...]:
    """The views a batch (or an encoding) carries, in :data:`VIEWS` order."""
    return tuple(v for v in VIEWS if key(v, "input_ids") in batch)


def reasoning_view(batch: Mapping[str, Any]) -> str | None:
    """``"shr"`` or ``"rsn"``: which layout carries the reasoning view, or None."""
    views = present(batch)
    if SHARED in views and REASONING in views:
        raise ValueError("an encoding carries both rsn_* and shr_* views; a student encodes one layout")
    return SHARED if SHARED in views else REASONING if REASONING in views else None


def check_encoding(encoding: Mapping[str, Any], with_reasoning: bool, student: str) -> None:
    """What :meth:`Student.encode` returned follows this layout; errors name the student."""
    def fail(message: str) -> None:
        raise PluginError(student, "Student.encode", message)

    if key(STANDARD, "input_ids") not in encoding or key(STANDARD, "attention_mask") not in encoding:
        fail("returned no std_input_ids/std_attention_mask (see reasondistill.views)")
    try:
        view = reasoning_view(encoding)
    except ValueError as exc:
        fail(str(exc))
    if with_reasoning and view is None:
        fail("the loss needs the reasoning view, but encode returned neither rsn_* nor shr_* keys")
    if view == SHARED and key(SHARED, "split") not in encoding:
        fail("a shared view needs shr_split (where each row's standard part ends)")
    unknown = [k for k in encoding if k.split("_", 1)[0] not in VIEWS and k != "labels"]
    if unknown:
        fail(f"returned keys outside the view layout: {', '.join(sorted(unknown))}")


class ReplicatedStudent:
    """What a loss receives when the Trainer wrapped the student in ``DistributedDataParallel``
    (``torchrun`` with several processes): attributes (``extra``, ``hidden_size``) are the
    student's, and the view passes go through the wrapper's ``forward``, without which DDP would
    not average the gradients across processes. The student's ``forward`` is pointed at a
    dispatcher once, so students need no ``forward`` of their own."""

    def __init__(self, ddp: Any):
        self.ddp = ddp
        module = ddp.module
        if not getattr(module, "_reasondistill_dispatch", False):
            import types

            module.forward = types.MethodType(_dispatch, module)
            module._reasondistill_dispatch = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ddp.module, name)


def _dispatch(self: Any, *args: Any, reasondistill_call: str) -> Any:
    return getattr(self, reasondistill_call)(*args)


def _invoke(student: Any, method: str, *args: Any) -> Any:
    if isinstance(student, ReplicatedStudent):
        return student.ddp(*args, reasondistill_call=method)
    return getattr(student, method)(*args)


def forward_view(student: Any, batch: Mapping[str, Any], view: str) -> tuple[Any, Any]:
    """``(logits, cls)`` of one separate view (``std`` or ``rsn``)."""
    return _invoke(student, "forward_view", batch[key(view, "input_ids")], batch[key(view, "attention_mask")],
                   batch.get(key(view, "token_type_ids")))


def forward_views(student: Any, batch: Mapping[str, Any]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """``((logits, cls) standard, (logits, cls) reasoning)``: one shared pass or two separate ones."""
    if reasoning_view(batch) == SHARED:
        return _invoke(student, "forward_shared", batch[key(SHARED, "input_ids")], batch[key(SHARED, "attention_mask")],
                       batch[key(SHARED, "split")], batch.get(key(SHARED, "token_type_ids")))
    return forward_view(student, batch, STANDARD), forward_view(student, batch, REASONING)


def forward_reasoning(student: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(logits, cls)`` of the reasoning view alone (evaluation's upper bound)."""
    if reasoning_view(batch) == SHARED:
        return forward_views(student, batch)[1]
    return forward_view(student, batch, REASONING)
