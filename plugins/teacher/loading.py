"""Where a teacher stage starts from, and loading that causal LM with the run's precision."""

from __future__ import annotations

from reasondistill.generators import current_teacher
from reasondistill.runtime import current


def teacher_source(ctx) -> str:
    """The teacher to start from: the latest earlier ``teacher`` output, else ``models.teacher``."""
    return current_teacher(ctx) or ctx.model("teacher")


def load_causal_lm(path: str, trust: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust, **current().model_kwargs())
    return model, tok
