"""The paper's whole two-stage recipe as a Python builder (arXiv 2510.11056).

dapt -> reasoning -> sft -> preference (DPO) -> annotate -> distill (CRSD) -> export, with
documented defaults. Parameterised by teacher, student, domain and data; ``scale`` sizes the
step counts ("full" for a GPU, "small" for 2 CPU cores, "tiny" for smoke tests).
"""

from __future__ import annotations

from typing import Any

from reasondistill import Recipe, step

SCALES: dict[str, dict[str, Any]] = {
    # pairs, gold for the teacher, dapt/sft/dpo steps, preference prompts, pool to annotate, student epochs
    "full": dict(n=20000, gold=2000, dapt=500, sft=-1, sft_epochs=2.0, dpo=-1, prompts=1000, pool=None, epochs=3.0,
                 batch=32, new_tokens=128, lora=True, lr=2e-4),
    "small": dict(n=1200, gold=400, dapt=15, sft=60, sft_epochs=1.0, dpo=12, prompts=24, pool=400, epochs=3.0,
                  batch=16, new_tokens=80, lora=True, lr=5e-4),
    "tiny": dict(n=300, gold=200, dapt=2, sft=40, sft_epochs=1.0, dpo=2, prompts=6, pool=80, epochs=2.0,
                 batch=8, new_tokens=32, lora=False, lr=3e-3),
}


def paper_recipe(name: str = "paper", teacher: str = "smollm2-135m-instruct", student: str = "all-minilm-l6-v2",
                 domain: str = "local_services", train: str = "generate", dev: str | None = None,
                 columns: dict[str, str] | None = None, scale: str = "small", seed: int = 0,
                 reasoning: str = "column_then_rationalize", reasoning_column: str = "rationale",
                 loss: str = "crsd", loss_options: dict[str, Any] | None = None) -> Recipe:
    """The full recipe. ``train``: ``generate`` (the domain's generator) or a pairs file."""
    s = SCALES[scale]
    pairs_opts: dict[str, Any] = {"source": train, "columns": columns or {}}
    if train == "generate":
        pairs_opts["n"] = s["n"]
    if dev:
        pairs_opts["dev_source"] = dev
    teacher_opts = {"lora": s["lora"], "learning_rate": s["lr"]}
    return Recipe(
        name=name, domain=domain, seed=seed, models={"teacher": teacher, "student": student},
        reward_weights={"label_agreement": 2.0, "format": 1.0, "faithfulness": 1.0, "self_consistency": 0.5, "length": 0.5},
        stages=[
            step("pairs", **pairs_opts),
            step("dapt", max_steps=s["dapt"], batch_size=8, max_length=128, **teacher_opts),
            step("reasoning", source=reasoning, reasoning_column=reasoning_column, limit=s["gold"]),
            step("sft", max_steps=s["sft"], epochs=s["sft_epochs"], batch_size=8, max_length=320, eval_rows=40,
                 eval_max_new_tokens=s["new_tokens"], **teacher_opts),
            step("preference", prompts=s["prompts"], candidates=4, max_new_tokens=s["new_tokens"], max_steps=s["dpo"],
                 batch_size=4, max_length=512, heldout_prompts=16, lora=s["lora"]),
            step("annotate", limit=s["pool"], shard_size=64, dev_rows=120,
                 annotator_options={"batch_size": 32, "max_new_tokens": s["new_tokens"]}),
            step("distill", loss=loss, loss_options=loss_options or {}, epochs=s["epochs"], batch_size=s["batch"],
                 learning_rate=1e-4, student_options={"max_length": 64, "reasoning_tokens": 64}),
            step("export", agreement_rows=300),
        ])
