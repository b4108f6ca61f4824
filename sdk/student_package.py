"""The shippable student: a hub-ready folder with weights, tokenizer, ONNX files, lineage and a card.

Layout (``runs/<run>/export/model``)::

    config.json  model.safetensors  tokenizer.json  tokenizer_config.json  reasondistill.json
    onnx/model.onnx  onnx/model.int8.onnx  (+ tokenizer, so onnx/ serves on its own)
    lineage.json     what the card says, as data (``GET /metadata`` of ``reasondistill serve``)
    README.md        the model card, written from the run's manifests

``reasondistill push RUN --repo-id ID`` uploads exactly this folder with ``huggingface_hub``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .fingerprint import canonical_hash, portable_ref
from .manager import get_hooks
from .predictor import META, student_meta
from .run_summary import run_stages
from .student_io import TRAINED_OUTPUTS
from .version import __version__

LINEAGE = "lineage.json"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "reasondistill.json", "onnx/model.onnx",
            LINEAGE, "README.md")


def lineage(run_dir: Path, export_metrics: dict[str, Any], student: Path | None = None) -> dict[str, Any]:
    """What produced the student, read from the run's recipe and manifests: the stage whose folder
    holds ``student`` (the exported one), else the run's last ``distill`` stage."""
    recipe = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    stages = run_stages(run_dir)
    out: dict[str, Any] = {"run": run_dir.name, "recipe_hash": canonical_hash(recipe)[:16],
                           "domain": recipe.get("domain"), "reasondistill": __version__,
                           "stages": {name: (m or {}).get("hash", "")[:16] for name, m in stages}}
    by_use = {(m or {}).get("uses"): (name, m) for name, m in stages if m}
    if "annotate" in by_use:
        name, m = by_use["annotate"]
        metrics = m["metrics"]
        out["teacher"] = _teacher_id(run_dir / name / m["outputs"]["annotations"]["path"])
        out["annotations"] = {k: metrics[k] for k in ("pairs", "parse_rate", "failed", "teacher_macro_f1",
                                                      "teacher_accuracy", "dev_teacher_macro_f1", "label_probs_share",
                                                      "teacher_requests", "teacher_failed_attempts",
                                                      "teacher_prompt_tokens", "teacher_completion_tokens",
                                                      "teacher_cost") if k in metrics}
    else:
        out["teacher"] = portable_ref(recipe.get("models", {}).get("teacher"))
    trainer = by_use.get("distill")
    owner = _owning_stage(run_dir, student)
    if owner is not None:
        trainer = next(((n, m) for n, m in stages if n == owner and m), trainer)
    if trainer is not None:
        name, m = trainer
        out["student"] = {"base_model": portable_ref(recipe.get("models", {}).get("student")), "loss": m["options"].get("loss") or (m["options"].get("distill") or {}).get("loss"),
                          "train_rows": m["metrics"].get("train_rows"), "steps": m["metrics"].get("steps"),
                          "class_weights": m["metrics"].get("class_weights"),
                          "calibration": {k.removeprefix("calibration_"): v for k, v in m["metrics"].items()
                                          if k.startswith("calibration_")} or None}
        out["dev_metrics"] = {k.removeprefix("dev_"): v for k, v in m["metrics"].items() if k.startswith("dev_")}
        out["retention"] = {k.removeprefix("vs_teacher_"): v for k, v in m["metrics"].items()
                            if k.startswith("vs_teacher_")}
        if m["metrics"].get("ship_check_line"):
            out["ship_check"] = m["metrics"]["ship_check_line"]
        gate = (m.get("options") or {}).get("gate")
        gate_m = next((g["metrics"] for n, g in stages if g and gate and n == gate.split(".")[0]), None)
        if gate_m:  # the gate this student read: its verdict and both numbers
            out["gate"] = {k: gate_m.get(k) for k in ("verdict", "teacher_macro_f1", "reference_macro_f1", "pairs")}
            out["gate"]["line"] = gate_m.get("verdict_line")
    out["export"] = export_metrics
    return out


def _owning_stage(run_dir: Path, student: Path | None) -> str | None:
    """The run's stage whose folder holds ``student``, or None (a folder outside the run)."""
    if student is None:
        return None
    try:
        return Path(student).resolve().relative_to(Path(run_dir).resolve()).parts[0]
    except (ValueError, IndexError):
        return None


def _weights(weights: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {w:g}" for name, w in weights.items()) if weights else "none"


def _calibration(cal: dict[str, Any] | None) -> str:
    if not cal:
        return "none"
    return (f"logit offsets {_weights(cal['offsets'])}; held-out dev macro-F1 {cal['heldout_macro_f1_before']} -> "
            f"{cal['heldout_macro_f1_after']} ({cal['heldout_rows']} rows not used to fit them)")


def _teacher_id(annotations: Path) -> str | None:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(annotations))
        return ds[0]["teacher"] if len(ds) and "teacher" in ds.column_names else None
    except (FileNotFoundError, ValueError):
        return None


def model_card(info: dict[str, Any], labels: list[str]) -> str:
    """A README with hub front matter; every figure comes from ``info`` (the lineage)."""
    import yaml

    front = {"library_name": "transformers", "pipeline_tag": "text-classification",
             "tags": ["reasondistill", "relevance", "cross-encoder", "knowledge-distillation", "onnx"],
             "metrics": ["f1"]}
    student = info.get("student") or {}
    base = student.get("base_model")
    if base and "/" in base and not base.startswith(("/", ".")):
        front["base_model"] = base
    tables = {k: _table(info.get(key) or {}) for k, key in (("dev", "dev_metrics"), ("retention", "retention"),
                                                            ("export", "export"), ("annotations", "annotations"))}
    return MODEL_CARD.format(
        front=yaml.safe_dump(front, sort_keys=False).strip(), run=info["run"], n_labels=len(labels),
        label_list=", ".join(f"`{x}`" for x in labels), max_grade=max(1, len(labels) - 1), teacher=info.get("teacher"),
        base=base, loss=student.get("loss"), train_rows=student.get("train_rows"),
        class_weights=_weights(student.get("class_weights")), calibration=_calibration(student.get("calibration")),
        gate=(info.get("gate") or {}).get("line") or "none", ship_check=info.get("ship_check") or "none",
        domain=info.get("domain"), recipe_hash=info.get("recipe_hash"), version=info.get("reasondistill"), **tables)


def _table(data: dict[str, Any]) -> str:
    body = "\n".join(f"| {k} | {v} |" for k, v in data.items()) or "| (none recorded) | |"
    return f"| metric | value |\n|---|---|\n{body}"


#: the model card's text; :func:`model_card` fills it from the lineage
MODEL_CARD = """---
{front}
---

# {run}: a distilled relevance student

Scores how relevant an item is to a search query, as one of {n_labels} grades
({label_list}), in milliseconds on a CPU. Distilled by
reasondistill (Contrastive Reasoning Self-Distillation, arXiv 2510.11056) from
the annotations of a reasoning LLM teacher; at inference it reads only the query and the item.

## Use

```bash
reasondistill serve .            # POST /score {{"pairs": [{{"query": "...", "item": "..."}}]}}
```

```python
from reasondistill.onnx_export import OnnxPredictor
probs = OnnxPredictor("onnx", "int8").predict_proba(["cordless drill"], ["20V cordless drill, 2 batteries"])
```

The ranking score is the expected grade scaled to [0, 1]: `sum(p_i * i) / {max_grade}`.

## Lineage

| | |
|---|---|
| teacher | `{teacher}` |
| student base | `{base}` |
| loss | {loss} |
| training rows | {train_rows} |
| class weights | {class_weights} |
| calibration | {calibration} |
| quality gate | {gate} |
| ship check | {ship_check} |
| domain | {domain} |
| recipe hash | `{recipe_hash}` |
| reasondistill | {version} |

Teacher annotations:

{annotations}

## Metrics on the gold dev split

{dev}

Against the teacher on the same dev pairs (retention = student / teacher):

{retention}

## Export

{export}

Agreement is the share of dev pairs whose ONNX label equals the torch fp32 label; latency is the
median of batch-1 calls on the machine that ran the export.

## Intended use and limits

- Relevance of items to queries in the **{domain}** domain it was trained on, as a fast
  re-ranking or filtering signal. Other domains, languages or label scales need their own run.
- It learned from a teacher's labels: it inherits the teacher's mistakes and cannot be more right
  than the annotations allow (see the teacher's figures above and the retention table).
- The dev figures are measured on the run's gold dev split, not on live traffic: check the student on
  your own queries before you ship it.
"""


def start_package(student: Path, out: Path) -> Path:
    """``out`` as a fresh copy of the student's ``save_pretrained`` folder; ONNX files go in ``out/onnx``."""
    if out.exists():
        shutil.rmtree(out)

    shutil.copytree(student, out, ignore=shutil.ignore_patterns(TRAINED_OUTPUTS))
    return out / "onnx"


def finish_package(run_dir: Path, out: Path, export_metrics: dict[str, Any], student: Path | None = None) -> Path:
    """Write the lineage (of ``student``, the folder exported) and the model card into ``out`` and
    check nothing is missing."""
    info = lineage(run_dir, export_metrics, student)
    (out / LINEAGE).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    labels = json.loads((out / "reasondistill.json").read_text()).get("labels", []) \
        if (out / "reasondistill.json").exists() else []
    (out / "README.md").write_text(model_card(info, labels), encoding="utf-8")
    missing(out, raise_error=True)
    return out


def missing(folder: Path, raise_error: bool = False) -> list[str]:
    """Files a complete package lacks (none when it is ready to upload)."""
    absent = [f for f in REQUIRED if not (Path(folder) / f).exists()]
    if absent and raise_error:
        raise ArtifactError(f"{folder}: the student package lacks {', '.join(absent)}")
    return absent


def read_lineage(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / LINEAGE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def find_package(target: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A package folder, or the one a run's export stage wrote (``RUN`` or ``runs/RUN``)."""
    for candidate in (Path(target), Path(runs_dir) / str(target)):
        if (candidate / "reasondistill.json").exists() and (candidate / "onnx").exists():
            return candidate
        if (candidate / "recipe.json").exists():
            for name, manifest in reversed(run_stages(candidate)):
                if manifest and "model" in manifest.get("outputs", {}):
                    return candidate / name / manifest["outputs"]["model"]["path"]
            raise ArtifactError(f"{candidate}: no finished stage wrote a student package (run an export stage)")
    raise ArtifactError(f"{target}: neither a student package folder nor a run (looked in {runs_dir} too)")


def student_component(model_dir: str | Path, hooks: Any = None) -> Any:
    """The registered :class:`~reasondistill.Student` that trained the student in ``model_dir``
    (named in its ``reasondistill.json``): it supplies the predictor and the ONNX export."""
    name = student_meta(model_dir).get("student") or "encoder-classifier"
    return (hooks or get_hooks()).catalogue.get("student", name, f"{Path(model_dir) / META}: student")
