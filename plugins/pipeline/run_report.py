"""Writes ``runs/<name>/report.md`` and PNG plots after every stage (a lifecycle plugin).

Plots: metrics per stage, loss curves per term, confusion matrices (student on dev, teacher on
dev annotations), reward dimensions before and after DPO, teacher vs student latency.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

from reasondistill import distributed as dist
from reasondistill import hookimpl
from reasondistill.manager import get_hooks
from reasondistill.run_summary import run_stages, run_table, verdict_lines, warning_lines

#: fonts with CJK glyphs, most common first (system fonts, or the ``cjk`` extra's ``mplfonts``)
CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "Noto Sans SC", "SimHei", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "Noto Sans CJK JP", "IPAexGothic")
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """A font family with CJK glyphs, or None. Fonts of the optional ``mplfonts`` package
    (``pip install 'reasondistill[cjk]'``) are registered first."""
    from matplotlib import font_manager

    spec = importlib.util.find_spec("mplfonts")  # its files only: importing it needs more packages
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for font in sorted((Path(folder) / "fonts").glob("*.[ot]tf")):
            font_manager.fontManager.addfont(str(font))
    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in CJK_FAMILIES if n in names), None)


def plot_labels(labels: list[str]) -> tuple[list[str], str | None]:
    """Tick labels the plot can draw, and a note for the report when they had to change.

    DejaVu Sans (matplotlib's default) has no CJK glyphs: Chinese labels came out as empty boxes
    and the QBQTC report was unreadable. With a CJK font installed the labels are drawn as they
    are (the font is a fallback after DejaVu); without one they are numbered, and the report's
    text, which any viewer renders, says which number is which label.
    """
    if not any(_CJK.search(str(label)) for label in labels) or cjk_font():
        return [str(label) for label in labels], None
    note = ", ".join(f"{i} = {label}" for i, label in enumerate(labels))
    return [str(i) for i in range(len(labels))], f"Labels: {note} (for CJK glyphs in plots: pip install 'reasondistill[cjk]')"


def _font_context():
    plt = _plt()
    font = cjk_font()
    return plt.rc_context({"font.family": ["DejaVu Sans", font]} if font else {})


def confusion_png(gold, pred, labels, title: str, path: Path) -> str | None:
    """Write the confusion matrix; returns the label note :func:`plot_labels` made, if any."""
    labels, note = plot_labels(labels)
    with _font_context():
        _save(confusion_figure(gold, pred, labels, title), path)
    return note


def loss_png(history: list[dict], title: str, path: Path) -> bool:
    """Write the loss curves; False (nothing written) when the history has no loss."""
    fig = loss_figure(history, title)
    return fig is not None and _save(fig, path)


def bars_png(groups: dict[str, dict[str, float]], title: str, path: Path, log: bool = False) -> bool:
    """Write grouped bars; False (nothing written) when there is no value to draw."""
    fig = bars_figure(groups, title, log)
    return fig is not None and _save(fig, path)


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=90)  # pragma: no mutate
    _plt().close(fig)
    return True


def confusion_counts(gold, pred, k: int):
    """``[gold, predicted]`` counts; a label outside ``0..k-1`` (-1: no gold label) is left out."""
    import numpy as np

    m = np.zeros((k, k), dtype=int)
    for g, p in zip(gold, pred):
        if 0 <= g < k and 0 <= p < k:
            m[g, p] += 1
    return m


def confusion_figure(gold, pred, labels, title: str):
    """The confusion matrix, each cell's count written in it."""
    plt = _plt()
    k = len(labels)
    m = confusion_counts(gold, pred, k)
    fig, ax = plt.subplots(figsize=(4, 3.6))  # pragma: no mutate
    ax.imshow(m, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="black")  # pragma: no mutate
    ax.set_xticks(range(k), labels, rotation=20, fontsize=8)  # pragma: no mutate
    ax.set_yticks(range(k), labels, fontsize=8)  # pragma: no mutate
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)  # pragma: no mutate
    return fig


def loss_figure(history: list[dict], title: str):
    """One line per loss term (``loss``, ``loss_*``) against the step, or None without any."""
    plt = _plt()
    keys = sorted({k for h in history for k in h if k == "loss" or k.startswith("loss_")})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))  # pragma: no mutate
    for key in keys:
        pts = [(h["step"], h[key]) for h in history if key in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", markersize=3, label=key)  # pragma: no mutate
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)  # pragma: no mutate
    ax.legend(fontsize=7)  # pragma: no mutate
    return fig


def bars_figure(groups: dict[str, dict[str, float]], title: str, log: bool = False):
    """One bar per key and group (a key a group lacks is 0), or None without any key."""
    import numpy as np

    plt = _plt()
    keys = sorted({k for g in groups.values() for k in g})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(4, len(keys) * 0.9), 3))  # pragma: no mutate
    width = 0.8 / max(1, len(groups))  # pragma: no mutate
    for i, (name, values) in enumerate(groups.items()):
        ax.bar(np.arange(len(keys)) + i * width, [values.get(k, 0) for k in keys], width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(groups) - 1) / 2, keys, rotation=25, fontsize=7)  # pragma: no mutate
    ax.set_title(title, fontsize=9)  # pragma: no mutate
    ax.legend(fontsize=7)  # pragma: no mutate
    if log:
        ax.set_yscale("log")
    return fig


def write_report(run_dir: Path) -> Path:
    """Regenerate report.md and the plots from the manifests and stage files."""
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    lines = [f"# Run `{run_dir.name}`", "", "```", run_table(run_dir), "```", ""]
    verdicts = verdict_lines(run_dir) + warning_lines(run_dir)
    lines += [f"**{line}**" for line in verdicts] + ([""] if verdicts else [])
    lines += ["## Every metric", "", "```", run_table(run_dir, full=True), "```", ""]
    stages = run_stages(run_dir)
    headline: dict[str, float] = {}
    latency: dict[str, float] = {}
    for name, manifest in stages:
        if not manifest:
            continue
        m, folder = manifest.get("metrics", {}), run_dir / name
        for key in ("dev_macro_f1", "teacher_macro_f1", "dev_teacher_macro_f1", "parse_rate", "agreement_int8"):
            if isinstance(m.get(key), (int, float)):
                headline[f"{name}:{key}"] = m[key]
        hist = folder / "loss_history.json"
        if hist.exists() and loss_png(json.loads(hist.read_text()), f"{name}: loss per term", plots / f"{name}_loss.png"):
            lines += [f"## {name}: loss", "", f"![{name} loss](plots/{name}_loss.png)", ""]
        preds = folder / "dev_predictions.json"
        if preds.exists():
            p = json.loads(preds.read_text())
            note = confusion_png(p["gold"], p["pred"], p["labels"], f"{name}: student on dev", plots / f"{name}_confusion.png")
            lines += [f"## {name}: student confusion (dev)", "", f"![confusion](plots/{name}_confusion.png)", ""]
            lines += [note, ""] if note else []
        dev_ann = folder / "dev_annotations"
        if dev_ann.exists():
            from datasets import load_from_disk

            ds = load_from_disk(str(dev_ann))
            labels = json.loads((run_dir / "recipe.json").read_text()).get("domain")
            names = _labels(run_dir, labels)
            note = confusion_png(ds["gold_label"], ds["label"], names, f"{name}: teacher on dev",
                                 plots / f"{name}_teacher_confusion.png")
            lines += [f"## {name}: teacher confusion (dev)", "", f"![teacher confusion](plots/{name}_teacher_confusion.png)", ""]
            lines += [note, ""] if note else []
        before = {k[len("before_reward_"):]: v for k, v in m.items() if k.startswith("before_reward_")}
        after = {k[len("after_reward_"):]: v for k, v in m.items() if k.startswith("after_reward_")}
        if before and bars_png({"before DPO": before, "after DPO": after}, f"{name}: reward on held-out prompts",
                               plots / f"{name}_rewards.png"):
            lines += [f"## {name}: reward dimensions before/after DPO", "", f"![rewards](plots/{name}_rewards.png)", ""]
        latency.update({k[len("latency_ms_"):]: v for k, v in m.items() if k.startswith("latency_ms_")})
        if isinstance(m.get("pairs_per_s"), (int, float)) and m["pairs_per_s"] > 0:
            latency[f"teacher ({name})"] = 1000.0 / m["pairs_per_s"]
    if len(latency) > 1 and bars_png({"ms a pair": latency}, "teacher vs student latency (ms a pair)", plots / "latency.png",
                                     log=True):
        lines += ["## Teacher vs student latency", "", "![latency](plots/latency.png)", ""]
    if headline and bars_png({"value": headline}, "headline metrics per stage", plots / "metrics.png"):
        lines[6:6] = ["## Metrics per stage", "", "![metrics](plots/metrics.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _labels(run_dir: Path, domain: str | None) -> list[str]:
    try:
        return list(get_hooks().catalogue.get("domain", domain or "").labels)
    except Exception:
        return ["0", "1", "2"]


@hookimpl
def on_stage_end(run, stage, result):
    if dist.is_main():
        write_report(run.dir)
