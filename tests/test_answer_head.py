"""The SFT loss with the output head only at the answer positions (``answer_head_only``): the same
loss and gradients as trl's own, with the head run on the answer tokens alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from reasondistill import Recipe, step


def trainer_for(tiny_teacher, tmp_path, lora: bool, answer_head_only: bool, grad_accum: int = 1):
    from datasets import Dataset
    from trl import SFTConfig

    from reasondistill.plugins.teacher.answer_head import AnswerHeadSFTTrainer
    from reasondistill.plugins.teacher.loading import load_causal_lm
    from reasondistill.plugins.teacher.lora import peft_config
    from reasondistill.plugins.teacher.train_options import common_args
    from reasondistill.plugins.teacher.sft import SFTOptions

    torch.manual_seed(0)
    model, tok = load_causal_lm(str(tiny_teacher))
    options = SFTOptions(batch_size=3, max_length=128, lora=lora, lora_dropout=0.0, grad_accum=grad_accum)
    rows = [{"prompt": [{"role": "user", "content": "drill " * (2 + 5 * i)}],
             "completion": [{"role": "assistant", "content": "Reasoning: a drill. Label: relevant " * (1 + i)}]}
            for i in range(3)]  # prompts and answers of different lengths: padding inside the batch
    args = SFTConfig(**common_args(SimpleNamespace(dir=tmp_path, seed=0), options), completion_only_loss=True)
    trainer = AnswerHeadSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                                   peft_config=peft_config(options, model), answer_head_only=answer_head_only)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    return trainer, batch


def loss_and_grads(trainer, batch, num_items_in_batch=None):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items_in_batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def loss_grads_and_head_inputs(trainer, batch):
    """:func:`loss_and_grads`, and the shape of every input the output head was called with."""
    seen = []
    head = trainer.accelerator.unwrap_model(trainer.model).get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        return (*loss_and_grads(trainer, batch), seen)
    finally:
        handle.remove()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_answer_head_gives_trl_loss_and_gradients(tiny_teacher, tmp_path, lora):
    """Same loss and the same gradient on every trained weight as trl's SFT loss, with padded rows of
    different prompt and answer lengths; and the head really ran on the answer tokens only."""
    ours, batch = trainer_for(tiny_teacher, tmp_path / "ours", lora, True)
    theirs, _ = trainer_for(tiny_teacher, tmp_path / "theirs", lora, False)
    theirs.model.load_state_dict(ours.model.state_dict())  # the same LoRA initialisation (trl 0.x draws it apart)
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < answer_tokens < batch["labels"][:, 1:].numel() / 2  # mostly prompt and padding

    loss, grads, seen = loss_grads_and_head_inputs(ours, batch)
    expected, expected_grads, theirs_seen = loss_grads_and_head_inputs(theirs, batch)
    width = ours.model.get_output_embeddings().in_features
    assert seen == [(answer_tokens, width)]
    assert (answer_tokens, width) not in theirs_seen  # answer_head_only false: trl's own path
    assert loss == pytest.approx(float(expected), rel=1e-5)
    for metric in ("mean_token_accuracy", "num_tokens"):  # trl's metrics, the same numbers
        assert ours._metrics["train"][metric][-1] == pytest.approx(theirs._metrics["train"][metric][-1]), metric
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_outputs_asked_for_come_from_trl(tiny_teacher, tmp_path):
    """``return_outputs`` (evaluation, ``compute_metrics``) needs the logits: trl's path answers it."""
    import warnings

    ours, batch = trainer_for(tiny_teacher, tmp_path, True, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # trl 1.x: return_outputs is deprecated
        loss, outputs = ours.compute_loss(ours.model, dict(batch), return_outputs=True)
    assert outputs.logits.shape[:2] == batch["input_ids"].shape


def test_answer_head_divides_by_the_accumulated_label_count(tiny_teacher, tmp_path):
    """Under gradient accumulation ``Trainer`` passes the label count of all micro-batches: the loss is
    divided by it (as trl's), not by this micro-batch's count."""
    ours, batch = trainer_for(tiny_teacher, tmp_path / "ours", True, True, grad_accum=2)
    theirs, _ = trainer_for(tiny_teacher, tmp_path / "theirs", True, False, grad_accum=2)
    count = torch.tensor(3 * int((batch["labels"] != -100).sum()))
    loss, _ = loss_and_grads(ours, batch, num_items_in_batch=count)
    expected, _ = loss_and_grads(theirs, batch, num_items_in_batch=count)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    mean, _ = loss_and_grads(ours, batch)
    assert loss == pytest.approx(float(mean) / 3, rel=0.05)  # the first label of each row is not predicted


def test_sft_stage_trains_with_the_answer_head_and_logs_token_accuracy(rd_engine, tiny_teacher):
    """Through the stage: the teacher trains (the loss falls), and trl's token accuracy and token count
    are still logged."""
    import json

    recipe = Recipe(name="answer-head", models={"teacher": str(tiny_teacher)}, seed=0, stages=[
        step("pairs", n=40), step("reasoning", source="column", limit=16),
        step("sft", max_steps=6, batch_size=4, max_length=256, learning_rate=2e-3, logging_steps=1)])
    result = rd_engine.run(recipe)["sft"]
    history = json.loads((rd_engine.runs_dir / "answer-head" / "sft" / result.outputs["loss_history"]).read_text())
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    assert all(0 <= h["mean_token_accuracy"] <= 1 for h in history)
    tokens = [h["num_tokens"] for h in history]
    assert tokens == sorted(set(tokens)) and 0 < tokens[0] <= 4 * 256


def test_a_head_the_hook_cannot_narrow_still_gives_trl_loss(tiny_teacher, tmp_path, monkeypatch):
    """A model whose forward does not hand its head the full sequence (the hook leaves it alone):
    the positions are selected from the full logits instead, and the loss is still trl's."""
    from contextlib import nullcontext

    from reasondistill.plugins.teacher import answer_head

    ours, batch = trainer_for(tiny_teacher, tmp_path / "ours", True, True)
    theirs, _ = trainer_for(tiny_teacher, tmp_path / "theirs", True, False)
    monkeypatch.setattr(answer_head, "head_at", lambda model, mask: nullcontext())
    loss, _ = loss_and_grads(ours, batch)
    expected, _ = loss_and_grads(theirs, batch)
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_the_head_is_left_alone_for_a_sequence_it_was_not_told_of(tiny_causal_lm):
    """Inside ``head_at`` the head sees only the masked positions of the full sequence; a hidden
    state of another length or rank (a model that slices itself) passes through whole."""
    from transformers import AutoModelForCausalLM

    from reasondistill.plugins.teacher.answer_head import head_at

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    head = model.get_output_embeddings()
    width, vocab = head.in_features, head.out_features
    mask = torch.tensor([[False, True, True]])  # a sequence of 4: two positions whose next token is a label
    with torch.no_grad(), head_at(model, mask):
        assert head(torch.randn(1, 4, width)).shape == (2, vocab)
        assert head(torch.randn(1, 2, width)).shape == (1, 2, vocab)
        assert head(torch.randn(4, width)).shape == (4, vocab)
    assert head(torch.randn(1, 4, width)).shape == (1, 4, vocab)  # and whole again after
