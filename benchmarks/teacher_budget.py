"""The teacher's budget on this machine: dev macro-F1 against gold examples seen and training seconds.

    python benchmarks/teacher_budget.py                 # the study's SFT as it ran, and the fast loop
    python benchmarks/teacher_budget.py --configs study,fast_answer_head   # the issue's 5x, side by side
    python benchmarks/teacher_budget.py --configs fast --fast-steps 400

Each configuration is one ``sft`` stage on SmolLM2-135M-Instruct (no dapt, so SFT is all that
differs) over the same Home Depot gold pairs with the domain's rationale, with ``eval_every``:
the stage evaluates its in-training weights on the same dev pairs every N steps
(``curve.json``), so one run per configuration gives the whole curve, and training seconds leave
the evaluations out. Configurations:

- ``study``: the Home Depot study's teacher SFT as it ran (full system prompt, fp32, activation
  checkpointing on, which trl's configs turned on by default), 40 steps of 8.
- ``fast``: ``teacher_prompt: short``, ``runtime.dtype: fastest`` (bf16 where the probe measures
  it faster), checkpointing off, LoRA on the top 10 of 30 layers (``lora_layers``).
- ``fast_all_layers``: ``fast`` with LoRA on every layer, to see what ``lora_layers`` costs.
- ``fast_grouped``: ``fast`` with ``group_by_length`` (batches of rows of similar length: less
  padding). Not a ``--levers`` row: the sampler serves the longest batches first, so a few steps
  would time only those.
- ``fast_answer_head``: ``fast_grouped`` with the output head run on the answer tokens only
  (``answer_head_only``, the default now); every other configuration runs trl's own loss.
- ``fast_answer_head_ungrouped``: ``fast`` with the answer head, random batches (what grouping costs).

``--levers`` instead times a few SFT steps under each lever alone and together (the same pairs,
no evaluation), to say what each one is worth on this machine.

Stages are cached under ``--runs``; a second call only prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, STUDY_REWARD_WEIGHTS, table  # noqa: E402


#: each configuration's sft options beyond the shared ones; every fast one has the short prompt, dtype
#: ``fastest`` and no checkpointing. All but the answer-head ones run trl's own loss, as they were measured.
TRL_LOSS = {"answer_head_only": False}
CONFIGS = {
    "study": TRL_LOSS,
    "fast": {"lora_layers": 10, **TRL_LOSS},
    "fast_all_layers": TRL_LOSS,
    "fast_grouped": {"lora_layers": 10, "group_by_length": True, **TRL_LOSS},
    "fast_answer_head": {"lora_layers": 10, "group_by_length": True},
    "fast_answer_head_ungrouped": {"lora_layers": 10},
}


def recipe_for(config: str, args):
    fast = config != "study"
    steps = args.study_steps if not fast else args.all_layers_steps if config == "fast_all_layers" else args.fast_steps
    sft = dict(max_steps=steps, batch_size=8, max_length=320, learning_rate=5e-4, eval_rows=args.dev,
               eval_every=args.study_every if not fast else args.fast_every, eval_max_new_tokens=args.max_new_tokens,
               gradient_checkpointing=not fast, save_steps=10_000, **CONFIGS[config])
    return sft_recipe(f"budget-{config}", "short" if fast else "full", "fastest" if fast else "auto", sft, args,
                      dev=True)


def sft_recipe(name: str, prompt: str, dtype: str, sft: dict, args, dev: bool):
    """gold pairs -> the domain's rationale -> one ``sft`` stage on SmolLM2 (no dapt)."""
    from reasondistill import Recipe, step

    pairs = dict(dev_source=str(args.data / "dev.jsonl"), dev_limit=args.dev) if dev else dict(dev_fraction=0.0)
    return Recipe(name=name, domain="product_search", models={"teacher": "smollm2-135m-instruct"}, seed=args.seed,
                  teacher_prompt=prompt, runtime={"dtype": dtype}, reward_weights=STUDY_REWARD_WEIGHTS,
                  stages=[step("pairs", source=str(args.data / "train.jsonl"), limit=args.gold, **pairs),
                          step("reasoning", source="domain"), step("sft", **sft)])


#: lever sets for ``--levers``: (name, teacher_prompt, dtype, activation checkpointing, more sft options);
#: every row but the last runs trl's own loss (``answer_head_only: false``), as the study did
LEVERS = [
    ("as the study ran: full prompt, fp32, checkpointing on", "full", "auto", True, {}),
    ("checkpointing off", "full", "auto", False, {}),
    ("+ short prompt", "short", "auto", False, {}),
    ("+ bf16 where faster (dtype fastest)", "short", "fastest", False, {}),
    ("+ LoRA on the top 10 of 30 layers", "short", "fastest", False, {"lora_layers": 10}),
    ("+ output head on the answer tokens only", "short", "fastest", False, {"lora_layers": 10, "answer_head_only": True}),
]


def levers(args) -> None:
    from reasondistill import Engine

    engine, rows = Engine(runs_dir=args.runs), []
    chosen = [int(i) for i in args.lever_rows.split(",")] if args.lever_rows else range(len(LEVERS))
    for i in chosen:
        name, prompt, dtype, checkpointing, more = LEVERS[i]
        sft = dict(max_steps=args.lever_steps, batch_size=8, max_length=320, learning_rate=5e-4,
                   gradient_checkpointing=checkpointing, save_steps=10_000, **{**TRL_LOSS, **more})
        recipe = sft_recipe(f"lever-{i}", prompt, dtype, sft, args, dev=False)
        rows.append((name, engine.run(recipe)["sft"].metrics["step_seconds"]))
    base = rows[0][1]
    print(f"SmolLM2-135M-Instruct SFT, batch 8 of Home Depot gold pairs, {args.lever_steps} steps per row")
    print(table(("levers", "s/step", "examples per second vs the study's"), [(n, s, f"{base / s:.2f}x") for n, s in rows]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-budget")
    p.add_argument("--configs", default="study,fast,fast_all_layers", help="from: " + ", ".join(CONFIGS))
    p.add_argument("--gold", type=int, default=2000)
    p.add_argument("--dev", type=int, default=300)
    p.add_argument("--study-steps", type=int, default=40)
    p.add_argument("--study-every", type=int, default=20)
    p.add_argument("--fast-steps", type=int, default=200)
    p.add_argument("--fast-every", type=int, default=40)
    p.add_argument("--all-layers-steps", type=int, default=80)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levers", action="store_true", help="time each speed lever instead (no evaluation)")
    p.add_argument("--lever-steps", type=int, default=6)
    p.add_argument("--lever-rows", default="", help="only these rows of --levers (0-based, comma-separated; "
                   "ratios are to the first one given)")
    args = p.parse_args()
    if args.levers:
        return levers(args)

    from reasondistill import Engine

    engine = Engine(runs_dir=args.runs)
    rows, spent = [], {}
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        recipe = recipe_for(config, args)
        res = engine.run(recipe)
        sft = res["sft"]
        points = json.loads((args.runs / recipe.name / "sft" / sft.outputs["curve"]).read_text())
        spent[config] = points[-1]["train_seconds"] / points[-1]["step"]
        for pt in points:
            rows.append((config, pt["step"], pt["examples"], pt["train_seconds"], round(pt["train_seconds"] / pt["step"], 2),
                         pt.get("parse_rate"), pt.get("accuracy"), pt.get("macro_f1")))
        manifest = json.loads((args.runs / recipe.name / "sft" / "manifest.json").read_text())
        print(f"{config}: {manifest.get('runtime', {}).get('reason', '')}", flush=True)
    print(f"\nSmolLM2-135M-Instruct SFT on {args.gold} Home Depot gold pairs (domain rationale), batch 8; "
          f"teacher evaluated greedily on {args.dev} dev pairs ({args.max_new_tokens} new tokens) during training")
    print(table(("config", "step", "gold examples seen", "training seconds", "s/step", "parse rate", "accuracy",
                 "macro-F1"), rows))
    if "study" in spent:
        print("\nexamples per training second against the study's SFT: "
              + ", ".join(f"{c} {spent['study'] / s:.2f}x" for c, s in spent.items()))


if __name__ == "__main__":
    main()
