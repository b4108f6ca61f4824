"""``preference``: sample K chains per prompt, rank them by the reward vector, train DPO.

Pairs are best vs worst candidate by aggregated reward; pairs under ``min_margin`` (ties
included) are dropped. The SFT teacher is both the policy's start and the DPO reference
(with LoRA the reference is the same weights with the adapter disabled).

Where gold labels exist, two defaults keep DPO from trading macro-F1 for reward: prompts are
drawn evenly across gold labels (with prompts drawn as they come, most pairs teach the majority
grade, and on Home Depot DPO then moved answers toward it: accuracy up, macro-F1 down), and a
pair's chosen answer is the best one that carries the gold label whenever a candidate does (a
best-by-reward answer with the wrong label would teach that label).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import Field

from reasondistill import BackendSpec, Stage, StageResult, hookimpl
from reasondistill import distributed as dist
from reasondistill.errors import DataError
from reasondistill.generators import load_generator
from reasondistill.plugins.annotation.parse_health import ParseHealthOptions, ParseMonitor
from reasondistill.plugins.teacher.evaluation import (
    dev_rows,
    evaluate_teacher,
    mean_by_dimension,
    preflight_rewards,
    reward_vectors,
)
from reasondistill.plugins.teacher.loading import load_causal_lm, teacher_source
from reasondistill.plugins.teacher.lora import peft_config
from reasondistill.plugins.teacher.train_options import TeacherTrainOptions, common_args
from reasondistill.plugins.teacher.training import train_and_save
from reasondistill.recipe import OUTPUT_REF


class PreferenceOptions(TeacherTrainOptions, ParseHealthOptions):
    input: str = Field("pairs", description="the earlier output whose pairs become prompts", json_schema_extra=OUTPUT_REF)
    prompts: int = Field(64, ge=1, description="prompts to sample candidates for")
    candidates: int = Field(4, ge=2, le=64, description="K sampled chains a prompt")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling of the candidates")
    max_new_tokens: int = Field(96, ge=8, description="token budget of one sampled chain")
    gen_batch_size: int = Field(32, ge=1, description="prompts decoded together while sampling candidates")
    min_margin: float = Field(0.05, ge=0, description="drop pairs whose aggregated rewards differ by less")
    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference model")
    sft_weight: float = Field(0.0, ge=0, description="weight of an NLL term on the chosen answers next to the DPO "
                                                      "loss (RPO; trl loss_type ['sigmoid', 'sft'])")
    learning_rate: float = Field(5e-5, gt=0, le=1, description="peak learning rate (AdamW); above 1 diverges")
    heldout_prompts: int = Field(0, ge=0, description="dev prompts to compare reward before and after DPO")
    learned_reward: bool = Field(False, description="add the dimensions of an earlier reward_model output")
    balance_labels: bool = Field(True, description="draw prompts evenly across gold labels (where there are any)")
    prefer_gold_chosen: bool = Field(True, description="chosen = the best candidate with the gold label, when one has it")
    backend: BackendSpec | None = Field(None, description="how the SFT teacher samples candidates (default: the "
                                                          "recipe's backends.teacher, else transformers); a "
                                                          "served copy of the policy's starting point")
    # lower than annotate's 0.5: the format reward is how DPO raises a low parse rate (0.49 after SFT ->
    # 0.88 on the QBQTC run, docs/benchmarks.md), so half-unparsable samples are this stage's input;
    # under 10% too few candidates parse to make pairs that teach the verdict
    min_parse_rate: float = Field(0.1, ge=0, le=1, json_schema_extra={"hash": False},
                                  description="the share of sampled candidates that must parse (checked before any "
                                              "DPO step); 0 = no check")
    label_flips: bool = Field(False, description="also pair each gold-labelled chosen answer against itself with each "
                                                 "wrong label (Domain.relabel): pairs that differ only in the verdict")


def _gold(row: dict[str, Any]) -> int | None:
    label = row.get("label")
    return int(label) if isinstance(label, int) and label >= 0 else None


def pick_prompts(pool: list[dict[str, Any]], n: int, balance: bool) -> list[dict[str, Any]]:
    """The first ``n`` rows, or ``n`` rows taken round-robin over gold labels (pool order kept within a label)."""
    if not balance or all(_gold(r) is None for r in pool):
        return pool[:n]
    by_label: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for row in pool:
        by_label[_gold(row)].append(row)
    queues = [by_label[k] for k in sorted(by_label, key=lambda k: (k is None, k))]
    out: list[dict[str, Any]] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def build_pairs(ctx, rows: list[dict[str, Any]], candidates: list[list[str]], min_margin: float,
                match_gold: bool = False, label_flips: bool = False):
    """Score every candidate; return DPO rows and the count of dropped prompts.

    ``label_flips`` adds, for each chosen answer that carries the gold label, one pair per wrong
    label whose rejected answer is the same text with that label. Two sampled chains differ in
    every token, so a best-vs-worst pair spends DPO's sequence-level margin on wording and moves
    the label only by accident; a flip pair puts the whole margin on the verdict tokens. On Home
    Depot (135M teacher, 44 flip pairs) that slid the answers toward one label and lowered macro-F1
    (docs/benchmarks.md), hence off by default.
    """
    out, dropped = [], 0
    for row, cands in zip(rows, candidates):
        scored = [_scored(ctx, row, text) for text in cands]
        scored.sort(key=lambda s: s[0], reverse=True)
        gold = _gold(row)
        best, worst = scored[0], scored[-1]
        if match_gold and gold is not None:  # the best answer that carries the gold label, if any does
            best = next((s for s in scored if _label(ctx, s[2]) == gold), best)
        if best[0] - worst[0] < min_margin or best[2] == worst[2]:
            dropped += 1
        else:
            out.append(_pair(ctx, row, best, worst))
        if label_flips and gold is not None and _label(ctx, best[2]) == gold:
            chosen = _scored(ctx, row, ctx.domain.relabel(best[2], gold))
            for wrong in range(len(ctx.domain.labels)):
                if wrong != gold:
                    out.append({**_pair(ctx, row, chosen, _scored(ctx, row, ctx.domain.relabel(best[2], wrong))),
                                "label_flip": True})
    return out, dropped


def _scored(ctx, row: dict[str, Any], text: str) -> tuple[float, dict[str, float], str]:
    vec = ctx.hooks.score_reasoning(row, text, ctx.domain)
    return ctx.hooks.aggregate_reward(vec, ctx.recipe.reward_weights), vec, text


def _pair(ctx, row: dict[str, Any], chosen, rejected) -> dict[str, Any]:
    return {"prompt": ctx.domain.messages(row),
            "chosen": [{"role": "assistant", "content": chosen[2]}],
            "rejected": [{"role": "assistant", "content": rejected[2]}],
            "chosen_scores": chosen[1], "rejected_scores": rejected[1], "margin": chosen[0] - rejected[0],
            "pair_id": row["pair_id"], "label_flip": False}


def _label(ctx, text: str) -> int | None:
    parsed = ctx.domain.parse_completion(text)
    return parsed.label if parsed.ok else None


class PreferenceStage(Stage):
    name = "preference"
    description = "Sample K chains, rank by the multi-dimensional reward, train trl DPOTrainer (LoRA)."
    Options = PreferenceOptions
    generates = True
    distributed = True

    def model_roles(self, recipe, options, catalogue) -> tuple[str, ...]:
        """It samples from and trains the local teacher, which starts from ``models.teacher``."""
        return ("teacher",)

    def preflight(self, check, options: PreferenceOptions) -> None:
        """The reward scorers it will call, dry-called on the run's rows."""
        preflight_rewards(check)

    def run(self, ctx, options: PreferenceOptions) -> StageResult:
        if options.learned_reward:
            if not ctx.has_input("reward_model"):
                raise DataError("preference: learned_reward needs an earlier reward_model stage")
            from reasondistill.plugins.rewards.reward_model import LearnedRewardScorer

            name = ctx.hooks.register(LearnedRewardScorer(ctx.input("reward_model")), "learned_reward")
            try:
                return self._run(ctx, options)
            finally:
                ctx.hooks.unregister(name)
        return self._run(ctx, options)

    def _run(self, ctx, options: PreferenceOptions) -> StageResult:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        from reasondistill.plugins.teacher.learning_curve import attach_learning_curve

        source = teacher_source(ctx)
        # the teacher samples once, on the main process; every rank then trains DPO on its pairs
        pairs, metrics = dist.on_main(lambda: self._preferences(ctx, options, source))
        prefs = Dataset.from_list(pairs)
        model, tok = load_causal_lm(source, ctx.recipe.trust_remote_code)
        losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, options.sft_weight]} if options.sft_weight else {}
        args = DPOConfig(**common_args(ctx, options), beta=options.beta, **losses)
        trainer = DPOTrainer(model=model, args=args, train_dataset=prefs.select_columns(["prompt", "chosen", "rejected"]),
                             processing_class=tok, peft_config=peft_config(options, model))
        curve = attach_learning_curve(ctx, trainer, tok, options)
        metrics.update(train_and_save(ctx, trainer, tok, ctx.dir / "teacher"))
        if not dist.is_main():
            return StageResult()
        heldout = dev_rows(ctx, options.heldout_prompts)
        if heldout:
            after = load_generator(ctx, options.backend, model=str(ctx.dir / "teacher"), trained=True,
                                   batch_size=options.gen_batch_size, max_new_tokens=options.max_new_tokens)
            metrics.update({f"after_{k}": v for k, v in self._heldout_rewards(ctx, after, heldout, options).items()})
        rows_eval = dev_rows(ctx, options.eval_rows)
        if rows_eval:
            metrics.update(evaluate_teacher(ctx, rows_eval, options.eval_max_new_tokens, trained=str(ctx.dir / "teacher")))
        return StageResult(outputs={"teacher": "teacher", "preferences": "preferences", "loss_history": "loss_history.json",
                                    **({"curve": "curve.json"} if curve else {})}, metrics=metrics)

    def _preferences(self, ctx, options: PreferenceOptions, source: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Sample candidates, rank them by reward into (chosen, rejected) pairs, save them; with the
        sampled rewards on held-out prompts before training."""
        from datasets import Dataset

        pool = ctx.load_dataset(options.input)
        rows = pick_prompts(list(pool), options.prompts, options.balance_labels)
        gen = load_generator(ctx, options.backend, model=source, batch_size=options.gen_batch_size,
                             max_new_tokens=options.max_new_tokens)
        outs = gen.generate([ctx.domain.messages(r) for r in rows], do_sample=True, temperature=options.temperature,
                            top_p=options.top_p, n=options.candidates, seed=ctx.seed,
                            progress=ctx.progress(total=len(rows), desc="sampling", unit="prompt"))
        sampled = [g for o in outs for g in o]
        monitor = ParseMonitor("preference", options, options.max_new_tokens,
                               "Nothing is trained yet: the teacher it sampled from is the previous stage's")
        monitor.add([ctx.domain.parse_completion(g.text).ok for g in sampled], [g.tokens for g in sampled])
        monitor.check()  # before any DPO step: pairs of unparsable answers teach the verdict nothing
        pairs, dropped = build_pairs(ctx, rows, [[g.text for g in o] for o in outs], options.min_margin,
                                     options.prefer_gold_chosen, options.label_flips)
        if not pairs:
            raise DataError(f"preference: every one of {len(rows)} prompts had candidates within min_margin "
                            f"{options.min_margin}; sample more candidates or lower min_margin")
        prefs = Dataset.from_list(pairs)
        prefs.save_to_disk(str(ctx.dir / "preferences"))
        heldout = dev_rows(ctx, options.heldout_prompts)
        metrics: dict[str, Any] = {"prompts": len(rows), "pairs": len(pairs), "dropped_prompts": dropped,
                                   "sample_parse_rate": round(monitor.rate, 4),
                                   "label_flip_pairs": sum(p["label_flip"] for p in pairs),
                                   "mean_margin": round(sum(p["margin"] for p in pairs) / len(pairs), 4)}
        gold_of = {r["pair_id"]: _gold(r) for r in rows}
        for label_id, name in enumerate(ctx.domain.labels):
            metrics[f"pairs_gold_{name.replace(' ', '_')}"] = sum(gold_of.get(p["pair_id"]) == label_id for p in pairs)
        if heldout:
            metrics.update({f"before_{k}": v for k, v in self._heldout_rewards(ctx, gen, heldout, options).items()})
        return pairs, metrics

    @staticmethod
    def _heldout_rewards(ctx, gen, rows, options) -> dict[str, float]:
        """Mean reward per dimension of sampled answers on held-out prompts (same seed before/after)."""
        outs = gen.generate([ctx.domain.messages(r) for r in rows], do_sample=True, temperature=options.temperature,
                            top_p=options.top_p, n=2, seed=ctx.seed + 7)
        flat_rows = [r for r, o in zip(rows, outs) for _ in o]
        texts = [g.text for o in outs for g in o]
        return {f"reward_{k}": v for k, v in mean_by_dimension(reward_vectors(ctx, flat_rows, texts)).items()}


@hookimpl
def register_teacher_stages(register):
    register(PreferenceStage())
