"""A learned multi-head reward model: one shared encoder, one Bradley-Terry head per dimension.

Hand-written because trl's ``RewardTrainer`` trains a single scalar head; the paper's reward is
multi-dimensional. Training still goes through ``transformers.Trainer`` (checkpoints, resume,
``report_to``, ``accelerate launch``). Trained on the preference stage's pairs: for every
dimension where chosen and rejected scores differ, the head must rank them the same way.
Registered as a scorer (dimensions ``learned_<dim>``) while a preference stage runs with
``learned_reward: true`` and a ``reward_model`` output exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from reasondistill import Options, Stage, StageResult, hookimpl
from reasondistill import distributed as dist
from reasondistill.errors import DataError
from reasondistill.model_refs import resolve_model
from reasondistill.plugins.rewards.bradley_terry import side_view
from reasondistill.runtime import current

HEADS = "heads.safetensors"
META = "reward_model.json"


class MultiHeadRewardModel(torch.nn.Module):
    """Encoder [CLS] -> one linear reward per dimension."""

    def __init__(self, encoder: Any, dims: list[str]):
        super().__init__()
        self.encoder, self.dims = encoder, list(dims)
        self.heads = torch.nn.Linear(encoder.config.hidden_size, len(dims))

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state[:, 0]
        return self.heads(hidden)

    def save(self, folder: Path, tokenizer: Any) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.heads.state_dict().items()}, str(folder / HEADS))
        (folder / META).write_text(json.dumps({"dims": self.dims}))

    @classmethod
    def load(cls, folder: str | Path) -> tuple[MultiHeadRewardModel, Any]:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        dims = json.loads((folder / META).read_text())["dims"]

        runtime = current()
        model = cls(AutoModel.from_pretrained(folder, **runtime.model_kwargs(inference=True)), dims)
        model.heads.load_state_dict(load_file(str(folder / HEADS)))
        return runtime.place(model, inference=True).eval(), AutoTokenizer.from_pretrained(folder)


class RewardCollator:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for side in ("chosen", "rejected"):
            feats = [{k[len(side) + 1:]: r[k] for k in r if k.startswith(side + "_")} for r in rows]
            batch.update({f"{side}_{k}": v for k, v in self.tokenizer.pad(feats, return_tensors="pt").items()})
        batch["sign"] = torch.tensor([r["sign"] for r in rows], dtype=torch.float32)  # runtime: a target
        return batch


class RewardModelOptions(Options):
    encoder: str = Field("tiny-encoder", description="a registered model, folder or hub id for the shared encoder")
    input: str = Field("preferences",
        description="the earlier output of preference pairs (a preference stage's `preferences`)")
    epochs: float = Field(3.0, gt=0, le=10000, description="passes over the training rows")
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    batch_size: int = Field(8, ge=1, description="pairs a training step")
    learning_rate: float = Field(5e-5, gt=0, le=1, description="peak learning rate (AdamW); above 1 diverges")
    max_length: int = Field(256, ge=16, description="tokens of prompt + answer read by the encoder")
    heldout_fraction: float = Field(0.2, ge=0, lt=1,
        description="share of the pairs held out to report each head's accuracy")


def preference_signs(chosen: dict[str, float], rejected: dict[str, float], dims: list[str]) -> list[float]:
    """Per dimension: 1.0 where the chosen answer scores higher, -1.0 lower, 0.0 tied (no
    training signal); a dimension a side was not scored on counts as 0."""
    pairs = ((chosen.get(d) or 0, rejected.get(d) or 0) for d in dims)
    return [float((c > r) - (c < r)) for c, r in pairs]


def encode_preferences(tok: Any, prefs: list[dict[str, Any]], dims: list[str], max_length: int) -> list[dict[str, Any]]:
    """Each preference pair as the trainer's row: (prompt, answer) encoded for both answers, each cut
    to ``max_length`` tokens, and the pair's sign per dimension (:func:`preference_signs`)."""
    rows = []
    for r in prefs:
        prompt = r["prompt"][-1]["content"]
        enc_c = tok(prompt, r["chosen"][0]["content"], truncation=True, max_length=max_length)
        enc_r = tok(prompt, r["rejected"][0]["content"], truncation=True, max_length=max_length)
        rows.append({**{f"chosen_{k}": v for k, v in enc_c.items()}, **{f"rejected_{k}": v for k, v in enc_r.items()},
                     "sign": preference_signs(r["chosen_scores"], r["rejected_scores"], dims)})
    return rows


class RewardModelStage(Stage):
    name = "reward_model"
    description = "Train a multi-head (one Bradley-Terry head per reward dimension) reward model."
    Options = RewardModelOptions
    distributed = True

    def run(self, ctx, options: RewardModelOptions) -> StageResult:
        from datasets import Dataset
        from transformers import AutoModel, AutoTokenizer

        prefs = list(ctx.load_dataset(options.input))
        dims = sorted({d for r in prefs for d in r["chosen_scores"]})
        if not prefs or not dims:
            raise DataError(f"{options.input}: no preference pairs with reward scores")
        encoder_path = resolve_model(options.encoder, ctx.hooks)
        tok = AutoTokenizer.from_pretrained(encoder_path)
        rows = encode_preferences(tok, prefs, dims, options.max_length)
        cut = max(1, int(len(rows) * (1 - options.heldout_fraction))) if len(rows) > 1 else len(rows)
        train, held = rows[:cut], rows[cut:]
        torch.manual_seed(ctx.seed)

        runtime = current()
        model = MultiHeadRewardModel(AutoModel.from_pretrained(encoder_path, **runtime.model_kwargs()), dims)
        # heavy (transformers): imported when a reward model trains, not when the plugin registers
        from reasondistill.plugins.rewards.reward_trainer import RewardConfig, RewardTrainer

        args = RewardConfig(output_dir=str(ctx.dir / "checkpoints"), num_train_epochs=options.epochs,
                            max_steps=options.max_steps, per_device_train_batch_size=options.batch_size,
                            learning_rate=options.learning_rate, seed=ctx.seed, report_to="none",
                            **runtime.training_args())
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                                data_collator=RewardCollator(tok))
        trainer.train()
        dist.check_replicas(model, "reward_model")
        if not dist.is_main():  # every rank trained (DDP); the main process writes the model
            return StageResult()
        model.save(ctx.dir / "reward_model", tok)
        metrics: dict[str, Any] = {"pairs": len(prefs), "dims": len(dims), "steps": trainer.state.global_step}
        for name, part in (("train", train), ("heldout", held)):
            metrics.update({f"{name}_accuracy_{k}": v for k, v in pairwise_accuracy(model, tok, part, dims).items()})
        import shutil

        shutil.rmtree(ctx.dir / "checkpoints", ignore_errors=True)
        return StageResult(outputs={"reward_model": "reward_model"}, metrics=metrics)


@torch.inference_mode()
def pairwise_accuracy(model, tok, rows, dims) -> dict[str, float]:
    """Per dimension: share of decided pairs the head orders like the scorers did."""
    if not rows:
        return {}
    model.eval()
    device = next(model.parameters()).device  # trained on a GPU, it is still there
    batch = {k: v.to(device) for k, v in RewardCollator(tok)(rows).items()}
    rc, rr = model(**side_view(batch, "chosen")), model(**side_view(batch, "rejected"))
    out = {}
    for j, d in enumerate(dims):
        mask = batch["sign"][:, j] != 0
        if mask.any():
            out[d] = round(float(((rc[:, j] - rr[:, j]).sign() == batch["sign"][:, j])[mask].float().mean()), 4)
    return out


class LearnedRewardScorer:
    """Adds ``learned_<dim>`` = sigmoid(head output) to the reward vector."""

    def __init__(self, folder: str | Path, max_length: int = 256):
        self.model, self.tok = MultiHeadRewardModel.load(folder)
        self.max_length = max_length

    @hookimpl
    def reward_dimensions(self):
        return [f"learned_{d}" for d in self.model.dims]

    @hookimpl
    def score_reasoning(self, example, completion, domain):
        prompt = domain.user_prompt(example)
        enc = self.tok(prompt, completion or "", truncation=True, max_length=self.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            rewards = torch.sigmoid(self.model(**{k: v.to(device) for k, v in enc.items()}).float())[0]
        return {f"learned_{d}": float(v) for d, v in zip(self.model.dims, rewards)}


@hookimpl
def reward_dimensions():
    """The learned scorer's dimensions exist only once its model is trained; declared by prefix so
    a recipe can weigh them (``reward_weights: {learned_label_agreement: 2}``)."""
    return ["learned_*"]


@hookimpl
def register_teacher_stages(register):
    register(RewardModelStage())
