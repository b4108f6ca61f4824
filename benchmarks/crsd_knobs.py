"""CRSD's knobs on real gold labels: why the reasoning view costs points when the labels are good.

    python benchmarks/crsd_knobs.py                          # 2,000 Home Depot gold pairs, 3 seeds
    python benchmarks/crsd_knobs.py --seeds 0 --configs ce,crsd   # a quick look

Trains all-MiniLM-L6-v2 students on the same gold pairs with the domain's rule-written rationale
as the reasoning view (no teacher: the labels are right, so any loss below CE is the method's
cost), one student per configuration and seed, and scores them on the gold dev split (macro-F1).
Each seed is one run folder; finished students are reused, so an interrupted call resumes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, table  # noqa: E402

#: name -> (loss, loss options, distill options beyond the shared ones)
CONFIGS: dict[str, tuple[str, dict, dict]] = {
    "ce": ("ce", {}, {}),
    "crsd": ("crsd", {}, {}),  # the paper's defaults: temperature 0.1, w_nce 0.5
    "crsd_hide_verdict": ("crsd", {}, {"hide_verdict": True}),
    "crsd_no_nce": ("crsd", {"w_nce": 0.0}, {}),
    "crsd_kl": ("crsd", {"w_nce": 0.0, "w_kl": 1.0}, {}),
    "crsd_t05_w01": ("crsd", {"temperature": 0.5, "w_nce": 0.1}, {}),
    "crsd_hide_kl": ("crsd", {"w_nce": 0.1, "w_kl": 1.0}, {"hide_verdict": True}),
}


def recipe_for(seed: int, configs: list[str], data: Path, train: int, dev: int, epochs: float, threads: int):
    from reasondistill import Recipe, step

    stages = [step("pairs", name="gold", source=str(data / "train.jsonl"), limit=train,
                   dev_source=str(data / "dev.jsonl"), dev_limit=dev)]
    for name in configs:
        loss, loss_options, extra = CONFIGS[name]
        stages.append(step("distill", name=name, inputs={"dev": "gold"}, train_input="pairs", loss=loss,
                           loss_options=loss_options, domain_rationale=loss != "ce", epochs=epochs, batch_size=32,
                           learning_rate=1e-4, student_options={"max_length": 48, "reasoning_tokens": 64}, **extra))
    return Recipe(name=f"crsd_knobs_s{seed}", domain="product_search", seed=seed,
                  models={"student": "all-minilm-l6-v2"}, runtime={"threads": threads}, stages=stages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--dev", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=0, help="0: the runtime's choice")
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = p.parse_args()

    from reasondistill import Engine

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    scores: dict[str, list[float]] = {c: [] for c in configs}
    reasoning: dict[str, list[float]] = {c: [] for c in configs}
    seconds: dict[str, list[float]] = {c: [] for c in configs}
    for seed in [int(s) for s in args.seeds.split(",")]:
        recipe = recipe_for(seed, configs, args.data, args.train, args.dev, args.epochs, args.threads or "auto")
        res = Engine(runs_dir=args.runs).run(recipe)
        for c in configs:
            m = res[c].metrics
            scores[c].append(m["dev_macro_f1"])
            reasoning[c].append(m.get("dev_reasoning_view_macro_f1", float("nan")))
            seconds[c].append(res[c].seconds)
        print(f"seed {seed}: " + ", ".join(f"{c} {scores[c][-1]:.3f}" for c in configs), flush=True)

    def mean_sd(values):
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    base = statistics.mean(scores["ce"]) if "ce" in scores else None
    rows = []
    for c in configs:
        loss, loss_options, extra = CONFIGS[c]
        delta = f"{100 * (statistics.mean(scores[c]) - base):+.1f}" if base is not None else ""
        rows.append((c, loss, ", ".join(f"{k}={v}" for k, v in {**loss_options, **extra}.items()) or "defaults",
                     mean_sd(scores[c]), delta, mean_sd(reasoning[c]) if loss != "ce" else "",
                     ", ".join(f"{s:.3f}" for s in scores[c]), round(statistics.mean(seconds[c]))))
    print(f"\n{args.train} gold pairs, dev {args.dev}, {args.epochs:g} epochs, seeds {args.seeds}")
    print(table(("config", "loss", "options", "dev macro-F1 (mean ± sd)", "vs ce (points)",
                 "reasoning view macro-F1", "per seed", "seconds"), rows))


if __name__ == "__main__":
    main()
