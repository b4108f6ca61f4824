"""Calibration for macro-F1 (``distill`` option ``calibrate: macro_f1``): per-class logit offsets.

Macro-F1 is decided by the minority class, and argmax over probabilities trained with
cross-entropy favours the majority. Adding an offset ``b_c`` to class ``c``'s logit moves the
decision boundaries without retraining. The offsets are fitted on one half of the dev split (the
other half reports the calibrated score honestly), then added to the bias of the student's final
linear layer, so every path that runs the network (the predictor, ONNX export, ``serve``, a
``transformers`` pipeline on the saved folder) gives the same calibrated labels with no extra
file. scikit-learn's ``TunedThresholdClassifierCV`` does this for binary problems only, so the
small coordinate search is written here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reasondistill.errors import DataError, PluginError
from reasondistill.metrics import classification_metrics
from reasondistill.predictor import render_items

#: offsets tried per class, in logits: -4.0 to 4.0 by 0.1 (tenths of integers, so no float drift);
#: offsets beyond +-4 turn a class on or off wholesale
GRID = np.arange(-40, 41) / 10


def macro_f1(gold: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Macro-F1 over all ``k`` classes (a class never predicted counts 0), as the dev metrics compute it."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, labels=list(range(k)), average="macro", zero_division=0))


def fit_offsets(log_probs: np.ndarray, gold: np.ndarray, rounds: int = 3) -> tuple[np.ndarray, float]:
    """Offsets (class 0 fixed at 0: only differences move an argmax) that maximise macro-F1 of
    ``argmax(log_probs + offsets)`` by coordinate ascent over :data:`GRID`; of equal scores the
    smallest change wins, so a student that is already balanced keeps offsets of 0."""
    k = log_probs.shape[1]
    offsets = np.zeros(k)
    best = macro_f1(gold, (log_probs + offsets).argmax(-1), k)
    for _ in range(rounds):
        changed = False
        for c in range(1, k):
            for value in sorted(GRID, key=abs):
                trial = offsets.copy()
                trial[c] = value
                score = macro_f1(gold, (log_probs + trial).argmax(-1), k)
                if score > best + 1e-12:
                    best, offsets, changed = score, trial, True
        if not changed:
            break
    return offsets, best


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit and report indices: a seeded random half each (the fit half takes the odd row)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: (n + 1) // 2]), np.sort(order[(n + 1) // 2:])


def final_linear(network: Any, num_labels: int, plugin: str) -> Any:
    """The one ``torch.nn.Linear`` with a bias whose outputs are the logits (outside the loss's
    ``extra`` modules); a ``PluginError`` naming the student plugin when there is none or several."""
    import torch

    found = [(name, m) for name, m in network.named_modules() if isinstance(m, torch.nn.Linear)
             and m.out_features == num_labels and m.bias is not None and not name.startswith("extra")]
    if len(found) != 1:
        names = ", ".join(n for n, _ in found) or "none"
        raise PluginError(plugin, "build", f"calibrate: macro_f1 adds the offsets to the bias of the final linear layer; "
                                  f"this student has {len(found)} linear layers with {num_labels} outputs and a bias "
                                  f"({names}), so calibration cannot tell which one gives the logits")
    return found[0][1]


def add_to_bias(network: Any, offsets: np.ndarray, num_labels: int, plugin: str, check: dict[str, Any]) -> None:
    """Add ``offsets`` to the final layer's bias, then check on the ``check`` batch (the standard
    view's inputs) that the logits moved by exactly the offsets: a head that transforms the
    logits after that layer would ship labels nobody measured."""
    import torch

    layer = final_linear(network, num_labels, plugin)
    network.eval()
    original = layer.bias.detach().clone()
    with torch.no_grad():
        before = network.forward_view(**check)[0].float()
        layer.bias += torch.as_tensor(offsets, dtype=layer.bias.dtype, device=layer.bias.device)
        after = network.forward_view(**check)[0].float()
    moved = (after - before).cpu().numpy()
    if not np.allclose(moved, np.broadcast_to(offsets, moved.shape), atol=1e-3):
        with torch.no_grad():
            layer.bias.copy_(original)
        raise PluginError(plugin, "build", "calibrate: the logits did not move by the offsets added to the final linear "
                                  "layer's bias (the head transforms them after it); calibration is not applied")


MIN_ROWS = 20


def calibrate(network: Any, component: Any, tokenizer: Any, out_dir: Any, rows: list[dict[str, Any]],
              domain: Any, max_length: int, seed: int, plugin: str) -> dict[str, Any]:
    """Fit offsets on half of the labelled dev ``rows``, report both halves' macro-F1 and per-class
    F1 on the other half before and after, and add the offsets to ``network``'s final bias."""
    labels = list(domain.labels)
    rows = [r for r in rows if r.get("label") is not None and r["label"] >= 0]
    if len(rows) < MIN_ROWS:
        raise DataError(f"calibrate: the dev split has {len(rows)} labelled rows; calibration needs at least "
                        f"{MIN_ROWS} (half to fit the offsets, half to report them)")
    gold = np.array([int(r["label"]) for r in rows])
    queries, items = render_items(rows, domain)
    probs = component.predictor(out_dir, network=network, tokenizer=tokenizer).predict_proba(queries, items)
    log_probs = np.log(np.clip(probs, 1e-9, None))
    fit, report = halves(len(rows), seed)
    offsets, fitted = fit_offsets(log_probs[fit], gold[fit])
    before, after = log_probs[report].argmax(-1), (log_probs[report] + offsets).argmax(-1)
    k = len(labels)
    metrics: dict[str, Any] = {
        "calibration_offsets": {name: round(float(o), 3) for name, o in zip(labels, offsets)},
        "calibration_fit_rows": int(len(fit)), "calibration_fit_macro_f1": round(fitted, 5),
        "calibration_heldout_rows": int(len(report)),
        "calibration_heldout_macro_f1_before": round(macro_f1(gold[report], before, k), 5),
        "calibration_heldout_macro_f1_after": round(macro_f1(gold[report], after, k), 5)}
    for when, pred in (("before", before), ("after", after)):
        per_class = classification_metrics(gold[report], pred, labels)
        metrics.update({f"calibration_heldout_{key}_{when}": round(v, 5)
                        for key, v in per_class.items() if key.startswith("f1_")})
    if np.any(offsets):
        device = next(network.parameters()).device
        enc = tokenizer(queries[:4], items[:4], truncation="longest_first", max_length=max_length, padding=True,
                        return_tensors="pt")
        check = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
                 "token_type_ids": enc["token_type_ids"].to(device) if "token_type_ids" in enc else None}
        add_to_bias(network, offsets, k, plugin, check)
    return metrics
