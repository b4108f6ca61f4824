"""LoRA adapters for a teacher stage, as its options say (peft)."""

from __future__ import annotations

from typing import Any

from reasondistill.errors import RecipeError
from reasondistill.plugins.teacher.train_options import TeacherTrainOptions


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
