"""Teacher benchmark on Home Depot: zero-shot vs after SFT vs after DPO, and rewards before/after DPO.

    python benchmarks/teacher.py --gold 800 --dev 300

SFT data: gold training pairs with the product_search domain's rule-written rationale ending in
the gold label (``reasoning: {source: domain}``). All figures come from one recipe run; each
row is reproducible with this command (stages are cached under --runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, STUDY_REWARD_WEIGHTS, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-teacher")
    p.add_argument("--gold", type=int, default=800)
    p.add_argument("--dev", type=int, default=300)
    p.add_argument("--sft-steps", type=int, default=100)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--heldout", type=int, default=48)
    p.add_argument("--dpo-steps", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--dpo-beta", type=float, default=0.1, help="DPO's KL strength against the SFT reference")
    p.add_argument("--dpo-sft-weight", type=float, default=0.0, help="NLL on the chosen answers next to DPO (RPO)")
    p.add_argument("--label-flips", action="store_true", help="add pairs that differ only in the label")
    p.add_argument("--seed", type=int, default=0, help="the recipe's seed (every stage reruns under another)")
    args = p.parse_args()

    from reasondistill import Engine, Recipe, step

    ev = {"rows": args.dev, "max_new_tokens": args.max_new_tokens, "batch_size": 32}
    recipe = Recipe(
        name="teacher-bench", domain="product_search", models={"teacher": "smollm2-135m-instruct"}, seed=args.seed,
        reward_weights=STUDY_REWARD_WEIGHTS,
        stages=[
            step("pairs", source=str(args.data / "train.jsonl"), limit=args.gold,
                 dev_source=str(args.data / "dev.jsonl"), dev_limit=args.dev),
            step("teacher_eval", name="zero_shot", **ev),
            step("reasoning", source="domain"),
            step("sft", max_steps=args.sft_steps, batch_size=8, max_length=320, learning_rate=5e-4),
            step("teacher_eval", name="after_sft", **ev),
            step("preference", input="pairs", prompts=args.prompts, candidates=4, max_new_tokens=args.max_new_tokens,
                 gen_batch_size=32, max_steps=args.dpo_steps, batch_size=4, max_length=512, learning_rate=5e-5,
                 heldout_prompts=args.heldout, sft_weight=args.dpo_sft_weight, beta=args.dpo_beta,
                 label_flips=args.label_flips),
            step("teacher_eval", name="after_dpo", **ev),
        ])
    res = Engine(runs_dir=args.runs).run(recipe)
    rows = []
    for name in ("zero_shot", "after_sft", "after_dpo"):
        m = res[name].metrics
        rows.append((name, m["teacher_parse_rate"], m["teacher_accuracy"], m["teacher_macro_f1"],
                     m["teacher_reward_aggregate"]))
    print(f"SmolLM2-135M-Instruct on {args.dev} Home Depot dev pairs (greedy, {args.max_new_tokens} new tokens); "
          f"SFT on {args.gold} gold pairs, {args.sft_steps} steps; DPO on {res['preference'].metrics['pairs']} pairs, "
          f"{args.dpo_steps} steps, beta {args.dpo_beta}, sft_weight {args.dpo_sft_weight}, "
          f"{res['preference'].metrics.get('label_flip_pairs', 0)} of them label flips; seed {args.seed}")
    print(table(("teacher", "parse rate", "accuracy", "macro-F1", "mean aggregated reward"), rows))
    print(f"\nper label on the {args.dev} dev pairs: F1 and the share of answers giving it")
    names = [k[len("teacher_f1_"):] for k in res["after_dpo"].metrics if k.startswith("teacher_f1_")]
    print(table(("teacher", *(f"F1 {n}" for n in names), *(f"share {n}" for n in names)),
                [(name, *(res[name].metrics.get(f"teacher_{kind}_{n}", "n/a") for kind in ("f1", "answer_share")
                          for n in names)) for name in ("after_sft", "after_dpo")]))
    sft, dpo, pm = res["after_sft"].metrics, res["after_dpo"].metrics, res["preference"].metrics
    print(f"\nreward on the {args.dev} dev pairs (held out from SFT and DPO; greedy) after SFT and after DPO")
    print(reward_change(sft, "teacher_reward_", dpo, "teacher_reward_", ("after SFT", "after DPO")))
    print(f"\nreward on {args.heldout} held-out dev prompts (2 samples each, same seed) before and after DPO")
    print(reward_change(pm, "before_reward_", pm, "after_reward_", ("before DPO", "after DPO")))


def reward_change(before: dict, before_key: str, after: dict, after_key: str, heads: tuple[str, str]) -> str:
    """One row per reward dimension: ``before[before_key + dim]``, ``after[after_key + dim]``, change."""
    dims = sorted(k[len(before_key):] for k in before if k.startswith(before_key))
    rows = [(d, before[before_key + d], after[after_key + d], after[after_key + d] - before[before_key + d])
            for d in dims]
    return table(("dimension", *heads, "change"), rows)


if __name__ == "__main__":
    main()
