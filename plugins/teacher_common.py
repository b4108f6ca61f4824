"""What the teacher stages share: training options, LoRA, merging, and teacher evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from reasondistill import Options
from reasondistill import distributed as dist
from reasondistill.hf_compat import checkpointing_arg, length_grouping_arg


class TeacherTrainOptions(Options):
    """Options of every teacher training stage (trl config fields, CPU-safe defaults)."""

    lora: bool = Field(True, description="train LoRA adapters (merged afterwards); false = full fine-tuning")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear")
    lora_layers: int | None = Field(None, ge=1, description=(
        "LoRA on the last N decoder layers only: the backward pass stops at the lowest trained layer "
        "(on SmolLM2-135M, 10 of 30 layers made an SFT step 1.8x faster); default: every layer"))
    gradient_checkpointing: bool | None = Field(None, description=(
        "recompute activations in the backward pass (less memory; 1.26-1.43x slower SFT steps on a CPU here); default: on for a GPU "
        "(trl's default), off on a CPU, where memory is not what limits a teacher step"))
    group_by_length: bool = Field(False, description=(
        "batches of rows of similar length (transformers' LengthGroupedSampler) instead of random ones: "
        "less padding (random batches of 8 Home Depot SFT rows are 22% padding, grouped ones 1%; 1.14x the examples "
        "per second, but 5.5 points lower teacher macro-F1 after 1,600 examples in one run: docs/benchmarks.md)"),
        json_schema_extra={"hash": "unless_default"})
    answer_head_only: bool = Field(True, description=(
        "off CUDA, run the output head only where the loss reads it (the answer's tokens, not the prompt's): "
        "the same loss; trl scores every position there (on CUDA it already scores answers only); "
        "false = trl's own loss"), json_schema_extra={"hash": "unless_default"})
    epochs: float = Field(1.0, gt=0, le=10000, description="passes over the training rows")
    max_steps: int = Field(-1, ge=-1, description="overrides epochs when > 0")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0, le=1, description="peak learning rate (AdamW); above 1 diverges")
    max_length: int = Field(512, ge=16)
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1)
    report_to: list[str] = Field(default_factory=list)
    eval_rows: int = Field(0, ge=0, description="dev pairs to evaluate the teacher on after the stage")
    eval_max_new_tokens: int = Field(96, ge=4)
    eval_every: int = Field(0, ge=0, description=(
        "also evaluate the teacher on the eval_rows dev pairs every N steps, while it trains: its learning "
        "curve (examples seen, training seconds, parse rate, macro-F1) in curve.json; 0 = only at the end"))


def teacher_source(ctx) -> str:
    """The teacher to start from: the latest earlier ``teacher`` output, else ``models.teacher``."""
    from reasondistill.generators import current_teacher

    return current_teacher(ctx) or ctx.model("teacher")


def common_args(ctx, o: TeacherTrainOptions) -> dict[str, Any]:
    """TrainingArguments fields. Precision and device come from the run's runtime (bf16 on GPUs that
    have it, fp32 on CPUs unless ``runtime.dtype`` says otherwise). Activation checkpointing is set
    explicitly: trl's configs turn it on by default, which made each CPU step of the Home Depot SFT
    1.26x slower for memory a CPU box has (``gradient_checkpointing``)."""
    from reasondistill.runtime import current

    runtime = current()
    checkpointing = runtime.is_cuda if o.gradient_checkpointing is None else o.gradient_checkpointing
    return dict(output_dir=str(ctx.dir / "checkpoints"), num_train_epochs=o.epochs, max_steps=o.max_steps,
                per_device_train_batch_size=o.batch_size, gradient_accumulation_steps=o.grad_accum,
                learning_rate=o.learning_rate, logging_steps=o.logging_steps, save_steps=o.save_steps,
                save_total_limit=2, seed=ctx.seed, data_seed=ctx.seed, report_to=o.report_to or "none",
                max_length=o.max_length, **checkpointing_arg(checkpointing), **length_grouping_arg(o.group_by_length),
                **runtime.training_args())


def peft_config(o: TeacherTrainOptions, model: Any = None):
    """LoRA adapters as the options say; ``lora_layers`` needs the ``model`` (its layer count and
    linear modules: peft's ``layers_to_transform`` does not take ``all-linear``)."""
    if not o.lora:
        return None
    from peft import LoraConfig

    targets, layers = o.target_modules, None
    if o.lora_layers is not None:
        count = model.config.get_text_config().num_hidden_layers
        layers = list(range(max(0, count - o.lora_layers), count))
        if targets == "all-linear":
            targets = linear_module_names(model)
            if not targets:
                from reasondistill.errors import RecipeError

                raise RecipeError("lora_layers", f"found no linear layers under '.layers.' in {type(model).__name__}; "
                                  "name them in target_modules")
    return LoraConfig(r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout,
                      target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM")


def linear_module_names(model: Any) -> list[str]:
    """The short names of the linear layers inside the decoder layers (what ``all-linear`` means to
    peft: every ``nn.Linear`` but the output head)."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head and ".layers." in f".{name}"})


def load_causal_lm(path: str, trust: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasondistill.runtime import current

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust, **current().model_kwargs())
    return model, tok


def train_and_save(ctx, trainer, tokenizer, out: Path) -> dict[str, Any]:
    """Train (resuming from the last checkpoint of an interrupted run), merge LoRA, save safetensors.

    The saved teacher is marked done (``trained.json``) before anything else runs: a stage that
    fails afterwards (its evaluation, a scorer plugin) keeps it, and the rerun reuses it instead
    of training again from step 0.
    """
    import shutil

    from transformers.trainer_utils import get_last_checkpoint

    from reasondistill.fingerprint import write_atomic

    done = ctx.dir / "trained.json"
    if ctx.resuming and done.exists() and (out / "config.json").exists():
        return {**json.loads(done.read_text()), "resumed_from": "trained"}
    ckpt = ctx.dir / "checkpoints"
    last = get_last_checkpoint(str(ckpt)) if ctx.resuming and ckpt.exists() else None
    result = trainer.train(resume_from_checkpoint=last)
    trained = {"steps": trainer.state.global_step, "train_loss": round(float(result.training_loss), 5),
               "step_seconds": round(result.metrics["train_runtime"] / max(1, trainer.state.global_step), 3)}
    dist.check_replicas(trainer.model, ctx.name)
    if not dist.is_main():  # every rank trained (DDP); the main process writes the teacher
        return trained
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    history = [h for h in trainer.state.log_history if "loss" in h]
    (ctx.dir / "loss_history.json").write_text(json.dumps(history, indent=1))
    shutil.rmtree(ckpt, ignore_errors=True)
    write_atomic(done, json.dumps(trained))
    return {**trained, "resumed_from": last.rsplit("-", 1)[-1] if last else None}


def evaluate_teacher(ctx, rows: list[dict[str, Any]], max_new_tokens: int = 96, batch_size: int = 16,
                     prefix: str = "teacher_", answers_to: Path | None = None, trained: str | None = None,
                     backend: Any = None) -> dict[str, float]:
    """Greedy answers on gold rows: parse rate, accuracy, macro-F1, per-class F1 and answer share,
    mean reward per dimension. ``answers_to``: also save each answer with its parsed label and reward
    vector (a dataset), to read what a metric's move is made of. ``trained``: the folder of a teacher
    the stage just trained (else the current teacher, on the recipe's or ``backend``'s backend)."""
    from reasondistill.generators import load_generator
    from reasondistill.metrics import classification_metrics

    rows = [r for r in rows if r.get("label") is not None and r["label"] >= 0]
    if not rows:
        return {}
    dom = ctx.domain
    gen = load_generator(ctx, backend, model=trained, trained=trained is not None, batch_size=batch_size,
                         max_new_tokens=max_new_tokens)
    outs = gen.generate([dom.messages(r) for r in rows])
    texts = [o[0].text for o in outs]
    parsed = [dom.parse_completion(t) for t in texts]
    k = len(dom.labels)
    gold = [r["label"] for r in rows]
    pred = [p.label if p.ok else (g + 1) % k for p, g in zip(parsed, gold)]  # unparsable counts as wrong
    m = classification_metrics(gold, pred, dom.labels)
    out = {f"{prefix}parse_rate": round(sum(p.ok for p in parsed) / len(parsed), 4),
           f"{prefix}accuracy": round(m["accuracy"], 4), f"{prefix}macro_f1": round(m["macro_f1"], 4)}
    for i, name in enumerate(dom.labels):  # per class: where macro-F1 moves when accuracy does not
        key = name.replace(" ", "_")
        out[f"{prefix}f1_{key}"] = round(m[f"f1_{key}"], 4)
        out[f"{prefix}answer_share_{key}"] = round(sum(p.ok and p.label == i for p in parsed) / len(parsed), 4)
    vectors = reward_vectors(ctx, rows, texts)
    out.update({f"{prefix}reward_{k}": v for k, v in mean_by_dimension(vectors).items()})
    if answers_to is not None:
        from datasets import Dataset

        Dataset.from_list([{"pair_id": r.get("pair_id"), "gold": r["label"], "completion": t,
                            "label": p.label if p.ok else -1, "new_tokens": int(o[0].tokens), "scores": json.dumps(v)}
                           for r, t, p, v, o in zip(rows, texts, parsed, vectors, outs)]).save_to_disk(str(answers_to))
    return out


def reward_vectors(ctx, rows: list[dict[str, Any]], texts: list[str]) -> list[dict[str, float]]:
    """The reward vector of each (row, completion), with its ``aggregate``."""
    vectors = []
    for row, text in zip(rows, texts):
        vec = ctx.hooks.score_reasoning(row, text, ctx.domain)
        vec["aggregate"] = ctx.hooks.aggregate_reward(vec, ctx.recipe.reward_weights)
        vectors.append(vec)
    return vectors


def preflight_rewards(check) -> None:
    """A dry call of every reward scorer on well-formed answers to a few of the run's rows: a score
    that is not a float in [0, 1] fails before the teacher trains (``Hooks.score_reasoning``)."""
    for row in check.rows:
        vector = check.hooks.score_reasoning(row, check.completion(row), check.domain)
        check.hooks.aggregate_reward(vector, check.recipe.reward_weights)


def mean_by_dimension(vectors: list[dict[str, float]]) -> dict[str, float]:
    """Each dimension's mean over the vectors that carry it (a scorer may abstain on some)."""
    sums: dict[str, list[float]] = {}
    for vec in vectors:
        for key, value in vec.items():
            sums.setdefault(key, []).append(value)
    return {k: round(sum(v) / len(v), 4) for k, v in sums.items()}


def dev_rows(ctx, n: int) -> list[dict[str, Any]]:
    if not n or not ctx.has_input("dev"):
        return []
    dev = ctx.load_dataset("dev")
    return list(dev.select(range(min(n, len(dev)))))


def sft_stage_result(ctx, options: TeacherTrainOptions, data, config, tokenizer, model, metrics: dict[str, Any]):
    """Train an SFTTrainer, save the merged teacher, evaluate it on dev; the shared tail of dapt and sft."""
    from reasondistill import StageResult

    from .answer_head import AnswerHeadSFTTrainer
    from .teacher_curve import attach_learning_curve

    trainer = AnswerHeadSFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                   peft_config=peft_config(options, model), answer_head_only=options.answer_head_only)
    curve = attach_learning_curve(ctx, trainer, tokenizer, options)
    metrics = {**metrics, **train_and_save(ctx, trainer, tokenizer, ctx.dir / "teacher")}
    if not dist.is_main():
        return StageResult()
    rows = dev_rows(ctx, options.eval_rows)
    if rows:
        metrics.update(evaluate_teacher(ctx, rows, options.eval_max_new_tokens, trained=str(ctx.dir / "teacher")))
    outputs = {"teacher": "teacher", "loss_history": "loss_history.json", **({"curve": "curve.json"} if curve else {})}
    return StageResult(outputs=outputs, metrics=metrics)
