"""The checks a student passes around training: its options fit its model's positions, its network
has the contract's shape and runs on real rows before training, and what it saves is what trained."""

from __future__ import annotations

from typing import Any

from reasondistill.components import StudentNetwork
from reasondistill.errors import PluginError, RecipeError
from reasondistill.model_refs import model_max_positions
from reasondistill.predictor import render_items
from reasondistill.student_io import check_round_trip, write_trained_outputs
from reasondistill.student_package import student_component
from reasondistill.views import STANDARD, forward_view, forward_views

REFERENCE_ROWS = 512


def student_component_of(folder, ctx):
    """The predictor of a saved student folder, by the component that trained it."""
    return student_component(folder, ctx.hooks).predictor(folder)


def hold_to_trained_outputs(ctx, component, network, tokenizer, out_dir, train, plugin: str) -> None:
    """Record the in-memory network's probabilities on up to ``REFERENCE_ROWS`` dev (else train)
    rows, then reload the saved folder and fail, naming the student plugin, if it differs: a
    ``save`` that drops a trained parameter never reaches dev metrics, export or the server."""
    source = ctx.load_dataset("dev") if ctx.has_input("dev") else train
    rows = list(source.select(range(min(REFERENCE_ROWS, len(source)))))
    queries, items = render_items(rows, ctx.domain)
    probs = component.predictor(out_dir, network=network, tokenizer=tokenizer).predict_proba(queries, items)
    write_trained_outputs(out_dir, queries, items, probs)
    check_round_trip(component, out_dir, plugin)


def dry_call_network(network: Any, encoded, tokenizer, num_labels: int, needs_reasoning: bool, plugin: str) -> None:
    """Run the network's views on two real rows before training: logits must be ``[rows,
    num_labels]`` and the vector ``[rows, hidden]``, else one line naming the student plugin (not the
    loss that would trip over it at the first step). The RNG state is restored, so training is
    unchanged by the call."""
    import torch

    from reasondistill.training import PairCollator

    rows = [encoded[i] for i in range(min(2, len(encoded)))]
    batch = PairCollator(tokenizer)([{k: v for k, v in r.items() if k not in ("label_probs", "weight")} for r in rows])
    device = next(network.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    hook = "StudentNetwork.forward_shared" if any(k.startswith("shr_") for k in batch) else "StudentNetwork.forward_view"
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            views = forward_views(network, batch) if needs_reasoning else (forward_view(network, batch, STANDARD),)
        except Exception as exc:
            raise PluginError(plugin, hook, f"failed on a batch of {len(rows)} rows: {type(exc).__name__}: {exc}") from exc
    for name, out in zip(("standard", "reasoning"), views):
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise PluginError(plugin, hook, f"the {name} view returned {type(out).__name__}, not (logits, cls) tensors")
        logits, cls = out
        if tuple(logits.shape) != (len(rows), num_labels):
            raise PluginError(plugin, hook, f"the {name} view's logits have shape {tuple(logits.shape)}; the domain has "
                              f"{num_labels} labels, so [{len(rows)}, {num_labels}] for {len(rows)} rows")
        if cls.dim() != 2 or cls.shape[0] != len(rows):
            raise PluginError(plugin, hook, f"the {name} view's vector has shape {tuple(cls.shape)}; "
                              f"[{len(rows)}, hidden] for {len(rows)} rows")


def check_position_limit(context: dict | None, student_options: Any, reasoning_view: bool) -> None:
    """At ``validate``: the student's token budget (``max_length``, plus ``reasoning_tokens`` for
    the reasoning view) fits its model's positions; else an error naming the option and the limit
    (a 100,000-token budget once trained, then failed in the server on a long document)."""
    context = context or {}
    recipe, catalogue = context.get("recipe"), context.get("catalogue")
    length = getattr(student_options, "max_length", None)
    if recipe is None or catalogue is None or not isinstance(length, int):
        return
    ref = recipe.models.get("student")
    limit = model_max_positions(ref, catalogue)
    if not limit:
        return
    if length > limit:
        raise RecipeError("student_options.max_length", f"{length} is above the {limit} positions of the student "
                          f"model {ref!r}; at most {limit}")
    extra = (getattr(student_options, "reasoning_tokens", 0) or 0) if reasoning_view else 0
    if length + extra > limit:
        raise RecipeError("student_options.reasoning_tokens", f"max_length {length} + reasoning_tokens {extra} = "
                          f"{length + extra} is above the {limit} positions of the student model {ref!r} (the "
                          f"reasoning view reads both); at most {limit - length}")


def check_network(network: Any, plugin: str) -> None:
    """What ``Student.build`` returned trains under the losses: a torch module with the
    :class:`~reasondistill.components.StudentNetwork` members; else one line naming the plugin."""
    import torch

    if not isinstance(network, torch.nn.Module) or not isinstance(network, StudentNetwork):
        missing = [m for m in ("forward_view", "hidden_size", "extra") if not hasattr(network, m)]
        raise PluginError(plugin, "Student.build", f"returned a {type(network).__name__}, not a torch.nn.Module with "
                          f"forward_view, hidden_size and extra (missing: {', '.join(missing) or 'torch.nn.Module'}); "
                          "see reasondistill.components.StudentNetwork")
