"""The default way a student network goes to disk and comes back: every parameter its forward uses.

``network.model.save_pretrained`` keeps the folder a plain Hugging Face sequence classifier (hub
upload, ``AutoModelForSequenceClassification``), but a third-party network may train parameters
outside ``model``: a head over [CLS], a pooling layer. Those go to ``network.safetensors`` beside
the weights, and loading rebuilds the network with the student's own ``build`` before reading them
back, so the predictor, the ONNX export and the server run exactly what was trained (issue 33: a
custom head was silently dropped on save). ``extra`` holds the loss's training-only parameters
(a projection head) and is not saved.

:func:`check_round_trip` is the guard: the stage compares the reloaded student with the network in
memory and fails naming the plugin when they differ, whatever ``save`` a plugin wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import PluginError
from .predictor import student_meta
from .runtime import current

NETWORK_FILE = "network.safetensors"
TRAINED_OUTPUTS = "trained_outputs.json"


def outside_parameters(network: Any) -> dict[str, Any]:
    """The state of ``network`` that ``network.model.save_pretrained`` does not write."""
    return {k: v for k, v in network.state_dict().items() if not k.startswith(("model.", "extra."))}


def save_network(network: Any, tokenizer: Any, folder: Path, plugin: str) -> None:
    if not hasattr(getattr(network, "model", None), "save_pretrained"):
        raise PluginError(plugin, "Student.save", f"the default save needs network.model.save_pretrained; a "
                          f"{type(network).__name__} has none: override save and predictor")
    from safetensors.torch import save_file

    folder = Path(folder)
    network.model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    rest = outside_parameters(network)
    if rest:  # clone: a head that shares a tensor with the model must not make safetensors refuse
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in rest.items()}, str(folder / NETWORK_FILE))
    elif (folder / NETWORK_FILE).exists():
        (folder / NETWORK_FILE).unlink()


def load_network(student: Any, folder: Path, inference: bool = True) -> Any | None:
    """The network ``student.build`` makes from ``folder`` with its ``network.safetensors`` read
    back; ``None`` when the folder has no parameters outside the sequence classifier."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / NETWORK_FILE).exists():
        return None
    meta = student_meta(folder)
    labels = meta.get("labels") or []
    network = student.build(str(folder), len(labels), student.options(meta.get("student_options") or {}))
    state = load_file(str(folder / NETWORK_FILE))
    missing = set(outside_parameters(network)) - set(state)
    unexpected = set(state) - set(network.state_dict())
    if missing or unexpected:
        raise PluginError(student.name, "Student.build", f"{folder / NETWORK_FILE} does not fit the network build "
                          f"makes (missing: {sorted(missing)}, unexpected: {sorted(unexpected)})")
    network.load_state_dict(state, strict=False)
    return current().place(network, inference=inference).eval()


def write_trained_outputs(folder: Path, queries: list[str], items: list[str], probs: Any) -> None:
    """The in-memory network's probabilities on a few rows: the reference every reload (and the
    ONNX export's agreement) is held to."""
    (Path(folder) / TRAINED_OUTPUTS).write_text(json.dumps(
        {"queries": queries, "items": items, "probs": [[round(float(p), 6) for p in row] for row in probs]}),
        encoding="utf-8")


def read_trained_outputs(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / TRAINED_OUTPUTS
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def check_round_trip(student: Any, folder: Path, plugin: str, tolerance: float | None = None) -> float:
    """Reload the saved student from ``folder`` and compare its probabilities with the trained
    network's (``trained_outputs.json``); returns the largest difference.

    Raises :class:`PluginError` naming ``plugin`` when a label differs or a probability moves by more
    than ``tolerance`` (default: 1e-3 when the reload runs in fp32, 0.05 in a reduced precision).
    """
    import numpy as np

    ref = read_trained_outputs(folder)
    if not ref or not ref["queries"]:
        return 0.0
    predictor = student.predictor(Path(folder))
    got = np.asarray(predictor.predict_proba(ref["queries"], ref["items"]), dtype=np.float64)
    want = np.asarray(ref["probs"], dtype=np.float64)
    if got.shape != want.shape:
        raise PluginError(plugin, "Student.save", f"the saved student in {folder} gives probabilities of shape "
                          f"{got.shape}, the trained network {want.shape}")
    if tolerance is None:
        import torch

        model = getattr(predictor, "model", None)
        params = next(model.parameters(), None) if hasattr(model, "parameters") else None
        tolerance = 1e-3 if params is None or params.dtype == torch.float32 else 0.05
    diff = float(np.abs(got - want).max())
    # a label flip only counts where the trained network was not on a near-tie
    top2 = np.sort(want, -1)[:, -2:]
    flips = int(((got.argmax(-1) != want.argmax(-1)) & (top2[:, 1] - top2[:, 0] > tolerance)).sum())
    if diff > tolerance or flips:
        raise PluginError(plugin, "Student.save", f"the saved student in {folder} does not reproduce the trained "
                          f"network: probabilities differ by up to {diff:.4g} (tolerance {tolerance:g}), {flips} of "
                          f"{len(want)} labels changed. Does save write every parameter forward_view uses?")
    return diff
